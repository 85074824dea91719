"""systemd integration: unit files verify; the daemons adopt a passed socket, report
readiness, reloading and stopping to NOTIFY_SOCKET, and drain in-flight work on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.daemons import _toml
from devstack.dovecot import Dovecot
from devstack.tls import TlsFiles
from saslimap import saslauthd_client
from tests.fakes import StallingProxy

pytestmark = pytest.mark.integration

UNITS = sorted((Path(__file__).resolve().parents[2] / "systemd").iterdir())
VENV_BIN = Path(sys.executable).parent


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    """systemd-analyze verify accepts every unit (with this venv's binaries), ignoring
    no setting."""
    for other in UNITS:  # units refer to each other (socket <-> service)
        text = other.read_text().replace("/opt/mailgate/venv/bin", str(VENV_BIN))
        (tmp_path / other.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / unit.name)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    problems = [
        line for line in done.stderr.splitlines()
        if any(word in line for word in ("Failed to", "Unknown", "Invalid", "ignoring"))
        or "bad" in line.lower()
    ]  # fmt: skip
    assert [] == problems, done.stderr
    assert 0 == done.returncode, done.stderr


class Notifications:
    """A NOTIFY_SOCKET the test listens on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[str] = []

    def wait_for(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in m for m in self.received):
            assert time.monotonic() < deadline, f"no {text!r}; got {self.received}"
            with contextlib.suppress(TimeoutError):
                self.received.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets."""
    path = Path(tempfile.mkdtemp(prefix="sd", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_activated(
    argv: list[str], listener: socket.socket, notify: Path
) -> subprocess.Popen[bytes]:
    """Start a daemon as systemd would: the socket as fd 3, LISTEN_* and NOTIFY_SOCKET set."""
    fd = listener.fileno()

    def as_fd3() -> None:
        os.dup2(fd, 3)
        os.set_inheritable(3, True)

    env = dict(os.environ, LISTEN_FDS="1", NOTIFY_SOCKET=str(notify))
    # LISTEN_PID must be the daemon's own pid: exec keeps the shell's.
    return subprocess.Popen(
        ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *argv],
        env=env, preexec_fn=as_fd3, close_fds=False,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_saslimap_socket_activation_notify_reload_and_drain(
    short_dir: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """saslimap answers on the passed socket, notifies READY/RELOADING/STOPPING, and a check
    in flight at SIGTERM is still answered."""
    proxy = StallingProxy(dovecot.imap_port, stall=lambda _n: False, delay=1.0)
    mux = short_dir / "mux"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(mux))
    listener.listen(16)
    config = short_dir / "saslimap.toml"
    config.write_text(
        _toml(
            {
                "server": {"socket": "/nonexistent/unused"},
                "imap": {
                    "url": f"imap://127.0.0.1:{proxy.port}",
                    "ca_file": str(tls.ca_cert),
                    "warm_connections": 0,
                },
                "metrics": {"listen": ""},
            },
            ("server", "imap", "metrics"),
        )
    )
    notify = Notifications(short_dir / "notify")
    proc = start_activated(
        [str(VENV_BIN / "saslimap"), "serve", "--config", str(config)], listener, notify.path
    )
    listener.close()
    try:
        notify.wait_for("READY=1")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        replies: list[bytes] = []
        worker = threading.Thread(
            target=lambda: replies.append(
                saslauthd_client.query(mux, b"alice@example.com", b"alice pw", b"smtp", timeout=20)
            )
        )
        worker.start()
        time.sleep(0.3)  # the check is now waiting on the delayed IMAP connection
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        worker.join(20)
        assert [b"OK"] == replies
        assert 0 == proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()
        notify.close()


def test_mail_filter_socket_activation_and_notify(short_dir: Path) -> None:
    """mail-filter greets on the passed TCP socket and notifies READY and STOPPING."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = short_dir / "filter.toml"
    config.write_text(
        _toml(
            {"server": {"listen": "127.0.0.1:1"}, "metrics": {"listen": ""}},
            ("server", "metrics"),
        )
    )
    notify = Notifications(short_dir / "notify")
    proc = start_activated(
        [str(VENV_BIN / "mail-filter"), "serve", "--config", str(config)], listener, notify.path
    )
    listener.close()
    try:
        notify.wait_for("READY=1")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(100).startswith(b"220 ")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert 0 == proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_mail_filter_portal_socket_activation_notify_and_reload(short_dir: Path) -> None:
    """The portal serves on the passed TCP socket and notifies READY, RELOADING, STOPPING."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    key = short_dir / "portal.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = short_dir / "filter.toml"
    config.write_text(
        _toml(
            {
                "portal": {
                    "listen": "127.0.0.1:1", "secret_file": str(key),
                    "auth_socket": str(short_dir / "mux"),
                },
                "quarantine": {"directory": str(short_dir / "q")},
                "metrics": {"listen": ""},
            },
            ("portal", "quarantine", "metrics"),
        )
    )  # fmt: skip
    notify = Notifications(short_dir / "notify")
    proc = start_activated(
        [str(VENV_BIN / "mail-filter"), "portal", "--config", str(config)], listener, notify.path
    )
    listener.close()
    try:
        notify.wait_for("READY=1")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /login HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 200 ")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING=1")
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert 0 == proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
