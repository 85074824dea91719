"""Two gateway hosts' spamd sharing one Bayes database in a real Redis, through the shipped
conf/spamassassin/bayes-redis.cf: what one host learns, the other counts and scores with.

Host 1 reaches Redis over TCP, host 2 over its Unix socket (both forms of
``server=``), both with the password.  A third spamd points at a port where
no Redis listens: what a host does when it loses the shared database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio

from devstack.ports import LOOPBACK, free_port
from devstack.redis import Redis
from devstack.spamd import Spamd, bayes_redis_dsn

_TOOLS = ("spamd", "spamc", "sa-learn", "spamassassin", "setpriv", "redis-server", "redis-cli")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or any(shutil.which(tool) is None for tool in _TOOLS),
        reason="needs root and Debian's spamassassin, spamd, spamc, redis-server",
    ),
]

# The shipped file's database number: the one these hosts share.
DATABASE = 2

# Bayes scores only after 200 spam and 200 ham by default; one of each is
# enough here to see the shared tokens at work on the other host.
FEW_MESSAGES = "bayes_min_spam_num 1\nbayes_min_ham_num 1\n"

SPAM_WORDS = "cheap pills viagra offer lottery winner casino bonus click now"
HAM_WORDS = "Hi Bob, the agenda for the project review is attached, see you at lunch on Friday"


def message(kind: str, number: int, words: str) -> bytes:
    """A small message with its own Message-ID and body (Bayes learns each once)."""
    return (
        f"From: sender{number}@example.test\r\n"
        f"To: bob@example.test\r\n"
        f"Subject: {kind} {number}\r\n"
        f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{kind}-{number}@bayes-redis.example.test>\r\n"
        f"\r\n{words} {number}\r\n"
    ).encode()


def spamc(spamd: Spamd, *args: str, data: bytes) -> str:
    """Debian's spamc against ``spamd``; its stdout."""
    done = subprocess.run(
        ["spamc", "-d", LOOPBACK, "-p", str(spamd.port), *args],
        input=data, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.decode()


@dataclass
class Hosts:
    """Two spamd sharing one Redis Bayes database, and one whose Redis is gone."""

    one: Spamd
    two: Spamd
    cut_off: Spamd
    learned: tuple[int, int]


@pytest.fixture(scope="module")
def hosts(workroot: Path, redis_server: Redis) -> Iterator[Hosts]:
    """Start the three spamd, empty the shared database and teach host 1 a small corpus."""
    password = redis_server.password
    over_tcp = bayes_redis_dsn(
        f"{LOOPBACK}:{redis_server.port}", database=DATABASE, password=password
    )
    over_socket = bayes_redis_dsn(
        str(redis_server.socket_path), database=DATABASE, password=password
    )
    nowhere = bayes_redis_dsn(f"{LOOPBACK}:{free_port()}", database=DATABASE, password=password)
    redis_server.cli("-n", str(DATABASE), "FLUSHDB")
    one = Spamd(workroot / "bayes-one", children=1, extra_config=FEW_MESSAGES,
                bayes_redis_dsn=over_tcp)  # fmt: skip
    two = Spamd(workroot / "bayes-two", children=1, extra_config=FEW_MESSAGES,
                bayes_redis_dsn=over_socket)  # fmt: skip
    cut_off = Spamd(workroot / "bayes-cut", children=1, extra_config=FEW_MESSAGES,
                    bayes_redis_dsn=nowhere)  # fmt: skip
    daemons = (one, two, cut_off)
    with ExitStack() as stack:
        for daemon in daemons:
            stack.callback(daemon.stop)  # a no-op for one that did not start
        # spamd spends its start-up compiling rules in Perl: start them side by side.
        with ThreadPoolExecutor(len(daemons)) as pool:
            list(pool.map(Spamd.start, daemons))
        for number in range(3):
            spamc(one, "-L", "spam", data=message("spam", number, SPAM_WORDS))
        for number in range(2):
            spamc(one, "-L", "ham", data=message("ham", number, HAM_WORDS))
        yield Hosts(one, two, cut_off, learned=(3, 2))


def test_learned_on_one_host_shows_in_the_others_dump_magic(hosts: Hosts) -> None:
    """sa-learn --dump magic with host 2's configuration counts what host 1's spamd learned."""
    assert hosts.learned == hosts.two.learned_counts()


def test_no_bayes_files_are_written(hosts: Hosts) -> None:
    """With the Redis store, local.cf's bayes_path stays unused on every host."""
    assert [] == list(hosts.one.bayes_dir.iterdir())
    assert [] == list(hosts.two.bayes_dir.iterdir())


def test_the_other_host_scores_with_the_shared_tokens(hosts: Hosts) -> None:
    """Host 2, which learned nothing itself, finds new spam and ham by host 1's lessons."""
    spam_rules = spamc(hosts.two, "-y", data=message("spam", 100, SPAM_WORDS)).split(",")
    ham_rules = spamc(hosts.two, "-y", data=message("ham", 100, HAM_WORDS)).split(",")
    assert "BAYES_99" in spam_rules
    assert "BAYES_00" in ham_rules


def test_a_message_learned_on_one_host_is_already_learned_on_the_other(hosts: Hosts) -> None:
    """The "seen" message ids are shared too: host 2 does not count host 1's message again."""
    answer = spamc(hosts.two, "-L", "spam", data=message("spam", 0, SPAM_WORDS))
    assert "Message was already un/learned\n" == answer
    assert hosts.learned == hosts.two.learned_counts()


def test_redis_expires_tokens_and_seen_ids_by_the_shipped_ttls(
    hosts: Hosts, redis_server: Redis
) -> None:
    """bayes_token_ttl 21d and bayes_seen_ttl 8d reach Redis as key TTLs in seconds."""

    async def ttls() -> dict[bytes, set[int]]:
        url = redis_server.url.removesuffix("/0") + f"/{DATABASE}"
        found: dict[bytes, set[int]] = {}
        async with redis.asyncio.from_url(url, password=redis_server.password) as client:
            async for key in client.scan_iter(count=1000):
                found.setdefault(key[:2], set()).add(await client.ttl(key))
        return found

    found = asyncio.run(ttls())
    # w: tokens, s: seen message ids, v: counts and version (never expire).
    assert {-1} == found[b"v:"]
    assert all(0 < ttl <= 21 * 86400 for ttl in found[b"w:"])
    assert all(0 < ttl <= 8 * 86400 for ttl in found[b"s:"])


def test_shipped_bayes_redis_cf_lints(hosts: Hosts) -> None:
    """spamassassin --lint accepts the shipped file next to local.cf."""
    assert (hosts.two.siteconfig_dir / "bayes-redis.cf").is_file()
    hosts.two.lint()


def test_host_without_redis_still_scans_without_bayes(hosts: Hosts) -> None:
    """Redis unreachable: spamd answers at once with its other rules; no BAYES_ rule, no error."""
    rules = spamc(hosts.cut_off, "-y", data=message("spam", 200, SPAM_WORDS)).split(",")
    assert "DRUGS_ERECTILE" in rules
    assert [] == [rule for rule in rules if rule.startswith("BAYES_")]


def test_host_without_redis_answers_tell_as_if_already_learned(hosts: Hosts) -> None:
    """Redis unreachable: TELL sets nothing and spamc says "already learned" (exit 0), so a
    learner that reads a missing DidSet as "already" never retries the message."""
    answer = spamc(hosts.cut_off, "-L", "spam", data=message("spam", 201, SPAM_WORDS))
    assert "Message was already un/learned\n" == answer


def test_sa_learn_fails_loudly_without_redis(hosts: Hosts) -> None:
    """sa-learn, unlike TELL, exits non-zero when the Redis store cannot be reached."""
    with pytest.raises(RuntimeError, match="sa-learn --dump magic failed"):
        hosts.cut_off.learned_counts()
