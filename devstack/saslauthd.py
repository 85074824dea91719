"""The reference implementation we replace: Cyrus saslauthd with the rimap backend.

This module owns one ``saslauthd -a rimap`` instance (Debian's sasl2-bin)
checking passwords by logging in to an IMAP server, with its mux socket in a
caller-chosen directory, plus a small client for saslauthd's socket protocol
so tests and benchmarks can query any saslauthd-compatible server (ours
included) without spawning ``testsaslauthd`` for each request.

saslauthd logs only to syslog, which does not exist here, and its debug mode
(-d) would log passwords in clear, so this instance runs without logs; start
failures are still reported because saslauthd prints them on stderr.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path

from devstack.proc import (
    Launcher,
    check_traversable,
    check_unix_path,
    is_running,
    pids_matching,
    read_pid,
    run_checked,
    stop_pid,
)

__all__ = ["RimapSaslauthd", "saslauthd_check"]

log = logging.getLogger(__name__)


def _pack(field: bytes) -> bytes:
    # saslauthd's request: four counted strings, each a 16-bit big-endian
    # length then the bytes (saslauthd/ipc_unix.c, testsaslauthd.c).
    return struct.pack("!H", len(field)) + field


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("saslauthd closed the connection before replying")
        chunks += chunk
    return chunks


def saslauthd_check(
    mux_path: Path,
    user: str,
    password: str,
    service: str = "smtp",
    realm: str = "",
    timeout: float = 35.0,
) -> str:
    """Ask a saslauthd-protocol server to verify one password; return its reply.

    The reply starts with ``OK`` or ``NO`` followed by a human-readable reason,
    e.g. ``OK "Success."``.  The default timeout exceeds rimap's own 30 s.
    Raises ``OSError`` if the socket is missing or closes without a reply
    (Postfix turns both into "454 4.7.0 Temporary authentication failure").
    """
    request = b"".join(_pack(value.encode("utf-8")) for value in (user, password, service, realm))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(mux_path))
        sock.sendall(request)
        (length,) = struct.unpack("!H", _recv_exact(sock, 2))
        return _recv_exact(sock, length).decode("utf-8", "replace")


class RimapSaslauthd(Launcher):
    """``saslauthd -a rimap`` checking passwords against ``imap_host:imap_port``.

    Runs with ``-r`` so that libsasl's split of ``user@domain`` into login and
    realm (what Postfix sends) is rejoined before the IMAP login.  ``cache``
    adds ``-c`` (saslauthd's credential cache: unsalted MD5, successes only);
    ``threads`` is ``-n``, the number of worker processes.  rimap has no TLS:
    the IMAP login goes over the plain port in clear.
    """

    def __init__(
        self,
        workdir: Path,
        imap_host: str,
        imap_port: int,
        *,
        cache: bool = False,
        threads: int = 5,
    ) -> None:
        self.workdir = workdir.absolute()
        check_unix_path(self.workdir / "mux.accept")  # longest file it creates
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.imap_host = imap_host
        self.imap_port = imap_port
        self.cache = cache
        self.threads = threads
        self.start_seconds: float | None = None
        """Wall time the last start() took until the mux socket answered connect()."""

    @property
    def mux_path(self) -> Path:
        """The Unix socket clients (libsasl, testsaslauthd) connect to."""
        return self.workdir / "mux"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "saslauthd.pid"

    @property
    def pid(self) -> int | None:
        """Pid of the running saslauthd master, or None."""
        pid = read_pid(self.pid_path)
        if pid is None:
            return None
        # saslauthd's argv names its -m directory, which identifies this instance.
        return pid if is_running(pid, cmdline_contains=str(self.workdir)) else None

    def argv(self) -> list[str]:
        """The saslauthd command line this instance runs."""
        # rimap's -O takes HOST/PORT: with HOST:PORT it fails with only
        # "failed to initialize mechanism rimap".
        argv = [
            "saslauthd", "-a", "rimap", "-O", f"{self.imap_host}/{self.imap_port}",
            "-m", str(self.workdir), "-n", str(self.threads), "-r",
        ]  # fmt: skip
        if self.cache:
            argv.append("-c")
        return argv

    def start(self, timeout: float = 10.0) -> None:
        """Start saslauthd (it daemonizes) and wait until its mux socket accepts."""
        if self.pid is not None:
            raise RuntimeError(f"saslauthd already running in {self.workdir}")
        began = time.monotonic()
        # Postfix's smtpd (user postfix) must reach the socket: 0755 all the way.
        check_traversable(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        run_checked(self.argv(), what="saslauthd start")
        deadline = began + timeout
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(self.mux_path))
                break
            except OSError as err:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise TimeoutError(f"saslauthd socket {self.mux_path}: {err}") from err
                time.sleep(0.01)
        self.start_seconds = time.monotonic() - began
        log.info("saslauthd %s started in %.3f s", self.workdir, self.start_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the saslauthd master (it stops its workers); a no-op if not running."""
        pid = self.pid
        if pid is not None:
            stop_pid(pid, timeout, cmdline_contains=str(self.workdir))
        # The master signals its process group on SIGTERM; make sure no worker
        # outlived it (e.g. one blocked in a 30 s rimap read) before returning,
        # so a benchmark's next instance starts from a clean slate.
        for worker in pids_matching(self.argv()[0], str(self.workdir)):
            stop_pid(worker, timeout, cmdline_contains=str(self.workdir))
