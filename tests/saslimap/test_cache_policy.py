"""Caches and brute-force limits in the policy, on a fake clock with a fake IMAP backend."""

from __future__ import annotations

import asyncio
import hmac

import pytest
from prometheus_client import generate_latest

from saslimap.cache import CredentialCache, Hasher
from saslimap.config import CacheConfig, LimitsConfig, UsersConfig, parse_imap_url
from saslimap.imap import BackendUnavailable, ImapBackend, ImapSettings, LoginResult
from saslimap.metrics import Metrics
from saslimap.protocol import encode_request, parse_request, reply_no, reply_ok
from saslimap.service import Authenticator, Verdict
from tests.clock import FakeClock
from tests.fakes import FakeBackend

USER = "alice@example.com"
PW = "right pw"


def make(
    cache: CacheConfig | None = None, limits: LimitsConfig | None = None
) -> tuple[Authenticator, FakeBackend, FakeClock]:
    clock = FakeClock()
    backend = FakeBackend({USER: PW})
    auth = Authenticator(UsersConfig(), backend, clock, cache=cache, limits=limits)
    return auth, backend, clock


async def check(auth: Authenticator, password: str, user: str = USER) -> Verdict:
    return (await auth.verify(user, password, "smtp")).verdict


async def settle(auth: Authenticator) -> None:
    """Let background refreshes finish."""
    while auth.background:
        await asyncio.gather(*auth.background)


async def test_success_is_cached() -> None:
    """A verified password is answered from the cache the second time."""
    auth, backend, _ = make()
    assert Verdict.OK == await check(auth, PW)
    assert Verdict.OK == await check(auth, PW)
    assert 1 == len(backend.calls)


async def test_other_password_is_not_answered_from_cache() -> None:
    """A cached success for one password says nothing about another."""
    auth, backend, _ = make()
    await check(auth, PW)
    assert Verdict.NO == await check(auth, "guess")
    assert 2 == len(backend.calls)


async def test_entry_expires_after_ttl() -> None:
    """Past the TTL the IMAP server is asked again."""
    auth, backend, clock = make(CacheConfig(ttl=100, refresh_after=100))
    await check(auth, PW)
    clock.advance(101)
    assert Verdict.OK == await check(auth, PW)
    assert 2 == len(backend.calls)


async def test_refresh_after_answers_at_once_and_reverifies() -> None:
    """An older hit is OK immediately and re-verified in the background."""
    auth, backend, clock = make(CacheConfig(ttl=3600, refresh_after=300))
    await check(auth, PW)
    clock.advance(301)
    backend.delay = 0.05
    assert Verdict.OK == await check(auth, PW)  # not waiting for the refresh
    await settle(auth)
    assert 2 == len(backend.calls)
    assert Verdict.OK == await check(auth, PW)  # refreshed: fresh again
    assert 2 == len(backend.calls)


async def test_changed_password_stops_working_after_refresh() -> None:
    """If IMAP now rejects the cached password, the entry is dropped."""
    auth, backend, clock = make(CacheConfig(ttl=3600, refresh_after=300))
    await check(auth, PW)
    backend.users[USER] = "new pw"
    clock.advance(301)
    assert Verdict.OK == await check(auth, PW)  # the one use that triggers the refresh
    await settle(auth)
    assert Verdict.NO == await check(auth, PW)
    assert Verdict.OK == await check(auth, "new pw")


async def test_stale_if_error_keeps_users_sending() -> None:
    """Past the TTL, while IMAP is down, the cached password still gets OK."""
    auth, backend, clock = make(CacheConfig(ttl=3600, refresh_after=300, stale_if_error=14400))
    await check(auth, PW)
    clock.advance(3600 + 100)
    backend.down = "connect"
    result = await auth.verify(USER, PW, "smtp")
    assert (Verdict.OK, "stale-cache") == (result.verdict, result.source)
    assert Verdict.TEMPFAIL == await check(auth, "guess")


async def test_stale_entry_is_gone_after_the_window() -> None:
    """Beyond TTL plus stale-if-error an outage is a tempfail again."""
    auth, backend, clock = make(CacheConfig(ttl=3600, refresh_after=300, stale_if_error=600))
    await check(auth, PW)
    clock.advance(3600 + 601)
    backend.down = "timeout"
    assert Verdict.TEMPFAIL == await check(auth, PW)


async def test_stale_entry_is_dropped_when_imap_rejects_it() -> None:
    """An expired entry that IMAP now rejects is forgotten, not served later."""
    auth, backend, clock = make(CacheConfig(ttl=100, refresh_after=50, stale_if_error=1000))
    await check(auth, PW)
    clock.advance(150)
    backend.users[USER] = "changed"
    assert Verdict.NO == await check(auth, PW)
    clock.advance(61)  # past the negative cache
    backend.down = "connect"
    assert Verdict.TEMPFAIL == await check(auth, PW)


async def test_negative_cache_spares_imap() -> None:
    """The same wrong password again within negative_ttl does not reach IMAP."""
    auth, backend, clock = make(CacheConfig(negative_ttl=60))
    assert Verdict.NO == await check(auth, "typo")
    assert Verdict.NO == await check(auth, "typo")
    assert 1 == len(backend.calls)
    clock.advance(61)
    assert Verdict.NO == await check(auth, "typo")
    assert 2 == len(backend.calls)


async def test_budget_stops_distinct_wrong_passwords() -> None:
    """After the budget of distinct wrong passwords, further guesses never reach IMAP."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=10, failure_window=900))
    for n in range(50):
        assert Verdict.NO == await check(auth, f"guess {n}")
    assert 10 == len(backend.calls)
    result = await auth.verify(USER, "guess 99", "smtp")
    assert "ratelimited" == result.label


async def test_budget_holds_against_a_burst_decided_in_one_loop_turn() -> None:
    """Guesses decided together, before any IMAP check has started, still reach IMAP at most
    the budget's worth (the mux server decides a whole event-loop turn's requests at once)."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=10))
    decided = [auth.decide(USER, f"guess {n}", "smtp") for n in range(30)]
    results = await asyncio.gather(*(auth.finish(d) for d in decided))
    assert 10 == len(backend.calls)
    assert [Verdict.NO] * 10 + [Verdict.TEMPFAIL] * 20 == [r.verdict for r in results]
    assert {"ratelimited"} == {r.label for r in results[10:]}
    assert Verdict.NO == await check(auth, "guess 99")  # the budget is now spent for real
    assert 10 == len(backend.calls)


async def test_identical_checks_in_a_burst_count_once() -> None:
    """A client opening many sessions at once with the right password (cache empty, say
    after a restart): they share one IMAP login and spend no more budget than one."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=10))
    backend.delay = 0.01  # all of them in flight together
    decided = [auth.decide(USER, PW, "smtp") for _ in range(25)]
    results = await asyncio.gather(*(auth.finish(d) for d in decided))
    assert {Verdict.OK} == {r.verdict for r in results}
    assert 1 == len(backend.calls)
    assert not auth.budget.exhausted(USER)


async def test_checks_without_verdict_hold_against_a_burst() -> None:
    """During an outage, guesses decided together reach IMAP at most the budget's worth."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=5))
    backend.down = "timeout"
    decided = [auth.decide(USER, f"guess {n}", "smtp") for n in range(20)]
    results = await asyncio.gather(*(auth.finish(d) for d in decided))
    assert 5 == len(backend.calls)
    assert {Verdict.TEMPFAIL} == {r.verdict for r in results}


async def test_budget_never_locks_out_the_cached_password() -> None:
    """Over budget, the user's cached verified password still gets OK."""
    auth, _, _ = make(limits=LimitsConfig(failure_budget=3))
    assert Verdict.OK == await check(auth, PW)
    for n in range(20):
        await check(auth, f"guess {n}")
    assert Verdict.OK == await check(auth, PW)


async def test_repeated_wrong_password_spends_budget_once() -> None:
    """A phone retrying one wrong password uses one unit of budget, even after the negative TTL."""
    auth, _, clock = make(CacheConfig(negative_ttl=10), LimitsConfig(failure_budget=2))
    for _ in range(5):
        await check(auth, "old password")
        clock.advance(11)
    assert 1 == auth.budget.failures(USER)


async def test_budget_window_slides() -> None:
    """Failures older than the window no longer count."""
    auth, backend, clock = make(limits=LimitsConfig(failure_budget=2, failure_window=900))
    await check(auth, "a")
    await check(auth, "b")
    assert "ratelimited" == (await auth.verify(USER, "c", "smtp")).label
    clock.advance(901)
    await check(auth, "c")
    assert 3 == len(backend.calls)


async def test_identical_concurrent_checks_share_one_login() -> None:
    """Ten simultaneous checks of the same credentials cost one IMAP login."""
    auth, backend, _ = make(CacheConfig(max_entries=0))
    backend.delay = 0.05
    results = await asyncio.gather(*(check(auth, PW) for _ in range(10)))
    assert [Verdict.OK] * 10 == results
    assert 1 == len(backend.calls)


async def test_shared_outage_reaches_every_waiter() -> None:
    """When the shared login fails, every waiter gets the tempfail."""
    auth, backend, _ = make(CacheConfig(max_entries=0))
    backend.delay = 0.05
    backend.down = "timeout"
    results = await asyncio.gather(*(check(auth, PW) for _ in range(5)))
    assert [Verdict.TEMPFAIL] * 5 == results


def test_cache_keeps_no_password() -> None:
    """What the cache stores is an HMAC under a per-process key, not the password or its hash."""
    clock = FakeClock()
    cache = CredentialCache(Hasher(), clock)
    cache.store((USER, "", "smtp"), PW)
    stored = next(iter(cache._store.values()))
    assert PW.encode() not in stored.digest
    assert Hasher().digest(USER, PW) != stored.digest  # another process's key differs


async def test_metrics_count_results_and_cache_kinds() -> None:
    """Requests by result and cache hits by kind are counted; no user appears in labels."""
    metrics = Metrics()
    clock = FakeClock()
    backend = FakeBackend({USER: PW})
    auth = Authenticator(
        UsersConfig(), backend, clock, limits=LimitsConfig(failure_budget=1), metrics=metrics
    )
    await check(auth, PW)
    await check(auth, PW)
    await check(auth, "wrong")
    await check(auth, "wrong")
    await check(auth, "wrong again")
    await auth.verify("", "x")
    sample = metrics.registry.get_sample_value
    assert 2.0 == sample("saslimap_requests_total", {"result": "ok"})
    assert 2.0 == sample("saslimap_requests_total", {"result": "no"})
    assert 1.0 == sample("saslimap_requests_total", {"result": "ratelimited"})
    assert 1.0 == sample("saslimap_requests_total", {"result": "bad_request"})
    assert 1.0 == sample("saslimap_cache_hits_total", {"kind": "positive"})
    assert 1.0 == sample("saslimap_cache_hits_total", {"kind": "negative"})
    assert 2.0 == sample("saslimap_cache_misses_total")
    text = generate_latest(metrics.registry).decode()
    assert USER not in text
    assert "alice" not in text


def _blocking_settings() -> ImapSettings:
    return ImapSettings(parse_imap_url("imap+plaintext://127.0.0.1:9"), None, 1.0, 1.0)


async def test_full_queue_is_busy_at_once() -> None:
    """Beyond max_concurrency plus max_queue, a check is refused immediately as busy."""
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(_s: ImapSettings, _u: str, _p: str, _c: str) -> LoginResult:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return LoginResult.ACCEPTED

    backend = ImapBackend(_blocking_settings(), 1, max_queue=1, check=slow)
    first = asyncio.create_task(backend.login("a", "p"))
    second = asyncio.create_task(backend.login("b", "p"))
    await asyncio.sleep(0.05)
    with pytest.raises(BackendUnavailable) as info:
        await backend.login("c", "p")
    assert "busy" == info.value.kind
    release.set()
    assert [LoginResult.ACCEPTED] * 2 == list(await asyncio.gather(first, second))
    backend.close()


async def test_checks_without_verdict_are_bounded_too() -> None:
    """Guesses that only time out reach IMAP at most the budget's worth, then get 'try later'
    (never NO) at once; the cached password still works."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=5))
    assert Verdict.OK == await check(auth, PW)
    backend.down = "timeout"
    results = [await auth.verify(USER, f"guess {n}", "smtp") for n in range(20)]
    assert 1 + 5 == len(backend.calls)
    assert {Verdict.TEMPFAIL} == {r.verdict for r in results}
    assert "ratelimited" == results[-1].label
    assert Verdict.OK == await check(auth, PW)


# -- the fast path for repeated cache hits (raw bytes, as requests come off the wire) ----


async def wire(auth: Authenticator, password: bytes, login: bytes = USER.encode()) -> Verdict:
    return (await auth.verify(login, password, b"smtp", b"")).verdict


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


@pytest.mark.parametrize("key", [b"k" * 32, b"k" * 64, b"k" * 65, b"\x00" * 32])
def test_hasher_is_hmac_sha256(key: bytes) -> None:
    """The hasher's digest is HMAC-SHA256 of user NUL password under its key."""
    assert hmac.digest(key, b"u@x\0p\xc3\xa4ss", "sha256") == Hasher(key).digest("u@x", "päss")


# -- the whole-request fast path (repeat): the mux server's exact bytes ------------------

OK_REPLY = reply_ok()


def frame_of(password: bytes, login: bytes = USER.encode(), addr: bytes | None = None) -> bytes:
    return encode_request(login, password, b"smtp", b"", addr)


async def hit_by_frame(auth: Authenticator, frame: bytes) -> Verdict:
    """What the mux server does with one read: repeat(), else parse and decide."""
    reply = auth.repeat(frame)
    if reply is not None:
        return Verdict.OK if reply == OK_REPLY else Verdict.NO
    parsed = parse_request(frame)
    assert parsed is not None
    req = parsed.request
    whole = frame if parsed.consumed == len(frame) else b""
    decided = auth.decide(req.login, req.password, req.service, req.realm, "", whole)
    return (await auth.finish(decided)).verdict


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
