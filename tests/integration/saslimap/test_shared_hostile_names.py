"""Hostile user names through two hosts sharing the session's real redis-server.

Names with Redis glob characters, CR/LF, NUL, 64 KiB of characters, lone
surrogates (what Python makes of bytes that are not UTF-8): every check gets an
answer (OK only for the right password of a name the IMAP server knows), none
raises, nothing logs an error, and ``saslimap flush --user 'a*'`` removes that
user's keys, not those of every user whose name the pattern would match.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.redis import Redis
from mailgate.config import StateConfig
from mailgate.state import escape_glob
from saslimap.config import LimitsConfig
from saslimap.service import Verdict
from saslimap.shared import flush, user_id
from tests.fakes import FakeBackend
from tests.integration.saslimap.sharedhosts import (
    Host,
    close_hosts,
    make_hosts,
    run_flush,
    write_config,
)

pytestmark = pytest.mark.integration

GLOBS = ["a*", "a?", "a", "ab", "abc", "[a]*", "a\\*", "*", "?", "[", "]", "\\", "[^a]",
         "a*@example.com", "a[b-z]@example.com", "x\\"]  # fmt: skip
CONTROL = ["a\r\nb", "a\nA1 LOGOUT", "a\0b", "\0", "a\rb", "tab\there", "del\x7f"]
LONG = ["x" * 65536, "ü" * 20000 + "@example.com", "*" * 10000]
SURROGATES = ["\udcff\udcfe@example.com", "a\ud800b", "\udc80*"]
KNOWN = GLOBS + LONG + SURROGATES  # names the IMAP server has (control characters: refused)
_prefixes = itertools.count()


def _password(name: str) -> str:
    return f"pw of {len(name)} {name[:3]!r}"


@pytest.fixture
async def hosts(
    redis_server: Redis, secret_file: Path
) -> AsyncIterator[tuple[Host, Host, FakeBackend]]:
    """Two hosts on the session Redis's Unix socket, with a fresh prefix; the IMAP server
    knows every hostile name but those with control characters."""
    cfg = StateConfig(
        url=redis_server.unix_url, password_file=redis_server.password_file,
        secret_file=secret_file, key_prefix=f"hostile{next(_prefixes)}:", timeout=0.5,
    )  # fmt: skip
    imap = FakeBackend({name: _password(name) for name in KNOWN + CONTROL})
    made = await make_hosts(cfg, imap)
    yield made[0], made[1], imap
    await close_hosts(made)


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert [] == [r.getMessage()[:200] for r in bad]


async def test_hostile_names_are_checked_and_shared_without_errors(
    hosts: tuple[Host, Host, FakeBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """Each known name: right password OK through A, then a shared hit on B (one IMAP
    login); a wrong one NO on both (one login: the negative entry is shared).  Names
    with control characters: NO on both without asking IMAP."""
    a, b, imap = hosts
    with caplog.at_level(logging.INFO):
        for name in KNOWN:
            assert Verdict.OK == await a.check(_password(name), name), repr(name[:20])
            assert Verdict.OK == await b.check(_password(name), name), repr(name[:20])
            assert Verdict.NO == await b.check("wrong", name)
            assert Verdict.NO == await a.check("wrong", name)
        for name in CONTROL:
            assert Verdict.NO == await a.check(_password(name), name)
            assert Verdict.NO == await b.check(_password(name), name)
    assert 2 * len(KNOWN) == len(imap.calls)
    assert not set(CONTROL) & set(imap.calls)
    assert a.state.up
    assert b.state.up
    _no_errors(caplog)


async def test_hostile_names_on_the_dovecot_listener_path_without_errors(
    hosts: tuple[Host, Host, FakeBackend], caplog: pytest.LogCaptureFixture
) -> None:
    """The per-IP step hashes the name before any check of it (control characters
    included): every name gets an answer from both hosts, the shared per-IP budget still
    counts the failures, and nothing raises."""
    a, b, imap = hosts
    with caplog.at_level(logging.INFO):
        for n, name in enumerate(KNOWN + CONTROL):
            host = (a, b)[n % 2]
            verdict = await host.check_client(name, "wrong", "192.0.2.66")
            assert verdict in (Verdict.NO, Verdict.TEMPFAIL)
        assert Verdict.OK == await b.check_client("a*", _password("a*"), "192.0.2.67")
    assert len(imap.calls) <= 30 + 1  # the address's budget, shared by both hosts
    assert a.state.up
    assert b.state.up
    _no_errors(caplog)


async def test_flush_user_with_glob_characters_removes_only_that_user(
    hosts: tuple[Host, Host, FakeBackend], redis_server: Redis, secret_file: Path, tmp_path: Path
) -> None:
    """``saslimap flush --user 'a*'`` (the command) takes a*'s keys and leaves a, ab, a?,
    [a]* and the rest; ``--user '*'`` and ``--address '*'`` likewise touch only their own.
    Then each other hostile name, flushed in turn, takes exactly its own keys."""
    a, b, _imap = hosts
    for name in KNOWN:
        await a.check(_password(name), name)
        await b.check("wrong", name)
    prefix = a.state.prefix

    def keys_of(name: str) -> set[str]:
        uid = user_id(a.state, name)
        return set(redis_server.cli("KEYS", f"{prefix}sasl:u:{uid}*").splitlines()) - {""}

    def all_keys() -> set[str]:
        return set(redis_server.cli("KEYS", f"{prefix}*").splitlines()) - {""}

    config = write_config(tmp_path, {
        "url": redis_server.url, "password_file": str(redis_server.password_file),
        "secret_file": str(secret_file), "key_prefix": prefix,
    })  # fmt: skip
    for args, name in ((("--user", "a*"), "a*"), (("--user", "*"), "*")):
        mine = keys_of(name)
        assert mine
        rest = all_keys() - mine
        done = run_flush(config, *args, password=redis_server.password)
        assert 0 == done.returncode, done.stderr
        assert f"saslimap flush: {len(mine)} shared keys removed" in done.stdout
        assert rest == all_keys()
    before = all_keys()
    done = run_flush(config, "--address", "*", password=redis_server.password)
    assert 0 == done.returncode, done.stderr
    assert before == all_keys()

    for name in KNOWN:
        if name in ("a*", "*"):
            continue
        mine = keys_of(name)
        assert mine, repr(name[:20])
        rest = all_keys() - mine
        assert len(mine) == await flush(a.state, LimitsConfig(), user=name)
        assert rest == all_keys()


async def test_a_key_prefix_with_glob_characters_flushes_only_its_own_group(
    redis_server: Redis, secret_file: Path
) -> None:
    """Three gateway groups on one Redis, prefixes "g*[1]\\:", "gx1:" (which the first,
    taken as a pattern, would match) and "g*[1]\\:x": flushing the first leaves the
    others' keys."""
    imap = FakeBackend({"a*": _password("a*")})
    groups = []
    for prefix in ("g*[1]\\:", "gx1:", "g*[1]\\:x"):
        cfg = StateConfig(
            url=redis_server.unix_url, password_file=redis_server.password_file,
            secret_file=secret_file, key_prefix=prefix, timeout=0.5,
        )  # fmt: skip
        [host] = await make_hosts(cfg, imap, count=1)
        groups.append(host)
    try:
        for host in groups:
            assert Verdict.OK == await host.check(_password("a*"), "a*")
            assert Verdict.NO == await host.check("wrong", "a*")
        others = {p: redis_server.cli("KEYS", escape_glob(p) + "*") for p in ("gx1:", "g*[1]\\:x")}
        assert all(others.values())
        assert 0 < await flush(groups[0].state, LimitsConfig())
        assert "" == redis_server.cli("KEYS", escape_glob("g*[1]\\:") + "sasl:*")
        assert others == {p: redis_server.cli("KEYS", escape_glob(p) + "*") for p in others}
    finally:
        await close_hosts(groups)
