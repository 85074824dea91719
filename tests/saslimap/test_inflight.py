"""Checks in flight: counted from the moment they are decided, shared when identical, refreshed."""

from __future__ import annotations

import asyncio

from saslimap.config import CacheConfig, LimitsConfig
from saslimap.service import Verdict
from tests.saslimap.helpers import PW, USER, check, make, settle


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


async def test_budget_holds_against_a_burst_decided_in_one_loop_turn() -> None:
    """Guesses decided together, before any IMAP check has started, still reach IMAP at most
    the budget's worth (the mux server decides a whole event-loop turn's requests at once)."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=10, trickle_interval=0))
    decided = [auth.decide(USER, f"guess {n}", "smtp") for n in range(30)]
    results = await asyncio.gather(*(auth.finish(d) for d in decided))
    assert 10 == len(backend.calls)
    assert [Verdict.NO] * 10 + [Verdict.TEMPFAIL] * 20 == [r.verdict for r in results]
    assert {"ratelimited"} == {r.label for r in results[10:]}
    spent = await auth.verify(USER, "guess 99", "smtp")  # the budget is now spent for real
    assert (Verdict.TEMPFAIL, "ratelimited") == (spent.verdict, spent.label)
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


async def test_checks_without_verdict_are_bounded_too() -> None:
    """Guesses that only time out reach IMAP at most the budget's worth, then get 'try later'
    (never NO) at once; the cached password still works."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=5, trickle_interval=0))
    assert Verdict.OK == await check(auth, PW)
    backend.down = "timeout"
    results = [await auth.verify(USER, f"guess {n}", "smtp") for n in range(20)]
    assert 1 + 5 == len(backend.calls)
    assert {Verdict.TEMPFAIL} == {r.verdict for r in results}
    assert "ratelimited" == results[-1].label
    assert Verdict.OK == await check(auth, PW)


async def test_an_address_whose_checks_time_out_does_not_hold_back_another() -> None:
    """Guesses from one address that never get a verdict (the IMAP server's penalty for that
    address outlasts the deadline) fill that address's budget only: the user's right password
    from another address still reaches IMAP."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=3, trickle_interval=0))
    backend.down = "timeout"
    for n in range(10):
        await auth.verify(USER, f"guess {n}", "smtp", client_addr="192.0.2.66")
    assert 3 == len(backend.calls)
    backend.down = None
    result = await auth.verify(USER, PW, "smtp", client_addr="198.51.100.7")
    assert Verdict.OK == result.verdict
