"""Hostile cases for saslimap's shared state on a real redis-server (review of issue 16).

A Redis that answers PING but refuses every write, a Redis writer without the
shared secret, and a rejection the store missed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.redis import Redis
from mailgate.config import StateConfig
from mailgate.state import SharedState, load_secret
from saslimap.config import CacheConfig, IpLimitsConfig, LimitsConfig, UsersConfig
from saslimap.service import Authenticator, Verdict
from saslimap.shared import SharedChecks
from tests.fakes import FakeBackend
from tests.integration.saslimap.sharedhosts import PW, USER, Host, close_hosts, until

pytestmark = pytest.mark.integration

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A redis-server of this module's own (tests here make it refuse writes)."""
    with Redis(tmp_path_factory.mktemp("redis"), unix_socket=True) as r:
        yield r


MakeHost = Callable[..., Awaitable[Host]]


@pytest.fixture
async def make_host(redis: Redis, secret_file: Path) -> AsyncIterator[MakeHost]:
    """Build hosts on one fresh key prefix; closes them at the end."""
    made: list[Host] = []
    prefix = f"h{next(_prefixes)}:"

    async def make(
        backend: FakeBackend, url: str = "", deadline: float = 0.5,
        cache: CacheConfig | None = None, password_file: Path | None = None,
    ) -> Host:  # fmt: skip
        cfg = StateConfig(
            url=url or redis.unix_url, secret_file=secret_file, timeout=deadline,
            retry_interval=0.1, key_prefix=prefix, password_file=password_file,
        )  # fmt: skip
        state = SharedState(cfg, load_secret(secret_file))
        state.start()
        await until("the shared store comes up", lambda: state.up)
        limits = LimitsConfig(trickle_interval=0)
        cache = cache or CacheConfig()
        shared = SharedChecks(state, cache, limits, IpLimitsConfig(base_delay=0), 10.0)
        auth = Authenticator(
            UsersConfig(), backend, cache=cache, limits=limits,
            iplimits=IpLimitsConfig(base_delay=0), shared=shared,
        )  # fmt: skip
        host = Host(auth, state)
        made.append(host)
        return host

    yield make
    await close_hosts(made)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_redis_that_answers_ping_but_refuses_writes_is_one_warning(
    make_host: MakeHost, redis: Redis
) -> None:
    """A Redis that answers PING but refuses every write (a read-only replica, MISCONF
    on a full disk, OOM) is one outage: one warning, not one per retry_interval."""
    imap = FakeBackend({USER: PW})
    host = await make_host(imap)
    seen = _Records()
    logger = logging.getLogger("mailgate.state")
    logger.addHandler(seen)
    redis.cli("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
    try:
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 1.5:  # 15 retry intervals
            result = await host.auth.verify(f"user{n}@example.com", "x", "smtp")
            assert Verdict.OK is not result.verdict
            n += 1
            await asyncio.sleep(0.03)
    finally:
        redis.cli("REPLICAOF", "NO", "ONE")
        logger.removeHandler(seen)
    warnings = [r for r in seen.records if r.levelno >= logging.WARNING]
    assert 1 == len(warnings), [r.getMessage() for r in warnings]


async def test_a_redis_writer_without_the_secret_cannot_keep_an_entry_fresh(
    make_host: MakeHost, redis: Redis
) -> None:
    """Someone who can write to Redis but lacks the secret cannot keep a verified
    password fresh past ``ttl``: after the password changed, the old one is asked of
    IMAP (and refused), not answered OK from the shared cache for ever."""
    imap = FakeBackend({USER: PW})
    cache = CacheConfig(ttl=1.0, refresh_after=0.5, stale_if_error=0.0)
    a = await make_host(imap, cache=cache)
    b = await make_host(imap, cache=cache)
    assert Verdict.OK == (await a.auth.verify(USER, PW, "smtp")).verdict
    await a.state.settled()
    r = a.state.redis
    [pos] = [k async for k in r.scan_iter(match=a.state.prefix + "sasl:u:*:pos:*")]
    entry = await r.get(pos)
    assert isinstance(entry, bytes)
    digest, _at, mac = entry.split(b":")
    # The attacker: the same HMAC and MAC, a time far in the future, no expiry.
    future = str(int(time.time() * 1000) + 10**12).encode()
    await r.set(pos, b":".join((digest, future, mac)))
    imap.users[USER] = "the new password"
    await asyncio.sleep(1.2)  # past ttl (and past ttl + stale_if_error)
    result = await b.auth.verify(USER, PW, "smtp")
    assert Verdict.NO == result.verdict, result.source


async def test_a_password_this_host_saw_rejected_is_not_ok_from_a_stale_shared_entry(
    make_host: MakeHost,
) -> None:
    """A background re-verification here found the cached password rejected, and Redis
    missed being told: this host then answers that password as it would alone (asks
    IMAP: NO), not OK from the shared entry it knows is wrong."""
    imap = FakeBackend({USER: PW})
    cache = CacheConfig(ttl=30.0, refresh_after=0.1, stale_if_error=0.0)
    a = await make_host(imap, cache=cache)
    assert Verdict.OK == (await a.auth.verify(USER, PW, "smtp")).verdict
    imap.users[USER] = "the new password"  # the password changed on the IMAP server
    await asyncio.sleep(0.2)
    a.state.up = False  # Redis does not answer the refresh's "dropped" (a blip)
    assert Verdict.OK == (await a.auth.verify(USER, PW, "smtp")).verdict  # due: refreshed
    await asyncio.gather(*a.auth.background)
    assert a.auth.cache.lookup((USER, "", "smtp"), PW) is None  # dropped here
    a.state.up = True  # the blip is over
    result = await a.auth.verify(USER, PW, "smtp")
    assert Verdict.NO == result.verdict, result.source
