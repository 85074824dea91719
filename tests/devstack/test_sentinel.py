"""The devstack Sentinel launcher: Debian's redis-server in sentinel mode, watching a real
password-protected redis-server, asked with redis-py as a gateway host would."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.sentinel

from devstack.redis import Redis, Sentinel
from devstack.tls import make_tls

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or any(shutil.which(t) is None for t in ("redis-server", "redis-cli")),
        reason="needs root and Debian's redis-server and redis-tools",
    ),
]

PASSWORD = "sentinel-master.pw"


@pytest.fixture(scope="module")
def master(root: Path) -> Iterator[Redis]:
    """The watched redis-server, with a password."""
    with Redis(root / "master", password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def sentinel(root: Path, master: Redis) -> Iterator[Sentinel]:
    """One sentinel watching ``master`` as "gw"."""
    with Sentinel(root / "sentinel", master, service="gw") as s:
        yield s


def test_the_sentinel_names_the_master(sentinel: Sentinel, master: Redis) -> None:
    """GET-MASTER-ADDR-BY-NAME answers the master's loopback address and port."""
    assert (master.host, master.port) == sentinel.master_address()
    assert f"127.0.0.1:{sentinel.port}" == sentinel.address


def test_start_waits_until_the_master_is_authenticated_and_read(sentinel: Sentinel) -> None:
    """start() returned only after the sentinel read the master's INFO with auth-pass."""
    state = sentinel.master_state()
    assert "master" == state["flags"]
    assert "0" != state["info-refresh"]
    assert "master" == state["role-reported"]
    assert sentinel.start_seconds is not None
    assert sentinel.start_seconds < 2.0


def test_redis_py_finds_and_uses_the_master_through_it(sentinel: Sentinel, master: Redis) -> None:
    """redis-py's Sentinel client resolves "gw" and writes to the master with its password."""
    nodes = redis.sentinel.Sentinel([(sentinel.host, sentinel.port)], socket_timeout=2.0)
    client = nodes.master_for("gw", password=PASSWORD, socket_timeout=2.0)
    try:
        assert client.set("devstack:sentinel", "via sentinel")
    finally:
        client.close()
    assert "via sentinel" == master.cli("GET", "devstack:sentinel")


def test_cli_asks_the_sentinel(sentinel: Sentinel) -> None:
    """cli() talks to the sentinel, not to the master."""
    assert "gw" in sentinel.cli("SENTINEL", "MASTERS").splitlines()


def test_a_wrong_auth_pass_fails_start(root: Path, master: Redis) -> None:
    """A sentinel that cannot authenticate to the master never becomes ready: start() says
    so (with the logs) rather than leaving the test after it to find out."""
    liar = Redis(root / "liar", port=master.port, password="not-the-password")
    s = Sentinel(root / "wrong", liar)
    with pytest.raises(TimeoutError, match="did not answer"):
        s.start(timeout=0.5)
    assert s.pid is None


def test_restart_forgets_what_the_sentinel_learned(root: Path, master: Redis) -> None:
    """start() writes sentinel.conf afresh: no topology from a previous run carries over."""
    s = Sentinel(root / "again", master)
    with s:
        assert "sentinel myid" in s.config_path.read_text()  # Sentinel wrote what it learned
    with s:
        assert (master.host, master.port) == s.master_address()
    assert s.pid is None


def test_stop_is_a_clean_shutdown(root: Path, master: Redis) -> None:
    """SIGTERM ends the sentinel; stop() waits for it."""
    s = Sentinel(root / "stop", master)
    s.start()
    pid = s.pid
    s.stop()
    assert pid is not None
    assert s.pid is None
    assert "ready to exit" in s.log_path.read_text()


def test_unusable_settings_are_refused(root: Path) -> None:
    """A TLS-only master (no plain port to watch) or a service name sentinel.conf would
    split is a ValueError at once."""
    tls_only = Redis(root / "tls-only", tls=make_tls(root / "tls"), tls_only=True)
    with pytest.raises(ValueError, match="no plain TCP listener"):
        Sentinel(root / "s1", tls_only)
    with pytest.raises(ValueError, match="service"):
        Sentinel(root / "s2", Redis(root / "m2"), service="my master")
