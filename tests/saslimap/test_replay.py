"""The replay memo: repeated cache answers known by their names and by their exact bytes."""

from __future__ import annotations

import asyncio

import pytest

from saslimap.config import CacheConfig, LimitsConfig
from saslimap.protocol import reply_no
from saslimap.service import Verdict
from tests.saslimap.helpers import (
    OK_REPLY,
    PW,
    USER,
    frame_of,
    hit_by_frame,
    make,
    settle,
    wire,
)

# -- by names: login, service and realm as they came in --------------------------------------


async def test_repeated_hit_logs_the_same_line_as_the_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fast path's log line and counts are those of an ordinary cache hit."""
    auth, backend, _ = make()
    await wire(auth, PW.encode())
    caplog.clear()
    with caplog.at_level("INFO", logger="saslimap.service"):
        assert Verdict.OK == await wire(auth, PW.encode())  # slow path: first hit
        assert Verdict.OK == await wire(auth, PW.encode())  # fast path
        await asyncio.sleep(0)  # the fast path writes its line right after answering
    first, second = (r.getMessage() for r in caplog.records)
    assert first == second
    assert "result=ok source=cache" in first
    assert 1 == len(backend.calls)
    sample = auth.metrics.registry.get_sample_value
    assert 2.0 == sample("saslimap_cache_hits_total", {"kind": "positive"})
    assert 3.0 == sample("saslimap_requests_total", {"result": "ok"})


async def test_fast_path_never_accepts_another_password() -> None:
    """Once a user's names are remembered, a different password still goes to IMAP."""
    auth, backend, _ = make()
    await wire(auth, PW.encode())
    await wire(auth, PW.encode())
    assert Verdict.NO == await wire(auth, b"right pw ")
    assert Verdict.NO == await wire(auth, b"\xff\xfe")  # not UTF-8: refused, never OK
    assert 2 == len(backend.calls)


async def test_fast_path_forgets_a_dropped_entry() -> None:
    """A dropped entry (the password changed) is not answered from the fast path."""
    auth, backend, _ = make()
    await wire(auth, PW.encode())
    await wire(auth, PW.encode())
    auth.cache.drop((USER, "", "smtp"))
    backend.users[USER] = "new pw"
    assert Verdict.NO == await wire(auth, PW.encode())
    assert 2 == len(backend.calls)


async def test_fast_path_forgets_an_evicted_entry() -> None:
    """An entry pushed out by max_entries is not answered from the fast path."""
    auth, backend, _ = make(CacheConfig(max_entries=1))
    backend.users["bob@example.com"] = "bob pw"
    await wire(auth, PW.encode())
    await wire(auth, PW.encode())
    await wire(auth, b"bob pw", b"bob@example.com")  # evicts alice
    assert Verdict.OK == await wire(auth, PW.encode())
    assert 3 == len(backend.calls)


async def test_fast_path_respects_refresh_after() -> None:
    """An entry past refresh-after leaves the fast path and is re-verified."""
    auth, backend, clock = make(CacheConfig(ttl=3600, refresh_after=300))
    await wire(auth, PW.encode())
    await wire(auth, PW.encode())
    clock.advance(301)
    assert Verdict.OK == await wire(auth, PW.encode())
    await settle(auth)
    assert 2 == len(backend.calls)


# -- by bytes (repeat): the mux server's exact reads --------------------------------------------


async def test_repeated_request_is_known_by_its_bytes(caplog: pytest.LogCaptureFixture) -> None:
    """After a fresh hit, the same bytes are answered by repeat(), same line and counts."""
    auth, backend, _ = make()
    frame = frame_of(PW.encode())
    assert auth.repeat(frame) is None
    with caplog.at_level("INFO", logger="saslimap.service"):
        for _ in range(3):  # IMAP, a cache hit, then the names fast path: it learns the frame
            assert Verdict.OK == await hit_by_frame(auth, frame)
        await asyncio.sleep(0)
        learned = caplog.records[-1].getMessage()
        caplog.clear()
        assert OK_REPLY == auth.repeat(frame)
        await asyncio.sleep(0)
    assert [learned] == [r.getMessage() for r in caplog.records]
    assert "result=ok source=cache" in learned
    assert 1 == len(backend.calls)
    sample = auth.metrics.registry.get_sample_value
    assert 3.0 == sample("saslimap_cache_hits_total", {"kind": "positive"})
    assert 4.0 == sample("saslimap_requests_total", {"result": "ok"})


async def test_repeat_hit_never_matches_other_bytes() -> None:
    """Another password, a prefix, trailing bytes or another address are not repeats."""
    auth, _, _ = make()
    frame = frame_of(PW.encode())
    for _ in range(3):
        await hit_by_frame(auth, frame)
    assert OK_REPLY == auth.repeat(frame)
    for other in (
        frame_of(b"right pX"),
        frame[:-1],
        frame + b"\0",
        frame_of(PW.encode(), addr=b"192.0.2.1"),
        frame_of(PW.encode(), login=b"ALICE@example.com"),
    ):
        assert auth.repeat(other) is None


async def test_repeat_hit_trusts_only_a_fresh_held_entry() -> None:
    """A dropped, replaced or aged entry sends the same bytes back to the full check."""
    auth, backend, clock = make(CacheConfig(ttl=3600, refresh_after=300))
    frame = frame_of(PW.encode())
    for _ in range(3):
        await hit_by_frame(auth, frame)
    clock.advance(301)
    assert auth.repeat(frame) is None
    assert Verdict.OK == await hit_by_frame(auth, frame)  # answered, re-verified behind
    await settle(auth)
    assert 2 == len(backend.calls)
    for _ in range(2):
        await hit_by_frame(auth, frame)
    assert OK_REPLY == auth.repeat(frame)  # the refreshed entry is learned again
    auth.cache.drop((USER, "", "smtp"))
    backend.users[USER] = "new pw"
    assert auth.repeat(frame) is None
    assert Verdict.NO == await hit_by_frame(auth, frame)


async def test_a_read_with_trailing_bytes_is_not_learned() -> None:
    """A request followed by extra bytes in the same read is answered but never remembered."""
    auth, _, _ = make()
    frame = frame_of(PW.encode())
    for _ in range(3):
        assert Verdict.OK == await hit_by_frame(auth, frame + b"junk")
    assert auth.repeat(frame + b"junk") is None
    assert auth.repeat(frame) is None


async def test_repeated_wrong_password_is_refused_by_its_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A phone retrying a wrong password: after the negative cache has answered it once, the
    same bytes get the same NO, line and counts from repeat(), without reaching IMAP."""
    auth, backend, _ = make()
    frame = frame_of(b"typo")
    with caplog.at_level("INFO", logger="saslimap.service"):
        for _ in range(2):  # IMAP says no; then the negative cache, which learns the frame
            assert Verdict.NO == await hit_by_frame(auth, frame)
        await asyncio.sleep(0)
        learned = caplog.records[-1].getMessage()
        caplog.clear()
        assert reply_no("authentication failed") == auth.repeat(frame)
        await asyncio.sleep(0)
    assert [learned] == [r.getMessage() for r in caplog.records]
    assert "result=no source=negative-cache" in learned
    assert 1 == len(backend.calls)
    assert 1 == auth.budget.failures(USER)
    sample = auth.metrics.registry.get_sample_value
    assert 2.0 == sample("saslimap_cache_hits_total", {"kind": "negative"})
    assert 3.0 == sample("saslimap_requests_total", {"result": "no"})


async def test_a_refusal_by_bytes_lasts_no_longer_than_the_negative_cache() -> None:
    """Past negative_ttl (from when IMAP refused it), the request goes to IMAP again."""
    auth, backend, clock = make(CacheConfig(negative_ttl=60))
    frame = frame_of(b"typo")
    for _ in range(2):
        await hit_by_frame(auth, frame)
    clock.advance(59)
    assert auth.repeat(frame) is not None
    clock.advance(1)
    assert auth.repeat(frame) is None
    backend.users[USER] = "typo"  # the password was changed to it meanwhile
    assert Verdict.OK == await hit_by_frame(auth, frame)
    assert 2 == len(backend.calls)


async def test_a_refusal_by_bytes_gives_way_to_a_newly_verified_password() -> None:
    """Once another password of the user's is verified, a learned refusal is checked afresh
    (the cached success is looked at first on the full path)."""
    auth, _, _ = make()
    frame = frame_of(b"typo")
    for _ in range(2):
        await hit_by_frame(auth, frame)
    assert Verdict.OK == await hit_by_frame(auth, frame_of(PW.encode()))
    assert auth.repeat(frame) is None
    assert Verdict.NO == await hit_by_frame(auth, frame)  # still the negative cache's NO


async def test_refusals_are_not_learned_with_a_failure_delay() -> None:
    """With a failure delay every NO must wait, so none is answered from repeat()."""
    auth, _, _ = make(limits=LimitsConfig(failure_delay=0.001))
    frame = frame_of(b"typo")
    for _ in range(3):
        await hit_by_frame(auth, frame)
    assert auth.repeat(frame) is None
