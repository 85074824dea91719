"""The portal's login through a real saslimap and a real Dovecot (issue 17 §2 and §7)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx2
import pytest

from devstack.daemons import PortalDaemon, SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.tls import TlsFiles
from tests.integration.conftest import USERS, eventually

pytestmark = pytest.mark.integration


def _login(client: httpx2.Client, user: str, password: str) -> str:
    """Post the login form; "ok", "wrong" or "later" from what the page says."""
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    done = client.post("/login", data={"login": user, "password": password, "csrf": token.group(1)})
    if done.status_code == 303:
        return "ok"
    if "Wrong user name or password" in done.text:
        assert 200 == done.status_code
        return "wrong"
    assert 503 == done.status_code, done.text
    assert "try again later" in done.text
    return "later"


def test_a_user_logs_in_with_the_mailbox_password(workroot: Path, daemon: SaslimapDaemon) -> None:
    """The right mailbox password opens the portal, a wrong one does not; saslimap logs the
    check under the service "portal"; neither log holds a password."""
    portal = PortalDaemon(workroot / "portal-login", daemon.socket_path, {})
    with portal, httpx2.Client(base_url=portal.url.rstrip("/"), follow_redirects=False) as client:
        assert "wrong" == _login(client, "unicode@example.com", "not it")
        assert "ok" == _login(client, "unicode@example.com", USERS["unicode@example.com"])
        assert "Held messages for unicode@example.com" in client.get("/messages").text
    eventually(daemon.log_text, 'service="portal"')
    for log in (portal.log_text(), daemon.log_text()):
        assert USERS["unicode@example.com"] not in log


def test_a_password_flood_goes_through_saslimaps_budget(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """40 guesses for one user from one address, through the portal behind a proxy, reach the
    IMAP server only the budget's worth; past it the page says "try again later" (never
    "wrong"), and the user, from their own address, gets in at the first try: the portal
    hands saslimap the browser's address (X-Forwarded-For from a trusted proxy)."""
    saslimap = SaslimapDaemon(
        workroot / "portal-flood",
        {"imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
         "limits": {"failure_budget": 3, "trickle_interval": 1.0}},
    )  # fmt: skip
    portal = PortalDaemon(workroot / "portal-flood-web", saslimap.socket_path, {})
    victim = "percent@example.com"
    with saslimap, portal:
        base = portal.url.rstrip("/")
        from_attacker = {"X-Forwarded-For": "192.0.2.66"}
        with httpx2.Client(base_url=base, follow_redirects=False, headers=from_attacker) as bad:
            before = dovecot.auth_attempts()
            outcomes = [_login(bad, victim, f"guess {n}") for n in range(40)]
            time.sleep(0.3)  # Dovecot logs just after answering
            reached = dovecot.auth_attempts() - before
            # The right password from the attacked address: held ("try later"), never "wrong".
            assert "wrong" != _login(bad, victim, USERS[victim])
        assert "ok" not in outcomes
        assert "later" in outcomes  # held by the budget, not answered as wrong passwords
        # The budget, plus a trickle slot or two during the flood.
        assert reached <= 3 + 3
        user_proxy = {"X-Forwarded-For": "198.51.100.7"}
        with httpx2.Client(base_url=base, follow_redirects=False, headers=user_proxy) as user:
            assert "ok" == _login(user, victim, USERS[victim])
    audit = portal.log_text()
    assert "by=percent@example.com from=192.0.2.66 result=unavailable" in audit
    assert "by=percent@example.com from=198.51.100.7 result=ok" in audit
