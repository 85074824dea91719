"""``mail-filter portal`` as a process: it starts, logs users in through a saslauthd socket,
reloads on SIGHUP, serves HTTPS itself, refuses a weak key, and stops on SIGTERM."""

from __future__ import annotations

import re
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from devstack.daemons import PortalDaemon
from devstack.tls import make_tls
from saslimap.protocol import Request, parse_request, reply_no, reply_ok

PASSWORDS = {b"alice@example.com": b"alice pw", b"boss@example.com": b"boss pw"}


class _Server(socketserver.ThreadingUnixStreamServer):
    """The fake's socket, with the requests it received."""

    seen: list[Request]


class _Saslauthd(socketserver.BaseRequestHandler):
    """A saslauthd stand-in: OK for the passwords above, NO otherwise."""

    def handle(self) -> None:
        buf = b""
        while (parsed := parse_request(buf)) is None:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            buf += chunk
        request = parsed.request
        assert isinstance(self.server, _Server)
        self.server.seen.append(request)
        good = PASSWORDS.get(request.login) == request.password
        self.request.sendall(reply_ok() if good else reply_no("authentication failed"))


@pytest.fixture
def saslauthd(sockdir: Path) -> Iterator[_Server]:
    """A fake saslauthd mux socket, answering in a thread."""
    server = _Server(str(sockdir / "mux"), _Saslauthd)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _login(client: httpx2.Client, user: str, password: str) -> httpx2.Response:
    """Post the login form with the token from the login page."""
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    return client.post("/login", data={"login": user, "password": password, "csrf": token.group(1)})


def _reload(portal: PortalDaemon) -> None:
    """SIGHUP the portal and wait (10 s at most) until it logs that it reloaded."""
    portal.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "configuration reloaded" not in portal.log_text():
        assert time.monotonic() < deadline, portal.log_text()
        time.sleep(0.05)


def test_the_portal_process_serves_logins_reloads_and_stops(
    tmp_path: Path, sockdir: Path, saslauthd: _Server
) -> None:
    """A user logs in through the saslauthd socket; SIGHUP makes them an administrator;
    SIGTERM ends the process with 0; no password is in its log."""
    portal = PortalDaemon(
        tmp_path / "portal", sockdir / "mux", {"quarantine": {"directory": str(tmp_path / "q")}}
    )
    with portal:
        with httpx2.Client(base_url=portal.url.rstrip("/"), follow_redirects=False) as client:
            assert 200 == _login(client, "alice@example.com", "wrong").status_code
            assert 303 == _login(client, "alice@example.com", "alice pw").status_code
            page = client.get("/messages")
            assert "Held messages for alice@example.com" in page.text
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert 404 == client.get("/admin").status_code
            assert [b"portal", b"portal"] == [r.service for r in saslauthd.seen]
            assert [b"127.0.0.1"] * 2 == [r.client_addr for r in saslauthd.seen]
            portal.settings["portal"]["admins"] = ["alice@example.com"]
            portal.write_config()
            _reload(portal)
            assert 200 == client.get("/admin").status_code
        assert 0 == portal.stop()
    log = portal.log_text()
    assert "alice pw" not in log
    assert "wrong" not in log.replace("result=wrong", "")
    assert "action=login by=alice@example.com from=127.0.0.1 result=ok" in log


def test_a_weak_or_readable_key_is_a_configuration_error(tmp_path: Path, sockdir: Path) -> None:
    """secret_file readable by others, or short, stops the start with exit 78 naming the key."""
    portal = PortalDaemon(tmp_path / "p", sockdir / "mux", {})
    portal.write_config()
    portal.secret_path.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "filter.cli", "portal", "--config", str(portal.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 78 == done.returncode
    assert "portal.secret_file" in done.stderr


def test_the_portal_serves_https_itself_with_secure_cookies(
    tmp_path: Path, sockdir: Path, saslauthd: _Server
) -> None:
    """With tls_cert and tls_key it speaks HTTPS (verified against the CA); its cookies are
    __Host-, Secure; a renewed certificate is loaded on SIGHUP without a restart."""
    tls = make_tls(tmp_path / "tls")
    portal = PortalDaemon(
        tmp_path / "portal", sockdir / "mux",
        {"portal": {"tls_cert": str(tls.cert), "tls_key": str(tls.key)}},
    )  # fmt: skip
    with portal:
        with httpx2.Client(
            base_url=portal.url.rstrip("/"),
            verify=ssl.create_default_context(cafile=str(tls.ca_cert)),
            follow_redirects=False,
        ) as client:
            page = client.get("/login")
            assert page.headers["set-cookie"].startswith("__Host-mgportal_pre=")
            done = _login(client, "alice@example.com", "alice pw")
            assert 303 == done.status_code
            cookie = next(
                c for c in done.headers.get_list("set-cookie") if c.startswith("__Host-mgportal=")
            )
            assert "secure" in cookie.lower()
            assert "max-age=31536000" == done.headers["strict-transport-security"]
            _reload(portal)
            assert 200 == client.get("/messages").status_code
        assert 0 == portal.stop()
