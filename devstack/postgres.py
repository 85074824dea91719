"""A real PostgreSQL server (Debian's postgresql 15) on loopback, for tests and benchmarks.

This module owns one throw-away cluster: ``initdb`` into ``workdir/data`` with
a superuser role and its password, the ``postgres`` process as our foreground
child (listening on 127.0.0.1 at a free port and on a Unix socket in
``workdir/run``, optionally with TLS), the database the tests use, and its
life cycle (start, stop, restart keeping the data, pause and resume to play a
hung server).

PostgreSQL refuses to run as root (initdb and postgres both exit with "cannot
be run as root"), and tests run as root here: the cluster's files are then
given to an unprivileged user (Debian's ``postgres`` if it exists, else
``nobody``) and both programs are started through ``setpriv``, which execs
them with that user's ids, so the process we hold is postgres itself and
stop() signals it directly (``runuser`` would stay in between as a parent).

Layout of ``workdir`` (keep it short: the Unix socket lives here)::

    data/          PGDATA (mode 0700, owned by the server's user)
    run/           unix_socket_directories: .s.PGSQL.<port>
    password       the role's password, mode 0600 (the client's password_file)
    initdb.log     initdb's output
    postgres.log   the server's log (stderr)
    tls/           the server's certificate and key, owned by the server's user
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from devstack.ports import LOOPBACK, free_port
from devstack.proc import (
    ChildLauncher,
    check_config_path,
    check_traversable,
    check_unix_path,
    child_pids,
    tail,
)
from devstack.tls import TlsFiles

__all__ = ["BIN", "Postgres"]

log = logging.getLogger(__name__)

BIN = Path("/usr/lib/postgresql/15/bin")
"""Where Debian's postgresql-15 keeps initdb and postgres (not on PATH)."""

# Role and database names go into SQL unquoted (CREATE DATABASE has no parameters).
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The password is also written into conninfo strings by tests: no quoting needed.
_SAFE_PASSWORD = re.compile(r"^[A-Za-z0-9._~+/=-]{1,512}$")


def _default_user() -> str | None:
    """Who the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


class Postgres(ChildLauncher):
    """One PostgreSQL cluster on 127.0.0.1 with one role (a superuser) and one database.

    ``password`` protects the role (scram-sha-256 over TCP; the Unix socket
    trusts local connections, for the launcher's own set-up).  ``tls`` turns
    on ``ssl`` with the devstack certificate (valid for 127.0.0.1), so clients
    can use ``sslmode=verify-full`` with ``ca_file``.  ``fsync=False`` (the
    default) makes tests fast; a benchmark of durable commits passes True.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        user: str = "mailgate",
        password: str = "mailgate-test",  # noqa: S107 - a throw-away test cluster
        database: str = "mailgate",
        tls: TlsFiles | None = None,
        run_as: str | None = None,
        fsync: bool = False,
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        if not (_NAME.match(user) and _NAME.match(database)):
            raise ValueError("user and database must match [a-z_][a-z0-9_]*")
        if not _SAFE_PASSWORD.match(password):
            raise ValueError("password must be 1-512 characters of [A-Za-z0-9._~+/=-]")
        self.port = port if port is not None else free_port()
        check_unix_path(self.socket_dir / f".s.PGSQL.{self.port}.lock")
        self.user = user
        self.password = password
        self.database = database
        self._tls = tls
        self.run_as = run_as if run_as is not None else _default_user()
        self._fsync = fsync
        self._process = None
        self._paused = False
        self.start_seconds: float | None = None
        """Wall time the last start() took until the database answered."""

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def password_file(self) -> Path:
        """A file holding just the password (no newline), mode 0600."""
        return self.workdir / "password"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate that signed the server's certificate, or None without TLS."""
        return None if self._tls is None else self._tls.ca_cert

    @property
    def url(self) -> str:
        """``postgresql://USER@127.0.0.1:PORT/DB``, without the password."""
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{self.database}"

    def url_for(self, database: str) -> str:
        """Like :attr:`url`, for another database of this cluster."""
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{database}"

    # -- running as the server's user ---------------------------------------

    def _as_server(self, argv: list[str]) -> list[str]:
        if self.run_as is None:
            return argv
        # --init-groups: the user's own groups, not root's; setpriv execs, no parent left.
        return ["setpriv", f"--reuid={self.run_as}", f"--regid={self.run_as}", "--init-groups",
                "--", *argv]  # fmt: skip

    def _give(self, path: Path) -> None:
        if self.run_as is not None:
            shutil.chown(path, self.run_as, self.run_as if self.run_as != "nobody" else None)

    # -- set-up -------------------------------------------------------------

    def _write_password(self) -> None:
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(self.password)

    def _initdb(self) -> None:
        """Create the cluster (once): the role with its password, scram over TCP."""
        self.data_dir.mkdir(mode=0o700)
        self._give(self.data_dir)
        # initdb reads the password as the server's user: a copy it may read, removed after.
        pwfile = self.workdir / "initdb-password"
        pwfile.write_text(self.password, encoding="ascii")
        pwfile.chmod(0o600)
        self._give(pwfile)
        argv = [
            str(BIN / "initdb"), "-D", str(self.data_dir), "-U", self.user,
            f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        ]  # fmt: skip
        try:
            with (self.workdir / "initdb.log").open("wb") as out:
                done = subprocess.run(
                    self._as_server(argv), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, timeout=120, check=False,
                )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{tail(self.workdir / 'initdb.log')}")

    def _prepare(self) -> None:
        if self.run_as is not None:
            check_traversable(self.workdir.parent)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # the server's user must reach data/ and run/
        self._write_password()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self.socket_dir.mkdir(exist_ok=True)
        self._give(self.socket_dir)
        if self._tls is not None:
            # postgres refuses a key readable by others or not owned by its user.
            tls_dir = self.workdir / "tls"
            tls_dir.mkdir(exist_ok=True)
            for source, name in ((self._tls.cert, "server.crt"), (self._tls.key, "server.key")):
                shutil.copyfile(source, tls_dir / name)
                (tls_dir / name).chmod(0o600)
                self._give(tls_dir / name)

    def _settings(self) -> list[str]:
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "on" if self._fsync else "off",
            "full_page_writes": "on" if self._fsync else "off",
            # Logs go to stderr (our log file); no collector process.
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        if self._tls is not None:
            settings |= {
                "ssl": "on",
                "ssl_cert_file": str(self.workdir / "tls" / "server.crt"),
                "ssl_key_file": str(self.workdir / "tls" / "server.key"),
            }
        return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

    # -- life cycle ---------------------------------------------------------

    def _connect(self, dbname: str, timeout: float) -> psycopg.Connection[tuple[object, ...]]:
        # Over the Unix socket (trusted): no password in the launcher's own connections.
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=self.user, dbname=dbname,
            connect_timeout=max(2, int(timeout)), autocommit=True,
        )  # fmt: skip

    def ready(self, timeout: float = 1.0) -> bool:
        """True once the server accepts a connection to its ``postgres`` database."""
        try:
            with self._connect("postgres", timeout) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def start(self, timeout: float = 60.0) -> None:
        """initdb (the first time), start postgres, wait until it answers, create the database."""
        self._refuse_if_running("postgres")
        began = time.monotonic()
        self._prepare()
        argv = [str(BIN / "postgres"), "-D", str(self.data_dir), *self._settings()]
        self._spawn(
            self._as_server(argv), name="postgres", output=self.log_path, append=True,
            ready=lambda t: self.ready(timeout=t), deadline=began + timeout,
            logs=(self.log_path,), pause=0.05,
        )  # fmt: skip
        self.create_database(self.database)
        self.start_seconds = time.monotonic() - began
        log.info("postgres %s started in %.3f s", self.workdir, self.start_seconds)

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists."""
        if not _NAME.match(name):
            raise ValueError("database names must match [a-z_][a-z0-9_]*")
        with self._connect("postgres", 10.0) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            conn.execute(f"CREATE DATABASE {name}")  # checked above; no parameters here

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (closing its connections) if it exists."""
        if not _NAME.match(name):
            raise ValueError("database names must match [a-z_][a-z0-9_]*")
        with self._connect("postgres", 10.0) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: ends sessions, checkpoints) and wait; a no-op if not running.

        SIGTERM would be "smart" shutdown, which waits for every client to leave.
        """
        process = self._process
        if process is None:
            return
        if self._paused and process.poll() is None:
            self.resume()  # a stopped process keeps SIGINT pending
        if process.poll() is None:
            os.kill(process.pid, signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "postgres %s ignored SIGINT for %.1f s; killed it", self.workdir, timeout
                )
        self._reap(1.0)

    def _cluster_pids(self) -> list[int]:
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"postgres in {self.workdir} is not running")
        return [pid, *child_pids(pid)]

    def pause(self) -> None:
        """SIGSTOP the server and every backend: connections are still accepted by the
        kernel, nothing is answered, and keepalives are still acknowledged (a hung server)."""
        for pid in self._cluster_pids():
            os.kill(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server; it answers what queued up meanwhile."""
        for pid in self._cluster_pids():
            os.kill(pid, signal.SIGCONT)
        self._paused = False

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again on the same port: the data is kept."""
        self.stop()
        self.start(timeout)

    def __repr__(self) -> str:
        return f"Postgres({self.workdir}, pid={self.pid}, port={self.port}, run_as={self.run_as})"
