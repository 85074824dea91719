"""Two hosts' authenticators sharing one real redis-server: budgets, caches, per-IP limits.

The IMAP server here is a counting fake (the policy is what is under test); the
same behaviour through two real saslimap daemons and a real Dovecot is pinned in
test_shared_daemons.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devstack.redis import Redis
from mailgate.config import StateConfig
from saslimap.config import LimitsConfig, UsersConfig
from saslimap.service import Authenticator, Verdict
from saslimap.shared import flush
from tests.fakes import FakeBackend
from tests.integration.saslimap.sharedhosts import PW, USER, Host, close_hosts, make_hosts

pytestmark = pytest.mark.integration

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A redis-server of this module's own (tests here stop and pause it)."""
    with Redis(tmp_path_factory.mktemp("redis"), unix_socket=True) as r:
        yield r


@pytest.fixture
async def hosts(redis: Redis, secret_file: Path) -> AsyncIterator[tuple[Host, Host, FakeBackend]]:
    """Two hosts with a fresh key prefix, one fake IMAP server behind both."""
    if redis.paused:
        redis.resume()
    if not redis.ping():
        redis.start()
    cfg = StateConfig(
        url=redis.unix_url, secret_file=secret_file, timeout=0.5, retry_interval=0.1,
        key_prefix=f"t{next(_prefixes)}:",
    )  # fmt: skip
    backend = FakeBackend({USER: PW, "bob@example.com": "bob pw"})
    made = await make_hosts(cfg, backend)
    yield made[0], made[1], backend
    await close_hosts(made)


async def test_a_password_verified_on_one_host_is_a_hit_on_the_other(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """A success through host A answers host B's check with no IMAP login."""
    a, b, imap = hosts
    assert Verdict.OK == await a.check(PW)
    assert Verdict.OK == await b.check(PW)
    assert 1 == len(imap.calls)
    assert Verdict.OK == await b.check(PW)  # now from B's own cache
    assert 1 == len(imap.calls)


async def test_a_wrong_password_on_one_host_is_remembered_by_the_other(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """The negative cache is shared: the same wrong password on host B asks no one."""
    a, b, imap = hosts
    assert Verdict.NO == await a.check("wrong")
    assert Verdict.NO == await b.check("wrong")
    assert 1 == len(imap.calls)


async def test_guesses_alternating_between_hosts_reach_imap_at_most_the_budget(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """300 distinct wrong passwords, one host then the other: 10 reach IMAP in all, and
    the real user's verified password still works on both."""
    a, b, imap = hosts
    assert Verdict.OK == await a.check(PW)
    answers = [await (a, b)[n % 2].check(f"guess {n}") for n in range(300)]
    assert Verdict.OK not in answers
    assert 1 + 10 == len(imap.calls)
    assert Verdict.OK == await a.check(PW)
    assert Verdict.OK == await b.check(PW)


async def test_concurrent_guesses_on_two_hosts_cannot_both_spend_the_last_unit(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """100 guesses at once, half on each host, while IMAP is slow: at most the budget
    are asked (checks in flight count on both hosts)."""
    a, b, imap = hosts
    imap.delay = 0.05
    answers = await asyncio.gather(*((a, b)[n % 2].check(f"g{n}") for n in range(100)))
    assert Verdict.OK not in answers
    assert len(imap.calls) <= 10


async def test_held_guesses_are_try_later_until_a_password_is_known(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """Past the shared budget, a user with no known password gets "try later", never NO
    (an attacker cannot get the real user refused or banned)."""
    a, b, _imap = hosts
    for n in range(10):
        await a.check(f"g{n}")
    assert Verdict.TEMPFAIL == await b.check("one more guess")
    assert Verdict.TEMPFAIL == await b.check(PW)  # the real user: slowed, never refused


async def test_the_per_ip_budget_is_shared(hosts: tuple[Host, Host, FakeBackend]) -> None:
    """Distinct (user, password) pairs from one address, alternating hosts: the address's
    budget (30) counts both hosts' failures."""
    a, b, imap = hosts
    for n in range(60):
        host = (a, b)[n % 2]
        result, _delay = await host.auth.verify_client(
            f"u{n}@example.com", "x", "smtp", "192.0.2.9"
        )
        assert Verdict.OK is not result.verdict
    assert 30 == len(imap.calls)


async def test_a_success_exempts_the_address_on_every_host(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """A right password from an address through host A exempts it on host B too: B's
    failures from it are not limited (without sharing, B would stop at 30)."""
    a, b, imap = hosts
    ok, _ = await a.auth.verify_client(USER, PW, "smtp", "192.0.2.10")
    assert Verdict.OK == ok.verdict
    await a.state.settled()
    for n in range(40):
        result, _ = await b.auth.verify_client(f"u{n}@example.com", "x", "smtp", "192.0.2.10")
        assert Verdict.NO == result.verdict
    assert 1 + 40 == len(imap.calls)


async def test_nothing_in_redis_names_a_user_or_holds_a_password(
    hosts: tuple[Host, Host, FakeBackend], redis: Redis
) -> None:
    """Keys and values are HMACs and times: no user name, no password, in any form."""
    a, b, _imap = hosts
    await a.check(PW)
    await b.check("wrong one")
    await a.auth.verify_client(USER, "wrong two", "smtp", "192.0.2.11")
    r = a.state.redis
    keys = [k async for k in r.scan_iter(match=a.state.prefix + "*")]
    assert keys
    parts: list[object] = list(keys)
    for k in keys:
        kind = str(await r.type(k))
        if "string" in kind:
            parts.append(await r.get(k))
        elif "zset" in kind:
            parts += list(await r.zrange(k, 0, -1))
    dump = b"".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    for secret in (USER, "alice", PW, "wrong one", "wrong two"):
        assert secret.encode() not in dump
        assert secret.encode().hex().encode() not in dump


async def test_flush_of_one_user_frees_their_budget_on_every_host(
    hosts: tuple[Host, Host, FakeBackend],
) -> None:
    """``flush --user`` deletes the user's shared keys: their next check reaches IMAP."""
    a, b, imap = hosts
    for n in range(10):
        await a.check(f"g{n}")
    assert 0 < await flush(a.state, LimitsConfig(), user=USER.upper())  # as Dovecot folds it
    a.auth.close()
    fresh = Authenticator(
        UsersConfig(), imap, limits=LimitsConfig(trickle_interval=0), shared=b.auth.shared
    )
    assert Verdict.OK == (await fresh.verify(USER, PW, "smtp")).verdict


async def test_redis_down_then_back(hosts: tuple[Host, Host, FakeBackend], redis: Redis) -> None:
    """Redis stopped: cache hits still answer, wrong passwords are never OK, each host
    decides alone; Redis back (empty): sharing resumes by itself."""
    a, b, imap = hosts
    assert Verdict.OK == await a.check(PW)
    redis.stop()
    assert Verdict.OK == await a.check(PW)  # a local hit: never waits for Redis
    assert Verdict.NO == await b.check("wrong")
    assert Verdict.OK == await b.check(PW)  # asked IMAP itself
    assert not (a.state.up and b.state.up)
    redis.start()
    for _ in range(200):
        if a.state.up and b.state.up:
            break
        await a.check("probe")  # a failed call starts the probe
        await b.check("probe")
        await asyncio.sleep(0.05)
    assert a.state.up
    assert b.state.up
    calls = len(imap.calls)
    assert Verdict.OK == await a.check("bob pw", "bob@example.com")
    assert Verdict.OK == await b.check("bob pw", "bob@example.com")
    assert calls + 1 == len(imap.calls)


async def test_a_paused_redis_costs_each_check_at_most_the_deadline(
    hosts: tuple[Host, Host, FakeBackend], redis: Redis
) -> None:
    """Redis hung (SIGSTOP): the first check waits out the state deadline, then the host
    stops asking until Redis answers again; every check still gets IMAP's verdict."""
    a, _b, imap = hosts
    redis.pause()
    try:
        answers = [await a.check(f"guess {n}", "bob@example.com") for n in range(5)]
        answers.append(await a.check("bob pw", "bob@example.com"))
        assert not a.state.up
    finally:
        redis.resume()
    assert [Verdict.NO] * 5 + [Verdict.OK] == answers
    assert 6 == len(imap.calls)
