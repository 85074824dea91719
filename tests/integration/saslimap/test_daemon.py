"""The real daemon (``saslimap serve``) on its mux socket: testsaslauthd, hostile floods,
a stalled IMAP server, reload and shutdown."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.tls import TlsFiles
from saslimap import protocol, saslauthd_client
from tests.fakes import StallingProxy
from tests.integration.conftest import HARD, USERS, eventually

pytestmark = pytest.mark.integration


def run_testsaslauthd(mux: Path, user: str, password: str, realm: str = "") -> str:
    argv = ["testsaslauthd", "-f", str(mux), "-u", user, "-p", password, "-s", "smtp"]
    if realm:
        argv += ["-r", realm]
    out = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    return out.stdout.decode(errors="replace").strip()


@pytest.mark.parametrize("user", ["alice@example.com", *HARD[:6]])
def test_testsaslauthd_ok(daemon: SaslimapDaemon, user: str) -> None:
    """Debian's testsaslauthd gets OK for the right password."""
    assert '0: OK "Success."' == run_testsaslauthd(daemon.socket_path, user, USERS[user])


def test_testsaslauthd_no(daemon: SaslimapDaemon) -> None:
    """... and NO for a wrong one."""
    assert run_testsaslauthd(daemon.socket_path, "alice@example.com", "nope").startswith("0: NO")


def test_testsaslauthd_with_realm(daemon: SaslimapDaemon) -> None:
    """Login and realm given apart are rejoined as login@realm."""
    assert '0: OK "Success."' == run_testsaslauthd(
        daemon.socket_path, "bob", "bob-secret", "example.com"
    )


def test_cli_test_command(daemon: SaslimapDaemon) -> None:
    """`saslimap test` reads the password from stdin and exits 0 on OK, 1 on NO."""
    script = str(Path(sys.executable).parent / "saslimap")  # the installed console script
    base = [script, "test", "-f", str(daemon.socket_path), "-u", "alice@example.com"]
    ok = subprocess.run(base, input=b"alice pw\n", capture_output=True, timeout=30, check=False)
    assert (0, b'0: OK "Success."\n') == (ok.returncode, ok.stdout)
    no = subprocess.run([*base, "-p", "bad"], capture_output=True, timeout=30, check=False)
    assert 1 == no.returncode


def _hostile(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:
        full = protocol.encode_request(b"alice@example.com", b"alice pw", b"smtp", b"")
        return full[: rng.randrange(1, len(full))]
    if kind == 2:
        return b"\xff\xff" + b"A" * rng.randrange(0, 100)
    if kind == 3:
        return protocol.encode_request(
            b'user "x"\r\nA2 LOGIN victim@example.com "guess"', b"alice pw", b"smtp", b""
        )
    if kind == 4:
        return protocol.encode_request(b"alice@example.com", b"alice pw\r\nA3 LOGOUT", b"smtp", b"")
    return protocol.encode_request(b"alice@example.com\x00", b"alice pw", b"smtp", b"")


def _send_hostile(path: Path, blob: bytes) -> bytes | None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        try:
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            return None
    return protocol.parse_reply(data)


def test_hostile_flood_interleaved_with_real_checks(daemon: SaslimapDaemon) -> None:
    """1,000 hostile requests never get OK, and real checks among them are all answered right."""
    rng = random.Random(2024)
    blobs = [_hostile(rng) for _ in range(1000)]
    real: list[tuple[str, str, bool]] = []
    for n in range(100):
        user = HARD[n % len(HARD)]
        good = n % 4 != 0
        real.append((user, USERS[user] if good else USERS[user] + "x", good))
    hostile_ok = 0
    wrong_real: list[str] = []
    lock = threading.Lock()

    def hostile_job(blob: bytes) -> None:
        nonlocal hostile_ok
        reply = _send_hostile(daemon.socket_path, blob)
        if reply is not None and protocol.reply_is_ok(reply):
            with lock:
                hostile_ok += 1

    def real_job(item: tuple[str, str, bool]) -> None:
        user, password, good = item
        reply = saslauthd_client.query(
            daemon.socket_path, user.encode(), password.encode(), b"smtp", b""
        )
        if protocol.reply_is_ok(reply) != good:
            with lock:
                wrong_real.append(user)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(hostile_job, b) for b in blobs]
        futures[::10] = [pool.submit(real_job, r) for r in real]
        for f in futures:
            f.result()
    assert (0, []) == (hostile_ok, wrong_real)
    assert daemon.alive()
    assert b"OK" == saslauthd_client.query(
        daemon.socket_path, b"alice@example.com", b"alice pw", b"smtp"
    )


def test_no_password_in_daemon_log(daemon: SaslimapDaemon) -> None:
    """Even at debug level, no password of any user appears in the daemon's log."""
    saslauthd_client.query(daemon.socket_path, b"alice@example.com", b"alice pw", b"smtp")
    saslauthd_client.query(daemon.socket_path, b"alice@example.com", b"wrong-Pw-123", b"smtp")
    text = eventually(daemon.log_text, "result=no")
    leaked = [p for p in [*USERS.values(), "wrong-Pw-123"] if p in text]
    assert [] == leaked


def test_stalled_imap_server_is_bounded(workroot: Path, dovecot: Dovecot, tls: TlsFiles) -> None:
    """Connections that are accepted but never greeted get a tempfail within the deadline,
    while checks that reach the real Dovecot in the meantime are answered promptly."""
    proxy = StallingProxy(dovecot.imap_port, stall=lambda n: n % 2 == 0)
    d = SaslimapDaemon(
        workroot / "stalled",
        {
            "imap": {
                "url": f"imap://127.0.0.1:{proxy.port}",
                "ca_file": str(tls.ca_cert),
                "connect_timeout": 1.0,
                "response_timeout": 1.0,
                "max_concurrency": 8,
                "warm_connections": 0,
            },
            "cache": {"max_entries": 0},  # every check must reach the proxy
        },
    )
    d.start()
    try:

        def one(n: int) -> tuple[str, float]:
            user = HARD[n % len(HARD)]
            begin = time.monotonic()
            try:
                reply = saslauthd_client.query(
                    d.socket_path, user.encode(), USERS[user].encode(), b"smtp"
                )
                outcome = reply.decode()
            except saslauthd_client.NoReply:
                outcome = "tempfail"
            return outcome, time.monotonic() - begin

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(12)))
    finally:
        assert 0 == d.stop()
        proxy.close()
    stalled = [t for o, t in results if o == "tempfail"]
    answered = [t for o, t in results if o == "OK"]
    assert all(o in ("OK", "tempfail") for o, _ in results)
    assert stalled
    assert answered
    assert max(stalled) < 6.0  # 2 x connect + 3 x response deadline, plus slack
    assert sorted(answered)[len(answered) // 2] < 1.0


def test_sighup_reload_keeps_old_config_on_error(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """SIGHUP with a broken file logs the error and keeps serving with the old config."""
    d = SaslimapDaemon(
        workroot / "reload",
        {"imap": {"url": dovecot.imap_url("imaps"), "ca_file": str(tls.ca_cert)}},
    )
    d.start()
    try:
        d.config_path.write_text(d.config_path.read_text() + "\n[imap2]\n")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reload failed" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reload failed" in d.log_text()
        assert b"OK" == saslauthd_client.query(
            d.socket_path, b"alice@example.com", b"alice pw", b"smtp"
        )
    finally:
        assert 0 == d.stop()
    assert not d.socket_path.exists()
