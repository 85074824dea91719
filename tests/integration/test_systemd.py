"""systemd integration: unit files verify; the daemons adopt passed sockets (saslimap
both of its own by name, Postfix's Dovecot wiring included), report readiness, reloading
and stopping to NOTIFY_SOCKET, and drain in-flight work on SIGTERM."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from devstack.daemons import _toml
from devstack.dovecot import Dovecot
from devstack.dovecot_auth import dovecot_auth
from devstack.postfix import Postfix
from devstack.tls import TlsFiles
from saslimap import saslauthd_client
from tests.fakes import StallingProxy
from tests.integration.conftest import eventually

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
    argv: list[str],
    listeners: Sequence[socket.socket],
    notify: Path,
    names: str | None = None,
    output: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a daemon as systemd would: the sockets as fds 3, 4 ..., LISTEN_FDS, LISTEN_PID,
    LISTEN_FDNAMES (``names``, colon-separated; unset when None) and NOTIFY_SOCKET set;
    its stdout and stderr go to ``output``."""
    fds = [sock.fileno() for sock in listeners]

    def hand_over() -> None:
        # Above every target first, so no socket is overwritten before it is moved.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
        for target, fd in enumerate(high, start=3):
            os.dup2(fd, target)  # inheritable
            os.close(fd)

    env = dict(os.environ, LISTEN_FDS=str(len(fds)), NOTIFY_SOCKET=str(notify))
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    # LISTEN_PID must be the daemon's own pid: exec keeps the shell's.
    with (output or Path(os.devnull)).open("ab") as sink:
        return subprocess.Popen(
            ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *argv],
            env=env, preexec_fn=hand_over, close_fds=False,
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
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
        [str(VENV_BIN / "saslimap"), "serve", "--config", str(config)], [listener], notify.path
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


def unix_listener(path: Path) -> socket.socket:
    """A listening Unix stream socket at ``path``, as systemd makes one for ListenStream=."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    return sock


def saslimap_config(directory: Path, dovecot: Dovecot, tls: TlsFiles, dovecot_on: bool) -> Path:
    """A saslimap.toml whose own socket paths are never used when systemd passes the sockets."""
    config = directory / "saslimap.toml"
    sections: dict[str, dict[str, object]] = {
        "server": {"socket": str(directory / "own-mux")},
        "imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
        "dovecot": {"socket": str(directory / "own-auth") if dovecot_on else ""},
        # Failures answered at once: this file tests sockets, not per-IP delays.
        "iplimits": {"base_delay": 0.0, "max_delay": 0.0},
        "metrics": {"listen": ""},
        "logging": {"level": "debug"},
    }
    config.write_text(_toml(sections, tuple(sections)))
    return config


def wait_for_path(path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, and the exit code (killed after 20 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)
def test_saslimap_adopts_both_sockets_by_name(
    short_dir: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """Sockets named by systemd's own code (systemd-socket-activate --fdname, in unit order:
    dovecot first): "saslauthd" answers the saslauthd protocol, "dovecot" the Dovecot one, an
    unknown name is logged once and closed, saslimap binds no socket of its own and leaves
    the passed ones' files to systemd."""
    auth, mux, extra = short_dir / "auth", short_dir / "mux", short_dir / "extra"
    config = saslimap_config(short_dir, dovecot, tls, dovecot_on=True)
    notify = Notifications(short_dir / "notify")
    output = short_dir / "saslimap.log"
    with output.open("ab") as sink:
        proc = subprocess.Popen(
            [
                "systemd-socket-activate", "--fdname=dovecot:saslauthd:portal",
                "-l", str(auth), "-l", str(mux), "-l", str(extra),
                "-E", f"NOTIFY_SOCKET={notify.path}",
                "-E", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
                str(VENV_BIN / "saslimap"), "serve", "--config", str(config),
            ],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_path(extra)
        # The first connection makes systemd-socket-activate exec saslimap (its pid kept).
        reply = saslauthd_client.query(
            mux, b"alice", b"alice pw", b"smtp", b"example.com", timeout=20
        )
        assert b"OK" == reply
        notify.wait_for("READY=1")
        assert "ok" == dovecot_auth(auth, "bob@example.com", "bob-secret", "192.0.2.7")
        assert "fail" == dovecot_auth(auth, "bob@example.com", "not it", "192.0.2.7")
        reply = saslauthd_client.query(mux, b"bob", b"not it", b"smtp", b"example.com")
        assert reply.startswith(b"NO ")
        eventually(
            lambda: output.read_text(errors="replace"),
            f"closing the socket systemd passed on {extra}, named 'portal'",
        )
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(extra))
        assert 0 == stop(proc)
    finally:
        stop(proc)
        notify.close()
    text = output.read_text(errors="replace")
    assert 1 == text.count("named 'portal'"), text
    assert f"Dovecot-protocol listener on {auth} (passed by systemd)" in text
    assert [] == sorted(p.name for p in short_dir.glob("own-*"))
    assert (True, True) == (auth.exists(), mux.exists()), "systemd removes the passed sockets"
    assert "bob-secret" not in text


def test_saslimap_refuses_a_dovecot_socket_while_the_listener_is_off(
    short_dir: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """A socket named "dovecot" with dovecot.socket = "" stops the start: exit 78, the message
    naming the key and the unit (the saslauthd socket passed with it is not served either)."""
    listeners = [unix_listener(short_dir / "mux"), unix_listener(short_dir / "auth")]
    config = saslimap_config(short_dir, dovecot, tls, dovecot_on=False)
    notify = Notifications(short_dir / "notify")
    output = short_dir / "saslimap.log"
    proc = start_activated(
        [str(VENV_BIN / "saslimap"), "serve", "--config", str(config)],
        listeners, notify.path, names="saslauthd:dovecot", output=output,
    )  # fmt: skip
    for sock in listeners:
        sock.close()
    try:
        assert 78 == proc.wait(20)
    finally:
        stop(proc)
        notify.close()
    text = output.read_text(errors="replace")
    assert "configuration error: dovecot.socket: systemd passed a socket named 'dovecot'" in text
    assert "disable saslimap-dovecot.socket" in text
    assert not any("READY=1" in m for m in notify.received)


def test_postfix_dovecot_wiring_on_the_passed_socket(
    short_dir: Path, workroot: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """A real Postfix with smtpd_sasl_type = dovecot, pointed at the socket systemd passed
    (made as saslimap-dovecot.socket makes it: postfix:postfix 0660), gives 235 to the right
    password and 535 to a wrong one."""
    short_dir.chmod(0o755)  # smtpd runs as postfix
    auth = short_dir / "auth"
    listeners = [unix_listener(short_dir / "mux"), unix_listener(auth)]
    postfix_user = pwd.getpwnam("postfix")
    os.chown(auth, postfix_user.pw_uid, postfix_user.pw_gid)
    auth.chmod(0o660)
    config = saslimap_config(short_dir, dovecot, tls, dovecot_on=True)
    notify = Notifications(short_dir / "notify")
    output = short_dir / "saslimap.log"
    proc = start_activated(
        [str(VENV_BIN / "saslimap"), "serve", "--config", str(config)],
        listeners, notify.path, names="saslauthd:dovecot", output=output,
    )  # fmt: skip
    for sock in listeners:
        sock.close()
    postfix = Postfix(workroot / "sd-postfix", sasl_dovecot_path=auth)
    try:
        notify.wait_for("READY=1")
        postfix.start()
        with smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            assert 535 == smtp.docmd("AUTH", "PLAIN " + plain("carol@example.com", "x"))[0]
            assert 235 == smtp.docmd("AUTH", "PLAIN " + plain("alice@example.com", "alice pw"))[0]
            # Relayed as alice: Postfix logs the login once a recipient opens a queue file.
            smtp.mail("alice@example.com")
            assert 250 == smtp.rcpt("someone@remote.test")[0]
        eventually(postfix.maillog_text, "sasl_method=PLAIN, sasl_username=alice@example.com")
        assert 0 == stop(proc)
    finally:
        postfix.stop()
        stop(proc)
        notify.close()
    text = output.read_text(errors="replace")
    assert 'auth user="alice@example.com" service="smtp" realm="" result=ok' in text, text
    assert "alice pw" not in text


def plain(user: str, password: str) -> str:
    """An AUTH PLAIN initial response (RFC 4616)."""
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


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
        [str(VENV_BIN / "mail-filter"), "serve", "--config", str(config)], [listener], notify.path
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
        [str(VENV_BIN / "mail-filter"), "portal", "--config", str(config)], [listener], notify.path
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
