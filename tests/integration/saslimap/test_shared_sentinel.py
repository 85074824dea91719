"""saslimap's shared state found through a real Redis Sentinel (``[state] sentinels``).

One password-protected redis-server watched by one sentinel (Debian's
redis-server in sentinel mode): two hosts' authenticators find the master by
asking the sentinel and share their caches and budgets there, the blocking
client finds it the same way, and a failover moves both hosts to the new
master by themselves.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.sentinel import MasterNotFoundError

from devstack.redis import Redis, Sentinel
from mailgate.config import StateConfig
from mailgate.state import sync_client
from saslimap.service import Verdict
from tests.fakes import FakeBackend
from tests.integration.saslimap.sharedhosts import (
    PW,
    USER,
    Host,
    close_hosts,
    make_hosts,
    until,
)

pytestmark = pytest.mark.integration

SERVICE = "gateways"
PASSWORD = "sentinel-group.pw"
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def master(workroot: Path) -> Iterator[Redis]:
    """The master, behind a password (which the sentinel knows by auth-pass)."""
    with Redis(workroot / "snt-master", password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def sentinel(workroot: Path, master: Redis) -> Iterator[Sentinel]:
    """One sentinel watching ``master`` as SERVICE."""
    with Sentinel(workroot / "snt-sentinel", master, service=SERVICE) as s:
        yield s


def _config(sentinel: Sentinel, master: Redis, secret_file: Path) -> StateConfig:
    return StateConfig(
        sentinels=(sentinel.address,), sentinel_service=sentinel.service,
        password_file=master.password_file, secret_file=secret_file,
        key_prefix=f"snt{next(_prefixes)}:", timeout=0.5, retry_interval=0.1,
    )  # fmt: skip


@pytest.fixture
async def hosts(
    sentinel: Sentinel, master: Redis, secret_file: Path
) -> AsyncIterator[tuple[Host, Host, FakeBackend]]:
    """Two hosts configured with only the sentinel's address, one fake IMAP server."""
    backend = FakeBackend({USER: PW})
    made = await make_hosts(_config(sentinel, master, secret_file), backend)
    yield made[0], made[1], backend
    await close_hosts(made)


async def test_hosts_find_the_master_through_the_sentinel_and_share(
    hosts: tuple[Host, Host, FakeBackend], master: Redis
) -> None:
    """A password verified through host A is a hit on host B, a wrong one is remembered,
    and the keys are on the master the sentinel named."""
    a, b, imap = hosts
    assert Verdict.OK == await a.check(PW)
    assert Verdict.OK == await b.check(PW)
    assert Verdict.NO == await a.check("wrong")
    assert Verdict.NO == await b.check("wrong")
    assert [USER, USER] == imap.calls
    assert master.cli("KEYS", f"{a.state.prefix}sasl:u:*").splitlines()
    assert f"sentinel {SERVICE} via 127.0.0.1:" in a.state.where


async def test_the_shared_budget_holds_through_the_sentinel(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """60 distinct guesses alternating between the hosts: the budget (10) reach IMAP."""
    a, b, imap = hosts
    answers = [await (a, b)[n % 2].check(f"guess {n}") for n in range(60)]
    assert Verdict.OK not in answers
    assert 10 == len(imap.calls)


def test_the_blocking_client_finds_the_master_through_the_sentinel(
    sentinel: Sentinel, master: Redis, secret_file: Path
) -> None:
    """sync_client (mail-filter learn's) with sentinels writes to the master, with the
    password from password_file."""
    client = sync_client(_config(sentinel, master, secret_file), timeout=2.0)
    try:
        assert client.set("snt:sync", "through the sentinel")
    finally:
        client.close()
    assert "through the sentinel" == master.cli("GET", "snt:sync")


def test_the_blocking_client_without_a_sentinel_fails_within_its_timeout(
    workroot: Path, master: Redis, secret_file: Path
) -> None:
    """No sentinel answers at the configured address: an error at once, not a hang."""
    nobody = Sentinel(workroot / "snt-nobody", master)  # never started: nothing listens
    cfg = StateConfig(
        sentinels=(nobody.address,), sentinel_service=SERVICE,
        password_file=master.password_file, secret_file=secret_file,
    )  # fmt: skip
    client = sync_client(cfg, timeout=0.5)
    began = time.monotonic()
    try:
        with pytest.raises(MasterNotFoundError):
            client.ping()
    finally:
        client.close()
    assert time.monotonic() - began < 2.0


def _clients(s: Sentinel) -> int:
    """Connections the sentinel has open (redis-cli's own included)."""
    info = dict(line.split(":", 1) for line in s.cli("INFO", "clients").splitlines() if ":" in line)
    return int(info["connected_clients"])


async def test_closing_the_state_closes_its_connections_to_the_sentinel(
    workroot: Path, master: Redis, secret_file: Path
) -> None:
    """close() also ends the connections to the sentinel, which redis-py's master client
    does not own: a daemon would otherwise keep one per sentinel for each SIGHUP that
    changes [state], and saslimap flush would leave them to the garbage collector."""
    with Sentinel(workroot / "snt-close", master, service=SERVICE) as own:
        alone = _clients(own)  # redis-cli's own connection: nobody else uses this sentinel
        [host] = await make_hosts(_config(own, master, secret_file), FakeBackend(), count=1)
        try:
            assert alone < _clients(own)
        finally:
            await close_hosts([host])
        await until("no connection left", lambda: alone == _clients(own), 2.0)


# -- failover --------------------------------------------------------------------


@pytest.fixture
def pair(workroot: Path) -> Iterator[tuple[Redis, Redis, Sentinel]]:
    """A master, its replica (replicating, same password) and a quick sentinel that has
    seen both: a topology of the test's own, since a failover changes it."""
    first = Redis(workroot / "fo-a", password=PASSWORD)
    second = Redis(workroot / "fo-b", password=PASSWORD)
    s = Sentinel(workroot / "fo-s", first, service=SERVICE, down_after=0.2, failover_timeout=2)
    with first, second:
        # Diskless sync, at once (the default waits 5 s for more replicas to join).
        first.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")
        second.cli("CONFIG", "SET", "masterauth", PASSWORD)
        second.cli("REPLICAOF", first.host, str(first.port))
        deadline = time.monotonic() + 10
        while "master_link_status:up" not in second.cli("INFO", "replication"):
            assert time.monotonic() < deadline, "the replica never caught up"
            time.sleep(0.02)
        # Started after the replica is attached, so its first INFO of the master lists it
        # (the next one would be 10 s later).
        with s:
            yield first, second, s


def _replica_known(s: Sentinel) -> bool:
    lines = s.cli("SENTINEL", "REPLICAS", s.service).splitlines()
    fields = dict(zip(lines[::2], lines[1::2], strict=False))
    return fields.get("flags") == "slave" and fields.get("master-link-status") == "ok"


async def test_the_master_dies_and_both_hosts_follow_the_failover(
    pair: tuple[Redis, Redis, Sentinel], secret_file: Path
) -> None:
    """The master stopped: the hosts answer from their own memory (no wrong OK, cached
    users still OK) while the sentinel promotes the replica, then find the new master by
    asking the sentinel again, where what was shared before the failover still is."""
    first, second, s = pair
    imap = FakeBackend({USER: PW, "bob@example.com": "bob pw"})
    a, b = await make_hosts(_config(s, first, secret_file), imap)
    try:
        assert Verdict.OK == await a.check(PW)
        await until("the sentinel knows the replica", lambda: _replica_known(s))
        await until(
            "the entry is replicated", lambda: bool(second.cli("KEYS", f"{a.state.prefix}*"))
        )
        began = time.monotonic()
        first.stop()
        assert Verdict.OK == await a.check(PW)  # local hit: asks no one
        assert Verdict.NO == await a.check("wrong during failover")
        assert Verdict.NO == await b.check("wrong during failover 2")
        assert not a.state.up
        assert not b.state.up
        await until("the replica is promoted", lambda: s.master_address()[1] == second.port)
        await until("both hosts share again", lambda: a.state.up and b.state.up)
        failover = time.monotonic() - began
        calls = len(imap.calls)
        assert Verdict.OK == await b.check(PW)  # verified on A before the failover
        assert calls == len(imap.calls)
        assert Verdict.OK == await a.check("bob pw", "bob@example.com")
        assert Verdict.OK == await b.check("bob pw", "bob@example.com")
        assert calls + 1 == len(imap.calls)
        assert failover < 10.0
    finally:
        await close_hosts([a, b])
