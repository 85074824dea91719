"""This host's copy of the allow entries: asked live while the store answers, the copy when not."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from filter.allowcache import AllowCache
from filter.config import Config, PolicyConfig, ServerConfig
from filter.message import Message
from filter.qdir import DirectoryStore
from filter.qstore import Actor, Query
from filter.quarantine import QuarantineError
from filter.service import Filter
from filter.verdicts import Category, Destiny
from tests.filter.fakes import FakeClamd, FakeForwarder, FakeSpamd

USER = Actor("b@example.com", "203.0.113.5")


class FlakyStore(DirectoryStore):
    """A directory store whose allow lookups can be made to fail, or to hang until let go."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.down = False
        self.hang = threading.Event()
        self.hang.set()
        self.lookups = 0

    def _gate(self) -> None:
        self.lookups += 1
        self.hang.wait(10)
        if self.down:
            raise QuarantineError("quarantine database: connection refused")

    def is_allowed(self, recipient: str, senders: Sequence[str]) -> bool:
        self._gate()
        return super().is_allowed(recipient, senders)

    def allow_pairs(self, limit: int) -> list[tuple[str, str]]:
        self._gate()
        return super().allow_pairs(limit)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    """A store where b@example.com allowed a@example.net."""
    made = FlakyStore(tmp_path / "q")
    made.directory.mkdir()
    made.allow("B@example.com", "A@example.net", USER)
    return made


def test_the_store_is_asked_while_it_answers(store: FlakyStore) -> None:
    """A live lookup sees an entry added after the copy was loaded."""
    cache = AllowCache(store)
    assert cache.reload()
    store.allow("c@example.com", "a@example.net", USER)
    assert {"c@example.com"} == cache.allowed(["c@example.com", "d@example.com"], ["a@example.net"])


def test_a_store_that_fails_is_answered_from_the_copy_then_asked_again(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Down: the copy answers (case-insensitively), the store is left alone for ``retry`` s,
    one warning per outage; then it is asked again."""
    clock, ups = Clock(), list[bool]()
    cache = AllowCache(store, retry=10.0, clock=clock, on_up=ups.append)
    assert cache.reload()
    store.down = True
    with caplog.at_level(logging.WARNING, "filter.allowcache"):
        for _ in range(3):
            assert {"b@EXAMPLE.com"} == cache.allowed(["b@EXAMPLE.com"], ["x@y", " a@Example.NET"])
            assert set() == cache.allowed(["b@example.com"], ["x@y"])
    assert 2 == store.lookups  # the load, then one failed lookup; the rest from the copy
    assert 1 == len(caplog.records)
    assert "from this host's copy (1 recipients' entries)" in caplog.text
    assert "connection refused" in caplog.text
    store.down = False
    clock.now += 10.0
    assert {"b@example.com"} == cache.allowed(["b@example.com"], ["a@example.net"])
    assert [True, False, True] == ups


def test_without_a_loaded_copy_a_failing_store_allows_nobody(store: FlakyStore) -> None:
    """Down from the start: no recipient counts as allowing anyone (the spam is held)."""
    store.down = True
    cache = AllowCache(store)
    assert not cache.reload()
    assert set() == cache.allowed(["b@example.com"], ["a@example.net"])


def test_a_failed_reload_keeps_the_copy_and_a_removed_entry_goes_with_the_next(
    store: FlakyStore,
) -> None:
    """The copy is replaced only by a whole successful load."""
    cache = AllowCache(store)
    cache.reload()
    store.down = True
    assert not cache.reload()
    assert {"b@example.com"} == cache.from_copy(["b@example.com"], ["a@example.net"])
    store.down = False
    store.disallow("b@example.com", "a@example.net")
    assert cache.reload()
    assert set() == cache.from_copy(["b@example.com"], ["a@example.net"])


def test_the_copy_is_bounded(store: FlakyStore, caplog: pytest.LogCaptureFixture) -> None:
    """Past ``max_entries`` rows the rest are left out, and the log says so."""
    for n in range(5):
        store.allow(f"u{n}@example.com", "a@example.net", USER)
    cache = AllowCache(store, max_entries=3)
    with caplog.at_level(logging.WARNING, "filter.allowcache"):
        assert cache.reload()
    assert 3 == cache.recipients
    assert "more than 3 allow entries" in caplog.text


def test_another_store_after_a_reload_drops_the_copy(store: FlakyStore, tmp_path: Path) -> None:
    """A reload to another store does not answer from the old one's entries."""
    cache = AllowCache(store)
    cache.reload()
    cache.attach(DirectoryStore(tmp_path / "other"), same_source=False)
    assert (False, 0) == (cache.loaded, cache.recipients)


SPAM = (
    b"Received: from c (c [192.0.2.9]) by gw (Postfix) with ESMTP id 4AbCdEf123\r\n"
    b"From: a@example.net\r\nTo: b@example.com\r\nSubject: offer\r\n\r\nGTUBE\r\n"
)


def _filter(store: FlakyStore) -> tuple[Filter, FakeForwarder]:
    """Spam is discarded and held; b@example.com allowed the sender."""
    policy = PolicyConfig(
        spam_destiny=Destiny.DISCARD, quarantine=(*PolicyConfig().quarantine, Category.SPAM)
    )
    cfg = Config(server=ServerConfig(hostname="gw.test"), policy=policy)
    fwd = FakeForwarder()
    return Filter(cfg, FakeClamd(), FakeSpamd(), fwd, store=store), fwd


def _spam() -> Message:
    return Message("a@example.net", ("b@example.com",), SPAM)


async def test_allowed_spam_keeps_flowing_while_the_store_is_down(store: FlakyStore) -> None:
    """The allowing recipient's spam is passed on the copy's word; nothing is held."""
    f, fwd = _filter(store)
    assert f.allow_cache is not None
    f.allow_cache.reload()
    store.down = True
    assert (await f.handle(_spam())).startswith("250 2.0.0 Ok")
    assert 1 == len(fwd.sent)
    store.down = False
    assert 0 == store.count(Query())


async def test_a_hung_store_costs_the_deadline_once_then_nothing(store: FlakyStore) -> None:
    """A lookup past its deadline answers from the copy; the next messages do not wait."""
    f, fwd = _filter(store)
    assert f.allow_cache is not None
    f.allow_cache.reload()
    f._allow_deadline = 0.05
    store.hang.clear()
    try:
        for _ in range(5):
            assert (await f.handle(_spam())).startswith("250 2.0.0 Ok")
    finally:
        store.hang.set()
    await asyncio.sleep(0)
    assert 2 == store.lookups  # the load and the one that hung
    assert 5 == len(fwd.sent)


def test_a_late_answer_after_its_caller_gave_up_does_not_end_the_outage(
    store: FlakyStore,
) -> None:
    """A lookup that succeeds after a failure was declared meanwhile leaves the copy in charge."""
    clock, ups = Clock(), list[bool]()
    cache = AllowCache(store, clock=clock, on_up=ups.append)
    store.hang.clear()
    worker = threading.Thread(target=cache.allowed, args=(["b@example.com"], ["a@example.net"]))
    worker.start()
    cache.failed("no answer within 1 s")
    store.hang.set()
    worker.join()
    assert cache.known_down()
    assert [False] == ups


def test_the_copy_looks_up_an_address_as_the_database_stores_it(store: FlakyStore) -> None:
    """NUL and lone surrogates are U+FFFD in the copy's lookups, as in PostgreSQL's."""
    store.allow("b@example.com", "a\ufffd@example.net", USER)
    cache = AllowCache(store)
    cache.reload()
    for sender in ("a\0@example.net", "a\udcff@example.net"):
        assert {"b@example.com"} == cache.from_copy(["b@example.com"], [sender])


async def test_after_a_failed_hold_the_next_holds_answer_451_at_once(tmp_path: Path) -> None:
    """A store that failed a hold is not waited on by the next messages for a while."""
    store = FlakyStore(tmp_path / "q")
    f, _ = _filter(store)
    calls = []

    def failing_add(*args: object, **kwargs: object) -> str:
        calls.append(1)
        raise OSError("quarantine database: no answer")

    store.add = failing_add  # type: ignore[method-assign]
    for _ in range(3):
        assert (await f.handle(_spam())).startswith("451")
    assert 1 == len(calls)
