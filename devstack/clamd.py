"""A real ClamAV daemon (clamd) with the project's test signatures, for tests and benchmarks.

This module owns one throw-away clamd: its configuration file, a private copy
of ``devstack/signatures`` as its database, its Unix socket (and optionally a
TCP socket on 127.0.0.1), pid and log files under a caller-chosen
``workdir``, and its life cycle.  clamd runs in the foreground as our child
process, so stop() can wait for the process itself rather than poll a pid file.
It also exports the test "viruses" its signatures detect.

Layout of ``workdir`` (keep it short: the Unix socket lives here)::

    clamd.conf     generated configuration
    db/            DatabaseDirectory, a copy of devstack/signatures
    clamd.sock     LocalSocket
    clamd.pid      PidFile
    clamd.log      LogFile (detections, start-up, shutdown)
    clamd.out      clamd's stdout and stderr (start-up errors before the log opens)

clamd runs as root, without a ``User`` line.  ``User clamav`` works too, but
clamd drops privileges *before* binding LocalSocket (so the socket's directory
must be writable by clamav), chowns LogFile to clamav, and writes PidFile as
root first; none of that buys anything for a throw-away test instance, and
INSTREAM scanning, the only thing the gateway does, never touches files.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path

from devstack.ports import LOOPBACK
from devstack.proc import (
    ChildLauncher,
    check_config_path,
    check_unix_path,
)

__all__ = [
    "EICAR",
    "EICAR_SIGNATURE_PREFIX",
    "SIGNATURES_DIR",
    "TEST_MARKER",
    "TEST_MARKER_SIGNATURE",
    "Clamd",
]

log = logging.getLogger(__name__)

SIGNATURES_DIR = Path(__file__).resolve().parent / "signatures"
"""The test signatures the project ships (see its README.md)."""

# The 68-byte EICAR test file.  Written with an escaped backslash so that this
# source file does not itself contain the EICAR byte string, which real
# antivirus software on a developer's machine might flag.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
"""The EICAR test file (68 bytes); detected raw, MIME-encoded and zipped."""

EICAR_SIGNATURE_PREFIX = "Eicar-Test-Signature"
"""Every name clamd reports for EICAR starts with this (``.hdb`` and ``.ndb`` names differ)."""

TEST_MARKER = b"MAILGATE-TEST-VIRUS-MARKER-7f3a9c"
"""Our own test "virus": an ASCII string only the devstack signatures detect."""

TEST_MARKER_SIGNATURE = "Mailgate.Test.Marker.UNOFFICIAL"
"""The name clamd reports for ``TEST_MARKER`` (unsigned databases get ``.UNOFFICIAL``)."""

# What clamd loads from DatabaseDirectory; it ignores other extensions, but
# copying only these keeps the database directory what it claims to be.
_SIGNATURE_SUFFIXES = frozenset({".hdb", ".hsb", ".ndb", ".ldb", ".cdb", ".fp", ".ign2"})

_PING = b"zPING\0"
_PONG = b"PONG\0"


def _ping(family: socket.AddressFamily, address: str | tuple[str, int], timeout: float) -> bool:
    """One zPING round trip; False on any connection problem or unexpected answer."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(_PING)
            answer = b""
            # z-commands end their reply with NUL; PONG\0 may arrive in pieces.
            while not answer.endswith(b"\0") and len(answer) < 64:
                chunk = sock.recv(64)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return False
    return answer == _PONG


class Clamd(ChildLauncher):
    """One clamd on ``socket_path`` (and ``127.0.0.1:tcp_port`` if given).

    ``disable_cache`` (default on) stops clamd from remembering clean results
    by content hash: otherwise repeated identical test messages measure the
    cache, not the scan.  ``stream_max_length`` is clamd's StreamMaxLength
    (``"25M"``, ``"1K"``, bytes without suffix): a longer INSTREAM is answered
    ``INSTREAM size limit exceeded. ERROR``.  ``max_threads`` bounds
    concurrent scans.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tcp_port: int | None = None,
        disable_cache: bool = True,
        stream_max_length: str = "25M",
        max_threads: int = 4,
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        check_unix_path(self.socket_path)
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        if not stream_max_length or not stream_max_length.rstrip("kKmM").isdigit():
            raise ValueError(
                f"stream_max_length must be digits with optional K/M: {stream_max_length!r}"
            )
        self._tcp_port = tcp_port
        self._disable_cache = disable_cache
        self._stream_max_length = stream_max_length
        self._max_threads = max_threads
        self._process = None
        self.start_seconds: float | None = None
        """Wall time the last start() took until zPING answered PONG."""
        self.stop_seconds: float | None = None
        """Wall time the last stop() took until the process had exited."""

    # -- properties ---------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """clamd's LocalSocket (mode 0666, so unprivileged clients may connect)."""
        return self.workdir / "clamd.sock"

    @property
    def address(self) -> str:
        """The Unix socket as ``unix:/path``, the form the gateway's config takes."""
        return f"unix:{self.socket_path}"

    @property
    def tcp_port(self) -> int | None:
        """TCPSocket on 127.0.0.1, or None for the Unix socket only."""
        return self._tcp_port

    @property
    def host(self) -> str:
        """Address the TCP socket (if any) is bound to."""
        return LOOPBACK

    @property
    def config_path(self) -> Path:
        return self.workdir / "clamd.conf"

    @property
    def database_dir(self) -> Path:
        return self.workdir / "db"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "clamd.pid"

    @property
    def log_path(self) -> Path:
        return self.workdir / "clamd.log"

    @property
    def output_path(self) -> Path:
        """clamd's stdout and stderr, where errors before LogFile is open end up."""
        return self.workdir / "clamd.out"

    # -- configuration ------------------------------------------------------

    def config_text(self) -> str:
        """The clamd.conf this instance writes on start()."""
        tcp = (
            f"TCPSocket {self._tcp_port}\nTCPAddr {LOOPBACK}\n"
            if self._tcp_port is not None
            else ""
        )
        return f"""# Generated by devstack.clamd; rewritten on every start().
DatabaseDirectory {self.database_dir}
LocalSocket {self.socket_path}
LocalSocketMode 666
{tcp}# Our child process: stop() waits for it instead of polling PidFile.
Foreground yes
PidFile {self.pid_path}
LogFile {self.log_path}
LogTime yes
# The default 1 MB cap forces rotation: clamd renames clamd.log to
# clamd-DATE_TIME.log and starts over, so a reader of log_path would miss
# lines (a benchmark scanning EICAR thousands of times gets there).
LogFileMaxSize 0
DisableCache {"yes" if self._disable_cache else "no"}
StreamMaxLength {self._stream_max_length}
MaxThreads {self._max_threads}
# The signatures never change while a test runs; skip the 10-minute
# database freshness check so nothing reloads mid-benchmark.
SelfCheck 0
"""

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A fresh copy each start: edits to devstack/signatures take effect
        # on restart, and nothing of an earlier run's database lingers.
        shutil.rmtree(self.database_dir, ignore_errors=True)
        self.database_dir.mkdir()
        for source in sorted(SIGNATURES_DIR.iterdir()):
            if source.suffix in _SIGNATURE_SUFFIXES:
                shutil.copyfile(source, self.database_dir / source.name)
        self.config_path.write_text(self.config_text(), encoding="utf-8")

    # -- life cycle ---------------------------------------------------------

    def ping(self, timeout: float = 1.0) -> bool:
        """True if clamd answers zPING with PONG on the Unix socket (and TCP, if any)."""
        if not _ping(socket.AF_UNIX, str(self.socket_path), timeout):
            return False
        return self._tcp_port is None or _ping(socket.AF_INET, (LOOPBACK, self._tcp_port), timeout)

    def start(self, timeout: float = 15.0) -> None:
        """Start clamd as a child process and wait until it answers zPING."""
        self._refuse_if_running("clamd")
        began = time.monotonic()
        self._prepare()
        self._spawn(
            ["clamd", "-c", str(self.config_path)], name="clamd", output=self.output_path,
            ready=lambda t: self.ping(timeout=t), deadline=began + timeout,
            logs=(self.output_path, self.log_path), pause=0.005,
        )  # fmt: skip
        self.start_seconds = time.monotonic() - began
        log.info("clamd %s started in %.3f s", self.workdir, self.start_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM clamd and wait until the process has exited; SIGKILL after ``timeout``.

        A no-op if not running.  It waits on the child with waitpid (see
        ChildLauncher): every thread has exited and the sockets are closed.
        """
        if self._process is None:
            return
        began = time.monotonic()
        if self._reap(timeout):
            log.warning("clamd %s ignored SIGTERM for %.1f s; killed it", self.workdir, timeout)
        self.stop_seconds = time.monotonic() - began

    def __repr__(self) -> str:
        return f"Clamd({self.workdir}, pid={self.pid}, tcp_port={self._tcp_port})"
