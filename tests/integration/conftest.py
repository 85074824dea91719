"""Session fixtures for integration tests: one real Dovecot (with a generated CA) and
one real ``saslimap serve`` in front of it, shared by every test that only reads, and
one real Redis for state shared between gateway hosts and one real PostgreSQL for the
quarantine, each started only when asked for."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.postgres import Postgres
from devstack.redis import Redis
from devstack.tls import TlsFiles, make_tls

# Users with the passwords the issue names as hard: spaces, quotes, backslashes,
# %, IMAP literal syntax, non-ASCII, and 200 characters.
USERS: dict[str, str] = {
    "alice@example.com": "alice pw",
    "bob@example.com": "bob-secret",
    "spaces@example.com": "  two  spaces  ",
    "quotes@example.com": "say \"hello\" 'there'",
    "backslash@example.com": "back\\slash\\\\",
    "percent@example.com": "100% %s %n %d",
    "braces@example.com": "{3}\r\n"[:3] + "{3} {10+} }{",
    "unicode@example.com": "pässwörd ünïcødé 密码 🔑",
    "long@example.com": ("Long-Pw_" * 25)[:200],
    "mix@example.com": 'a "b" \\c {3} 100% ü',
    "plain": "bare name pw",
}
HARD = [u for u in USERS if u not in ("plain",)]


def eventually(read: Callable[[], str], needle: str, timeout: float = 5.0) -> str:
    """Wait until ``needle`` appears in what ``read`` returns (logs are written a moment
    after the event: saslimap and mail-filter flush every 0.25 s, postlogd is asynchronous)."""
    deadline = time.monotonic() + timeout
    while needle not in (text := read()):
        assert time.monotonic() < deadline, f"{needle!r} never appeared"
        time.sleep(0.05)
    return text


def _short_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def workroot() -> Iterator[Path]:
    """A short private directory for every daemon of the session."""
    path = _short_dir("sg")
    yield path
    if os.environ.get("MAILGATE_KEEP_WORKROOT"):  # keep daemons' logs for a post-mortem
        print(f"daemon logs kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tls(workroot: Path) -> TlsFiles:
    """A generated CA and a server certificate for 127.0.0.1/localhost."""
    return make_tls(workroot / "tls")


@pytest.fixture(scope="session")
def dovecot(workroot: Path, tls: TlsFiles) -> Iterator[Dovecot]:
    """The session's internal IMAP server (never stopped by tests)."""
    server = Dovecot(workroot / "dovecot", USERS, tls=tls, fast_failures=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def daemon(workroot: Path, dovecot: Dovecot, tls: TlsFiles) -> Iterator[SaslimapDaemon]:
    """The real saslimap daemon, STARTTLS to the session Dovecot."""
    d = SaslimapDaemon(
        workroot / "saslimap",
        {"imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)}},
    )
    d.start()
    yield d
    assert 0 == d.stop()


@pytest.fixture(scope="session")
def redis_server(workroot: Path, tls: TlsFiles) -> Iterator[Redis]:
    """The session's Redis: TCP (``url``), Unix socket (``unix_url``) and TLS (``tls_url``,
    verify with ``ca_file``), all behind a random password (``password``, ``password_file``).

    It is shared: use a database number or key prefix of your own.  A test that
    pauses, stops or restarts it resumes or starts it again before it ends
    (``restart()`` leaves it running, and empty).
    """
    # token_urlsafe: [A-Za-z0-9_-], safe in redis.conf and SpamAssassin's bayes_sql_dsn.
    server = Redis(
        workroot / "redis", unix_socket=True, password=secrets.token_urlsafe(18), tls=tls
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(workroot: Path, tls: TlsFiles) -> Iterator[Postgres]:
    """The session's PostgreSQL: one superuser role behind a random password (``password``,
    ``password_file``), TCP on loopback with TLS (verify with ``ca_file``), database ``url``.

    It is shared: a test that wants an empty database makes its own
    (``create_database``) and drops it.  A test that stops it starts it again.
    """
    # token_urlsafe: [A-Za-z0-9_-], safe in a conninfo string unquoted.
    server = Postgres(workroot / "pg", password=secrets.token_urlsafe(18), tls=tls)
    server.start()
    yield server
    server.stop()
