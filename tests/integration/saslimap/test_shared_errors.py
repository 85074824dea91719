"""saslimap's hosts while their real redis-server answers, but with errors.

Redis up and answering PING, yet refusing what the hosts ask: a read-only
replica (a master demoted, or a replicaof left in a config), NOREPLICAS
(``min-replicas-to-write`` unmet) or an ACL that no longer lets the hosts'
user run scripts.  Throughout: no wrong password is ever OK, checks are answered
from each host's own memory (each its own budget), one warning per host for
the whole episode rather than one per probe, and sharing resumes by itself once
the condition is lifted.  Redis out of memory is not among them: see the last
test.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.redis import Redis
from mailgate.config import StateConfig
from saslimap.service import Verdict
from tests.fakes import FakeBackend
from tests.integration.saslimap.sharedhosts import (
    PW,
    USER,
    close_hosts,
    make_hosts,
    until,
)

pytestmark = pytest.mark.integration

BOB, CAROL = "bob@example.com", "carol@example.com"
USERS = {USER: PW, BOB: "bob pw", CAROL: "carol pw"}
GW_PASSWORD = "gateway-acl-user.pw"
_prefixes = itertools.count()


@pytest.fixture
def redis(workroot: Path) -> Iterator[Redis]:
    """A redis-server of the test's own (each test breaks it), with an ACL user "gw" for
    the hosts, allowed everything until a test says otherwise."""
    server = Redis(workroot / f"err{next(_prefixes)}", password="admin-pw")
    with server:
        server.cli("ACL", "SETUSER", "gw", "on", f">{GW_PASSWORD}", "~*", "&*", "+@all")
        yield server


@dataclass(frozen=True)
class Fault:
    """How to make Redis refuse the hosts' scripts, and how to lift it again."""

    name: str
    on: tuple[str, ...]
    off: tuple[str, ...]
    says: str  # in the warning: Redis's own reason


FAULTS = [
    Fault("read-only replica", ("REPLICAOF", "127.0.0.1", "{port}"), ("REPLICAOF", "NO", "ONE"),
          "read only replica"),
    Fault("no good replicas", ("CONFIG", "SET", "min-replicas-to-write", "1"),
          ("CONFIG", "SET", "min-replicas-to-write", "0"), "Not enough good replicas"),
    Fault("ACL without scripts", ("ACL", "SETUSER", "gw", "-evalsha", "-eval"),
          ("ACL", "SETUSER", "gw", "+evalsha", "+eval"), "no permissions"),
]  # fmt: skip


def _config(redis: Redis, secret_file: Path, tmp: Path) -> StateConfig:
    password = tmp / "gw-password"
    password.write_text(GW_PASSWORD)
    return StateConfig(
        url=f"redis://gw@127.0.0.1:{redis.port}/0", password_file=password,
        secret_file=secret_file, key_prefix="err:", timeout=0.5, retry_interval=0.1,
    )  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_redis_answering_errors(
    fault: Fault,
    redis: Redis,
    secret_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No wrong OK, answers from local memory, one warning per host however long the
    errors last and however often the store is probed, then sharing again by itself."""
    imap = FakeBackend(USERS)
    a, b = await make_hosts(_config(redis, secret_file, tmp_path), imap)
    try:
        assert Verdict.OK == await a.check(PW)
        with caplog.at_level(logging.INFO, logger="mailgate.state"):
            caplog.clear()  # the start's lines (captured when an earlier test set INFO)
            redis.cli(*(p.format(port=free_port()) for p in fault.on))
            answers = [await (a, b)[n % 2].check(f"guess {n}", BOB) for n in range(40)]
            assert Verdict.OK == await a.check(PW)  # a's own cache
            assert Verdict.OK == await b.check(PW)
            assert Verdict.NO == await b.check("not alice's")
            for n in range(12):  # a dozen probe intervals, checks on both hosts meanwhile
                await asyncio.sleep(0.05)
                answers.append(await (a, b)[n % 2].check(f"later guess {n}", BOB))
            assert not a.state.up
            assert not b.state.up
            assert Verdict.OK not in answers
            assert len([u for u in imap.calls if u == BOB]) <= 2 * 10  # each host's own budget
            during = list(caplog.records)
            redis.cli(*fault.off)
            await until("both hosts share again", lambda: a.state.up and b.state.up)
        warnings = [r.getMessage() for r in during if r.levelno >= logging.WARNING]
        assert 2 == len(warnings), warnings  # one per host for the whole episode
        assert all(fault.says in w for w in warnings), warnings
        assert not [r for r in during if "available: limits" in r.getMessage()]  # no flapping
        calls = len(imap.calls)
        assert Verdict.OK == await a.check("carol pw", CAROL)
        assert Verdict.OK == await b.check("carol pw", CAROL)  # a's login, shared
        assert calls + 1 == len(imap.calls)
    finally:
        await close_hosts([a, b])


async def test_redis_out_of_memory_does_not_stop_the_sharing(
    redis: Redis, secret_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """maxmemory reached with noeviction refuses SET, yet every saslimap script still runs:
    Redis lets a script that has already written go on (scripts without flags are checked
    at their first write), and each of ours first writes with a ZREM or ZREMRANGEBYSCORE,
    which frees memory and is never refused.  So the budget stays shared and no warning
    is logged: the hosts' keys grow past maxmemory instead."""
    imap = FakeBackend(USERS)
    a, b = await make_hosts(_config(redis, secret_file, tmp_path), imap)
    try:
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.cli("CONFIG", "SET", "maxmemory", "1")
        with pytest.raises(RuntimeError, match="OOM"):
            redis.cli("SET", "err:plain", "refused")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mailgate.state"):
            answers = [await (a, b)[n % 2].check(f"guess {n}", BOB) for n in range(40)]
            assert Verdict.OK == await a.check(PW)
            assert Verdict.OK == await b.check(PW)
        assert Verdict.OK not in answers
        assert [BOB] * 10 + [USER] == imap.calls  # one budget for both hosts, one login
        assert a.state.up
        assert b.state.up
        assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        redis.cli("CONFIG", "SET", "maxmemory", "0")
        await close_hosts([a, b])
