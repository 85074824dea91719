"""The devstack Redis launcher against Debian's real redis-server, spoken to with redis-py.

One server with every listener (TCP, Unix socket, TLS) and a password is
shared by the module; tests that restart, pause or stop a server get one of
their own, since redis-server starts in a few milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
import redis.exceptions

from devstack.redis import Redis
from devstack.tls import TlsFiles, make_tls

_TOOLS = ("redis-server", "redis-cli", "openssl")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or any(shutil.which(tool) is None for tool in _TOOLS),
        reason="needs root and Debian's redis-server, redis-tools, openssl",
    ),
]

PASSWORD = "devstack-Redis.pw_7~+/="


@pytest.fixture(scope="module")
def tls(root: Path) -> TlsFiles:
    """A generated CA and a certificate for 127.0.0.1."""
    return make_tls(root / "tls")


@pytest.fixture(scope="module")
def server(root: Path, tls: TlsFiles) -> Iterator[Redis]:
    """One redis-server on TCP, a Unix socket and TLS, with a password."""
    with Redis(root / "all", unix_socket=True, password=PASSWORD, tls=tls) as daemon:
        yield daemon


@pytest.fixture
def fresh(root: Path) -> Iterator[Redis]:
    """A passwordless redis-server of the test's own, to restart, pause or stop."""
    with Redis(Path(tempfile.mkdtemp(prefix="f", dir=root)), unix_socket=True) as daemon:
        yield daemon


# -- listeners ------------------------------------------------------------------


async def test_tcp_url_answers_with_the_password(server: Redis) -> None:
    """redis.asyncio.from_url(url, password=...) stores and reads back a value over TCP."""
    async with redis.asyncio.from_url(server.url, password=PASSWORD) as client:
        assert await client.set("devstack:tcp", "one")
        assert b"one" == await client.get("devstack:tcp")


async def test_unix_url_reaches_the_same_data(server: Redis) -> None:
    """The Unix socket is the same server: a key set over TCP is read over the socket."""
    async with redis.asyncio.from_url(server.url, password=PASSWORD) as tcp:
        await tcp.set("devstack:shared", "both")
    async with redis.asyncio.from_url(server.unix_url, password=PASSWORD) as unix:
        assert b"both" == await unix.get("devstack:shared")


def test_unix_socket_is_open_to_unprivileged_users(server: Redis) -> None:
    """The socket is mode 0777, so spamd's debian-spamd children can connect to it."""
    assert 0o777 == stat.S_IMODE(server.socket_path.stat().st_mode)


async def test_tls_url_verified_against_the_ca(server: Redis) -> None:
    """rediss:// with ssl_ca_certs=ca_file passes certificate and host name checks."""
    assert server.ca_file is not None
    async with redis.asyncio.from_url(
        server.tls_url, password=PASSWORD, ssl_ca_certs=str(server.ca_file)
    ) as client:
        assert await client.ping()


async def test_tls_refused_without_the_ca(server: Redis) -> None:
    """A client trusting only the system CAs does not accept the devstack certificate."""
    async with redis.asyncio.from_url(server.tls_url, password=PASSWORD, retry=None) as client:
        with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()


def test_tls_only_server_has_no_plain_listener(root: Path, tls: TlsFiles) -> None:
    """tls_only writes 'port 0': no plain port to ask for, and cli() goes over TLS."""
    with Redis(root / "tlsonly", tls=tls, tls_only=True) as daemon:
        with pytest.raises(ValueError, match="no plain TCP listener"):
            _ = daemon.url
        assert "port 0\n" in daemon.config_text()
        assert "PONG" == daemon.cli("PING")


# -- password -------------------------------------------------------------------


async def test_commands_without_the_password_are_refused(server: Redis) -> None:
    """requirepass is on: a client without a password gets NOAUTH."""
    async with redis.asyncio.from_url(server.url) as client:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await client.get("devstack:tcp")


async def test_wrong_password_is_refused(server: Redis) -> None:
    """A wrong password fails AUTH when the connection is made."""
    async with redis.asyncio.from_url(server.url, password="not-it") as client:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await client.ping()


def test_password_file_holds_only_the_password(server: Redis) -> None:
    """password_file is the bare password (no newline), readable by its owner only."""
    assert server.password_file is not None
    assert PASSWORD == server.password_file.read_text(encoding="ascii")
    assert 0o600 == stat.S_IMODE(server.password_file.stat().st_mode)


def test_unsafe_password_is_rejected(root: Path) -> None:
    """A password SpamAssassin's DSN or redis.conf would split (';', spaces) is refused."""
    with pytest.raises(ValueError, match="password"):
        Redis(root / "bad", password="a;b c")


# -- cli ------------------------------------------------------------------------


def test_cli_sets_reads_and_lists_keys(server: Redis) -> None:
    """cli() authenticates by itself and returns redis-cli's raw output."""
    assert "OK" == server.cli("SET", "devstack:cli", "v1")
    assert "v1" == server.cli("GET", "devstack:cli")
    assert "" == server.cli("GET", "devstack:missing")
    assert "devstack:cli" in server.cli("KEYS", "devstack:*").splitlines()


def test_cli_raises_on_an_error_reply(server: Redis) -> None:
    """An error reply is an exception, not text that looks like a value."""
    with pytest.raises(RuntimeError, match="unknown command"):
        server.cli("NO-SUCH-COMMAND")


# -- life cycle -----------------------------------------------------------------


def test_restart_comes_back_empty_on_the_same_port_and_socket(fresh: Redis) -> None:
    """restart() keeps the addresses; with no persistence every key is gone."""
    fresh.cli("SET", "devstack:before", "1")
    url, socket_path, pid = fresh.url, fresh.socket_path, fresh.pid
    fresh.restart()
    assert pid != fresh.pid
    assert (url, socket_path) == (fresh.url, fresh.socket_path)
    assert "0" == fresh.cli("DBSIZE")


def test_nothing_is_written_to_disk(fresh: Redis) -> None:
    """save "" and appendonly no: no dump.rdb or AOF appears, not even on shutdown."""
    fresh.cli("SET", "devstack:k", "v")
    fresh.stop()
    assert {"redis.conf", "redis.log"} == {p.name for p in fresh.workdir.iterdir()}


async def test_paused_server_answers_after_resume(fresh: Redis) -> None:
    """While paused a command gets no answer; after resume() it is answered."""
    async with redis.asyncio.from_url(fresh.url) as client:
        await client.set("devstack:p", "still here")
        fresh.pause()
        try:
            # ensure_future: redis-py types get() as an Awaitable, not a coroutine.
            pending = asyncio.ensure_future(client.get("devstack:p"))
            done, _ = await asyncio.wait({pending}, timeout=0.3)
            assert set() == done
            assert fresh.paused
        finally:
            fresh.resume()
        assert b"still here" == await pending


def test_paused_server_times_out_cli(fresh: Redis) -> None:
    """cli() against a paused server ends with its timeout instead of hanging."""
    fresh.pause()
    with pytest.raises(subprocess.TimeoutExpired):
        fresh.cli("PING", timeout=0.3)
    fresh.resume()
    assert "PONG" == fresh.cli("PING")


def test_stop_while_paused_is_a_clean_shutdown(fresh: Redis) -> None:
    """stop() continues a paused server, so it exits on SIGTERM rather than SIGKILL."""
    fresh.pause()
    fresh.stop()
    assert fresh.pid is None
    assert "ready to exit" in fresh.log_path.read_text(encoding="utf-8")


def test_verifying_ping_checks_every_listener(server: Redis) -> None:
    """ping() is True only when TCP, the socket and TLS all answer PONG after AUTH."""
    assert server.ping()


def test_tls_ping_with_the_wrong_ca_raises(root: Path, server: Redis) -> None:
    """A certificate the probe cannot verify is an error at once, not a retry."""
    other = make_tls(root / "other-ca")
    probe = Redis(
        server.workdir, password=PASSWORD, tls=other, tls_port=server.tls_port, tls_only=True
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        probe.ping(timeout=2.0)
