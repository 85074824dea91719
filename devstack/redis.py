"""A real Redis server (Debian's redis-server 7.0) on loopback, for tests and benchmarks,
and a Redis Sentinel (the same binary in sentinel mode) watching one.

This module owns one throw-away redis-server: its generated configuration
(no persistence, loopback only, optional password, Unix socket and TLS
listener), the password file, its log under a caller-chosen ``workdir``, its
life cycle (start, stop, restart empty, pause and resume to play a hung
server) and a small ``redis-cli`` wrapper for tests that inspect keys.
redis-server runs in the foreground as our child process, so stop() waits
for the process itself.

Layout of ``workdir`` (keep it short: the Unix socket lives here)::

    redis.conf     generated configuration, rewritten on every start()
    redis.sock     unixsocket (only with unix_socket=True)
    password       the requirepass value, mode 0600 (only with a password)
    redis.log      redis-server's stdout and stderr (``logfile ""``)

Nothing is ever written to disk by Redis itself: ``save ""`` and
``appendonly no`` mean no dump.rdb on shutdown either, so a restart comes
back empty, which is what tests of "Redis restarted and lost everything"
need.  It runs as root without complaint (no ``User`` option exists); the
Debian package's /etc/redis/redis.conf and its systemd unit are not used.

:class:`Sentinel` is one Redis Sentinel (quorum 1) watching such a server,
for tests of ``[state] sentinels`` and of a failover.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import BinaryIO

from devstack.ports import LOOPBACK, free_port
from devstack.proc import (
    ChildLauncher,
    check_config_path,
    check_unix_path,
)
from devstack.tls import TlsFiles

__all__ = ["Redis", "Sentinel"]

log = logging.getLogger(__name__)

# Written unquoted into redis.conf and into SpamAssassin's bayes_sql_dsn,
# which splits on ';' and has no quoting at all, and passed to redis-cli in
# an environment variable: a character set that needs no escaping anywhere.
_SAFE_PASSWORD = re.compile(r"^[A-Za-z0-9._~+/=-]{1,512}$")


def _command(*parts: str) -> bytes:
    """One command as a RESP array of bulk strings (the form every Redis accepts)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Redis(ChildLauncher):
    """One redis-server on 127.0.0.1: plain TCP, a Unix socket, TLS, in any combination.

    ``port`` is the plain TCP port (a free one if None); ``tls_only`` turns
    the plain listener off (``port 0``) so that only ``tls_port`` answers.
    ``tls`` (devstack.tls.make_tls) enables the TLS listener; clients need
    no certificate of their own (``tls-auth-clients no``).  ``password`` is
    Redis's ``requirepass`` (the ``default`` user's password), also written
    to ``password_file``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        unix_socket: bool = False,
        password: str | None = None,
        tls: TlsFiles | None = None,
        tls_port: int | None = None,
        tls_only: bool = False,
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        if unix_socket:
            check_unix_path(self.socket_path)
        if password is not None and not _SAFE_PASSWORD.match(password):
            raise ValueError("password must be 1-512 characters of [A-Za-z0-9._~+/=-]")
        if tls_only and tls is None:
            raise ValueError("tls_only needs tls")
        self._tls_only = tls_only
        self._port = None if tls_only else (port if port is not None else free_port())
        self._unix_socket = unix_socket
        self._password = password
        self._tls = tls
        self._tls_port = (
            None if tls is None else (tls_port if tls_port is not None else free_port())
        )
        self._process = None
        self._paused = False
        self.start_seconds: float | None = None
        """Wall time the last start() took until every listener answered PING."""

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        """The plain TCP port; ValueError if the server listens with TLS only."""
        if self._port is None:
            raise ValueError(f"{self!r} has no plain TCP listener (tls_only)")
        return self._port

    @property
    def tls_port(self) -> int:
        """The TLS port; ValueError if TLS is off."""
        if self._tls_port is None:
            raise ValueError(f"{self!r} has no TLS listener")
        return self._tls_port

    @property
    def socket_path(self) -> Path:
        """Where the Unix socket is (it exists only with ``unix_socket=True``)."""
        return self.workdir / "redis.sock"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, without the password (see ``password_file``)."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix:///WORKDIR/redis.sock?db=0``; ValueError without ``unix_socket=True``."""
        if not self._unix_socket:
            raise ValueError(f"{self!r} has no Unix socket")
        return f"unix://{self.socket_path}?db=0"

    @property
    def tls_url(self) -> str:
        """``rediss://127.0.0.1:TLS_PORT/0``: verify it against ``ca_file``."""
        return f"rediss://{LOOPBACK}:{self.tls_port}/0"

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def password_file(self) -> Path | None:
        """A file holding just the password (no newline), or None without one."""
        return None if self._password is None else self.workdir / "password"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate that signed the TLS listener's certificate, or None."""
        return None if self._tls is None else self._tls.ca_cert

    @property
    def config_path(self) -> Path:
        return self.workdir / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def paused(self) -> bool:
        """True between pause() and resume()."""
        return self._paused

    # -- configuration ------------------------------------------------------

    def config_text(self) -> str:
        """The redis.conf this instance writes on start()."""
        lines = [
            "# Generated by devstack.redis; rewritten on every start().",
            f"bind {LOOPBACK}",
            # port 0 turns plain TCP off; the TLS listener is tls-port.
            f"port {self._port or 0}",
            # Our child process: stop() waits for it; no pid file needed.
            "daemonize no",
            "supervised no",
            # No persistence at all: no dump.rdb, not even on shutdown, and no
            # AOF, so restart() comes back empty.  dir is set anyway so that a
            # stray BGSAVE from a test lands here and not in the cwd.
            'save ""',
            "appendonly no",
            f"dir {self.workdir}",
            # To stdout, which start() sends to redis.log: start-up errors
            # such as a bad TLS file appear before a logfile would be opened.
            'logfile ""',
            "loglevel notice",
            "always-show-logo no",
        ]
        if self._unix_socket:
            # spamd's children (debian-spamd) and other unprivileged test
            # clients connect too; with the default mode (umask) they cannot.
            lines += [f"unixsocket {self.socket_path}", "unixsocketperm 777"]
        if self._password is not None:
            lines.append(f"requirepass {self._password}")
        if self._tls is not None:
            lines += [
                f"tls-port {self._tls_port}",
                f"tls-cert-file {self._tls.cert}",
                f"tls-key-file {self._tls.key}",
                f"tls-ca-cert-file {self._tls.ca_cert}",
                # The default "yes" demands a client certificate: redis-py and
                # redis-cli would be refused with a bare "connection closed".
                "tls-auth-clients no",
            ]
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for path in (self.config_path, self.socket_path):
            path.unlink(missing_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        # requirepass is in redis.conf too; only root's processes read either.
        self.config_path.chmod(0o600)
        if self.password_file is not None and self._password is not None:
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(self._password)

    # -- life cycle ---------------------------------------------------------

    def _ping_one(
        self,
        family: socket.AddressFamily,
        address: str | tuple[str, int],
        timeout: float,
        context: ssl.SSLContext | None = None,
    ) -> bool:
        """AUTH (if any) and PING on one listener; True only for ``+OK`` then ``+PONG``."""
        request = b""
        expected = b""
        if self._password is not None:
            request += _command("AUTH", self._password)
            expected += b"+OK\r\n"
        request += _command("PING")
        expected += b"+PONG\r\n"
        try:
            with socket.socket(family, socket.SOCK_STREAM) as raw:
                raw.settimeout(timeout)
                raw.connect(address)
                # server_hostname: the TLS probe checks the certificate against
                # the address dialled, like a verifying client does.
                sock = (
                    raw if context is None else context.wrap_socket(raw, server_hostname=LOOPBACK)
                )
                with sock:
                    sock.sendall(request)
                    answer = b""
                    while len(answer) < len(expected):
                        chunk = sock.recv(len(expected) - len(answer))
                        if not chunk:
                            break
                        answer += chunk
        except ssl.SSLCertVerificationError:
            raise  # a certificate problem does not go away by retrying
        except OSError:
            return False
        return answer == expected

    def ping(self, timeout: float = 1.0) -> bool:
        """True if every configured listener answers PING with PONG (after AUTH, if any)."""
        if self._port is not None and not self._ping_one(
            socket.AF_INET, (LOOPBACK, self._port), timeout
        ):
            return False
        if self._unix_socket and not self._ping_one(socket.AF_UNIX, str(self.socket_path), timeout):
            return False
        if self._tls is not None and self._tls_port is not None:
            context = ssl.create_default_context(cafile=self._tls.ca_cert)
            return self._ping_one(socket.AF_INET, (LOOPBACK, self._tls_port), timeout, context)
        return True

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server as a child process and wait until every listener answers PING."""
        self._refuse_if_running("redis-server")
        began = time.monotonic()
        self._prepare()
        self._paused = False
        self._spawn(
            ["redis-server", str(self.config_path)], name="redis-server", output=self.log_path,
            append=True, ready=lambda t: self.ping(timeout=t), deadline=began + timeout,
            logs=(self.log_path,), pause=0.005,
        )  # fmt: skip
        self.start_seconds = time.monotonic() - began
        log.info("redis-server %s started in %.3f s", self.workdir, self.start_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM redis-server and wait until it has exited; a no-op if not running.

        A paused server is continued first: a stopped process keeps SIGTERM
        pending and would only be killed after ``timeout``.
        """
        process = self._process
        if process is None:
            return
        if self._paused and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
        self._paused = False
        if self._reap(timeout):
            log.warning(
                "redis-server %s ignored SIGTERM for %.1f s; killed it", self.workdir, timeout
            )

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same port(s) and socket: the data is gone."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP the server: connections still succeed (the kernel accepts them
        into the backlog) but no command is answered, like a hung Redis."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"redis-server in {self.workdir} is not running")
        os.kill(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server; it then answers what queued up meanwhile."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"redis-server in {self.workdir} is not running")
        os.kill(pid, signal.SIGCONT)
        self._paused = False

    def __repr__(self) -> str:
        return (
            f"Redis({self.workdir}, pid={self.pid}, port={self._port}, "
            f"tls_port={self._tls_port}, unix_socket={self._unix_socket})"
        )

    # -- inspection ---------------------------------------------------------

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run one ``redis-cli`` command and return its output without the final newline.

        It connects over the Unix socket if there is one, else plain TCP,
        else TLS verified against ``ca_file``.  Output is redis-cli's raw
        form (one line per array element, ``""`` for a missing key).  An
        error reply raises RuntimeError: ``-e`` makes redis-cli exit 1 on it,
        otherwise it would print the error and exit 0.  The password goes in
        REDISCLI_AUTH, not ``-a``, so it is not on a command line.
        """
        argv = ["redis-cli", "-e"]
        if self._unix_socket:
            argv += ["-s", str(self.socket_path)]
        elif self._port is not None:
            argv += ["-h", LOOPBACK, "-p", str(self._port)]
        elif self._tls is not None:
            argv += ["-h", LOOPBACK, "-p", str(self._tls_port), "--tls"]
            argv += ["--cacert", str(self._tls.ca_cert)]
        env = {key: value for key, value in os.environ.items() if key != "REDISCLI_AUTH"}
        if self._password is not None:
            env["REDISCLI_AUTH"] = self._password
        result = subprocess.run(
            [*argv, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        out = result.stdout.decode("utf-8", "replace").removesuffix("\n")
        if result.returncode != 0:
            err = result.stderr.decode("utf-8", "replace").strip()
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {(out + ' ' + err).strip()}")
        return out


# Sentinel and service names are written unquoted into sentinel.conf.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _read_strings(stream: BinaryIO) -> list[str]:
    """One RESP2 reply that is an array of bulk strings (``SENTINEL MASTER``'s form).

    Anything else (an error, a nested array) raises OSError, which a
    readiness probe treats like no answer yet.
    """
    header = stream.readline()
    if not header.startswith(b"*"):
        raise OSError(f"unexpected reply {header[:80]!r}")
    out = []
    for _ in range(int(header[1:])):
        size = stream.readline()
        if not size.startswith(b"$"):
            raise OSError(f"unexpected element {size[:80]!r}")
        data = stream.read(int(size[1:]) + 2)
        out.append(data[:-2].decode("utf-8", "replace"))
    return out


class Sentinel(ChildLauncher):
    """One Redis Sentinel on 127.0.0.1 watching ``master`` as ``service``.

    It is Debian's redis-server in sentinel mode (``redis-server
    sentinel.conf --sentinel``, the same binary; the ``redis-sentinel``
    package only adds a symlink and a systemd unit), with a quorum of 1 so
    that one sentinel alone can fail over.  The master's password, if any,
    is given with ``sentinel auth-pass``; the sentinel itself has none
    (StateConfig has no setting for one).  It watches the master's plain TCP
    port, so the master must have one (not ``tls_only``).

    Layout of ``workdir``::

        sentinel.conf  generated on every start(); Sentinel rewrites it as it learns
        sentinel.log   its stdout and stderr

    start() returns once the sentinel has authenticated to the master and
    read its INFO (so a wrong auth-pass fails start() instead of the test
    that follows).  ``down_after`` and ``failover_timeout`` are short by
    default so that a failover test takes about a second, not minutes.
    """

    def __init__(
        self,
        workdir: Path,
        master: Redis,
        *,
        port: int | None = None,
        service: str = "mymaster",
        down_after: float = 1.0,
        failover_timeout: float = 5.0,
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        if not _SAFE_NAME.match(service):
            raise ValueError("service must be 1-64 characters of [A-Za-z0-9._-]")
        _ = master.port  # ValueError now for a tls_only master, which Sentinel cannot watch
        self.master = master
        self.service = service
        self._port = port if port is not None else free_port()
        self._down_after_ms = max(1, round(down_after * 1000))
        self._failover_timeout_ms = max(1, round(failover_timeout * 1000))
        self._process = None
        self.start_seconds: float | None = None
        """Wall time the last start() took until the sentinel had read the master's INFO."""

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as ``[state] sentinels`` lists it."""
        return f"{LOOPBACK}:{self._port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "sentinel.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sentinel.log"

    # -- configuration ------------------------------------------------------

    def config_text(self) -> str:
        """The sentinel.conf this instance writes on start()."""
        lines = [
            "# Generated by devstack.redis.Sentinel; Sentinel appends what it learns.",
            f"bind {LOOPBACK}",
            f"port {self._port}",
            "daemonize no",
            'logfile ""',
            "loglevel notice",
            f"dir {self.workdir}",
            # Quorum 1: this one sentinel may declare the master down and fail over.
            f"sentinel monitor {self.service} {LOOPBACK} {self.master.port} 1",
            f"sentinel down-after-milliseconds {self.service} {self._down_after_ms}",
            f"sentinel failover-timeout {self.service} {self._failover_timeout_ms}",
        ]
        if self.master.password is not None:
            lines.append(f"sentinel auth-pass {self.service} {self.master.password}")
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A fresh file each start: Sentinel's own additions (its id, epochs, replicas
        # seen) would otherwise carry a previous test's topology into the next.
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        # It holds the master's password; Sentinel must be able to rewrite it.
        self.config_path.chmod(0o600)

    # -- questions ----------------------------------------------------------

    def _ask(self, timeout: float, *command: str) -> list[str]:
        with socket.create_connection((LOOPBACK, self._port), timeout=timeout) as sock:
            sock.sendall(_command(*command))
            with sock.makefile("rb") as stream:
                return _read_strings(stream)

    def master_state(self, timeout: float = 1.0) -> dict[str, str]:
        """``SENTINEL MASTER service`` as a dict (``ip``, ``port``, ``flags``, ...)."""
        reply = self._ask(timeout, "SENTINEL", "MASTER", self.service)
        return dict(zip(reply[::2], reply[1::2], strict=True))

    def master_address(self, timeout: float = 1.0) -> tuple[str, int]:
        """Where the sentinel says the master is now (it changes after a failover)."""
        host, port = self._ask(timeout, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return host, int(port)

    def ready(self, timeout: float = 1.0) -> bool:
        """True once the sentinel is connected to the master, authenticated, and has its INFO.

        Before that ``flags`` says ``disconnected`` and ``info-refresh`` is 0; with a
        wrong auth-pass it stays so, and after ``down_after`` it says ``s_down``.
        """
        try:
            state = self.master_state(timeout)
        except (OSError, ValueError):
            return False
        flags = state.get("flags", "").split(",")
        return (
            "master" in flags
            and not {"disconnected", "s_down", "o_down"} & set(flags)
            and state.get("info-refresh", "0") != "0"
        )

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the sentinel and wait until it has read the (running) master's INFO."""
        self._refuse_if_running("sentinel")
        began = time.monotonic()
        self._prepare()
        self._spawn(
            ["redis-server", str(self.config_path), "--sentinel"], name="redis sentinel",
            output=self.log_path, append=True, ready=lambda t: self.ready(timeout=t),
            deadline=began + timeout, logs=(self.log_path, self.master.log_path), pause=0.01,
        )  # fmt: skip
        self.start_seconds = time.monotonic() - began
        log.info("redis sentinel %s started in %.3f s", self.workdir, self.start_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the sentinel and wait until it has exited; a no-op if not running."""
        if self._reap(timeout):
            log.warning(
                "redis sentinel %s ignored SIGTERM for %.1f s; killed it", self.workdir, timeout
            )

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run one ``redis-cli`` command against the sentinel (raw output, errors raise)."""
        result = subprocess.run(
            ["redis-cli", "-e", "-h", LOOPBACK, "-p", str(self._port), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        out = result.stdout.decode("utf-8", "replace").removesuffix("\n")
        if result.returncode != 0:
            err = result.stderr.decode("utf-8", "replace").strip()
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {(out + ' ' + err).strip()}")
        return out

    def __repr__(self) -> str:
        return f"Sentinel({self.workdir}, pid={self.pid}, port={self._port}, {self.service!r})"
