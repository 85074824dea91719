"""Real Postfix (smtpd_sasl_type = cyrus, pwcheck_method: saslauthd) asking saslimap."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.postfix import Postfix
from devstack.tls import TlsFiles
from tests.integration.conftest import USERS, eventually
from tests.integration.saslimap.test_fail2ban_filter import failregex

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    """Dovecot -> saslimap -> Postfix, private to this module (one test stops Dovecot)."""

    dovecot: Dovecot
    saslimap: SaslimapDaemon
    postfix: Postfix


@pytest.fixture(scope="module")
def stack(workroot: Path, tls: TlsFiles) -> Iterator[Stack]:
    """A private stack so the outage test can stop its Dovecot."""
    root = workroot / "pf"
    dovecot = Dovecot(root / "dovecot", USERS, tls=tls, fast_failures=True)
    dovecot.start()
    sasl = SaslimapDaemon(
        root / "saslimap",
        {"imap": {"url": dovecot.imap_url("imaps"), "ca_file": str(tls.ca_cert)}},
    )
    sasl.start()
    postfix = Postfix(root / "postfix", sasl_saslauthd_path=sasl.socket_path)
    postfix.start()
    yield Stack(dovecot, sasl, postfix)
    postfix.stop()
    assert 0 == sasl.stop()
    dovecot.stop()


def connect(stack: Stack) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", stack.postfix.smtpd_port, timeout=30)
    smtp.ehlo("client.test")
    return smtp


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    # smtplib's own AUTH encodes as ASCII; RFC 4954 AUTH PLAIN carries UTF-8.
    return smtp.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{password}"))


def auth_login(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    code, _ = smtp.docmd("AUTH", "LOGIN")
    assert 334 == code
    code, _ = smtp.docmd(b64(user))
    assert 334 == code
    return smtp.docmd(b64(password))


def relay(smtp: smtplib.SMTP) -> int:
    """Try to send one message to a domain the gateway does not serve."""
    smtp.mail("alice@example.com")
    code, _ = smtp.rcpt("someone@remote.test")
    if code != 250:
        return code
    code, _ = smtp.data(b"Subject: hi\r\n\r\nrelayed after SMTP AUTH\r\n")
    return code


def test_auth_plain_then_relay(stack: Stack) -> None:
    """AUTH PLAIN with the right password gives 235 and the relayed message is accepted."""
    with connect(stack) as smtp:
        assert 235 == auth_plain(smtp, "alice@example.com", "alice pw")[0]
        assert 250 == relay(smtp)
    eventually(stack.postfix.maillog_text, "sasl_method=PLAIN, sasl_username=alice@example.com")


def test_auth_login(stack: Stack) -> None:
    """AUTH LOGIN works the same way."""
    with connect(stack) as smtp:
        assert 235 == auth_login(smtp, "bob@example.com", "bob-secret")[0]
        assert 250 == relay(smtp)


@pytest.mark.parametrize("user", ["unicode@example.com", "mix@example.com", "long@example.com"])
def test_hard_passwords_through_postfix(stack: Stack, user: str) -> None:
    """Non-ASCII, quotes, braces and 200-character passwords survive Postfix and libsasl."""
    with connect(stack) as smtp:
        assert 235 == auth_plain(smtp, user, USERS[user])[0]


def test_wrong_password_is_535(stack: Stack) -> None:
    """A wrong password is 535 and Postfix logs an authentication failure."""
    with connect(stack) as smtp:
        code, text = auth_plain(smtp, "alice@example.com", "not it")
    assert 535 == code
    assert b"5.7.8" in text
    log = eventually(stack.postfix.maillog_text, "authentication failure")
    banned = [ln for ln in log.splitlines() if failregex().search(ln)]
    assert banned, "the fail2ban filter does not match Postfix's wrong-password line"


def test_no_relay_without_auth(stack: Stack) -> None:
    """Without AUTH the gateway refuses to relay (no open relay)."""
    with connect(stack) as smtp:
        assert 554 == relay(smtp)


def test_imap_outage_is_454(stack: Stack) -> None:
    """With Dovecot stopped Postfix answers 454 4.7.0 (temporary), not 535.

    The user has not authenticated before, so no cached success can answer.
    """
    stack.dovecot.stop()
    with connect(stack) as smtp:
        code, text = auth_plain(smtp, "spaces@example.com", USERS["spaces@example.com"])
    assert 454 == code
    assert b"4.7.0" in text
    log = eventually(stack.postfix.maillog_text, "generic failure")
    outage = [ln for ln in log.splitlines() if "generic failure" in ln]
    assert outage
    assert not any(failregex().search(ln) for ln in outage)  # fail2ban ignores outages
