"""Caches and brute-force budgets in the decision order (fake clock, fake IMAP backend)."""

from __future__ import annotations

from prometheus_client import generate_latest

from saslimap.config import CacheConfig, LimitsConfig, UsersConfig
from saslimap.metrics import Metrics
from saslimap.service import Authenticator, Verdict
from tests.clock import FakeClock
from tests.fakes import FakeBackend
from tests.saslimap.helpers import PW, USER, check, make


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
    """After the budget of distinct wrong passwords (no trickle), guesses never reach IMAP and
    are told "try later", never "wrong password"."""
    limits = LimitsConfig(failure_budget=10, failure_window=900, trickle_interval=0)
    auth, backend, _ = make(limits=limits)
    verdicts = [await check(auth, f"guess {n}") for n in range(50)]
    assert [Verdict.NO] * 10 + [Verdict.TEMPFAIL] * 40 == verdicts
    assert 10 == len(backend.calls)
    result = await auth.verify(USER, "guess 99", "smtp")
    assert "ratelimited" == result.label


async def test_over_budget_one_check_per_interval_still_reaches_imap() -> None:
    """Over budget, the right password gets OK at the next trickle slot, never NO meanwhile."""
    auth, backend, clock = make(limits=LimitsConfig(failure_budget=3, trickle_interval=5))
    for n in range(3):
        await check(auth, f"guess {n}")
    assert Verdict.NO == await check(auth, "guess 3")  # the slot: reaches IMAP
    assert 4 == len(backend.calls)
    assert Verdict.TEMPFAIL == await check(auth, PW)  # the slot is taken: "try later"
    assert Verdict.TEMPFAIL == await check(auth, "guess 4")
    assert 4 == len(backend.calls)
    clock.advance(5)
    assert Verdict.OK == await check(auth, PW)  # the next slot
    assert Verdict.OK == await check(auth, PW)  # cached: over budget or not
    assert 5 == len(backend.calls)


async def test_case_variants_share_one_budget() -> None:
    """ALICE, Alice and alice are one identity to the IMAP server: one budget between them."""
    auth, backend, _ = make(limits=LimitsConfig(failure_budget=4, trickle_interval=0))
    for n, name in enumerate(["alice@example.com", "ALICE@example.com", "Alice@Example.com"] * 4):
        await auth.verify(name, f"guess {n}", "smtp")
    assert 4 == len(backend.calls)


async def test_case_folding_can_be_turned_off() -> None:
    """fold_case = false: each spelling is its own identity, with its own budget."""
    limits = LimitsConfig(failure_budget=2, trickle_interval=0, fold_case=False)
    auth, backend, _ = make(limits=limits)
    for n, name in enumerate(["alice@example.com", "ALICE@example.com"] * 3):
        await auth.verify(name, f"guess {n}", "smtp")
    assert 4 == len(backend.calls)


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
    limits = LimitsConfig(failure_budget=2, failure_window=900, trickle_interval=0)
    auth, backend, clock = make(limits=limits)
    await check(auth, "a")
    await check(auth, "b")
    assert "ratelimited" == (await auth.verify(USER, "c", "smtp")).label
    clock.advance(901)
    await check(auth, "c")
    assert 3 == len(backend.calls)


async def test_metrics_count_results_and_cache_kinds() -> None:
    """Requests by result and cache hits by kind are counted; no user appears in labels."""
    metrics = Metrics()
    clock = FakeClock()
    backend = FakeBackend({USER: PW})
    auth = Authenticator(
        UsersConfig(), backend, clock, metrics=metrics,
        limits=LimitsConfig(failure_budget=1, trickle_interval=0),
    )  # fmt: skip
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


async def test_a_user_verified_before_is_never_held_back_after_the_cache_forgets() -> None:
    """Cache expired and budget spent by guesses: the user's last verified password still goes
    to IMAP at once (no trickle wait); a guess does not."""
    limits = LimitsConfig(failure_budget=3, trickle_interval=0)
    auth, backend, clock = make(CacheConfig(ttl=60, stale_if_error=0), limits)
    assert Verdict.OK == await check(auth, PW)
    clock.advance(61)  # the cache entry is gone
    for n in range(3):
        await check(auth, f"guess {n}")
    held = await auth.verify(USER, "guess 9", "smtp")  # a known password, not this one: NO
    assert (Verdict.NO, "ratelimited") == (held.verdict, held.label)
    assert Verdict.OK == await check(auth, PW)
    assert 5 == len(backend.calls)


async def test_the_remembered_password_survives_a_new_authenticator() -> None:
    """A reload builds a new authenticator with empty caches; handed the old one's memo of
    verified passwords, it lets the user's password through a spent budget."""
    limits = LimitsConfig(failure_budget=2, trickle_interval=0)
    auth, backend, clock = make(limits=limits)
    assert Verdict.OK == await check(auth, PW)
    fresh = Authenticator(UsersConfig(), backend, clock, limits=limits, verified=auth.verified)
    for n in range(2):
        await check(fresh, f"guess {n}")
    assert Verdict.NO == await check(fresh, "guess 9")  # held, and not the known password
    assert Verdict.OK == await check(fresh, PW)
    assert 4 == len(backend.calls)


async def test_a_password_the_server_now_refuses_is_forgotten() -> None:
    """After a password change the old password, refused once by IMAP, is held back like
    any guess."""
    limits = LimitsConfig(failure_budget=1, trickle_interval=0)
    auth, backend, clock = make(CacheConfig(ttl=60, stale_if_error=0, negative_ttl=1), limits)
    assert Verdict.OK == await check(auth, PW)
    clock.advance(61)
    backend.users[USER] = "new password"
    assert Verdict.NO == await check(auth, PW)  # reaches IMAP: refused, budget spent
    clock.advance(2)
    assert Verdict.TEMPFAIL == await check(auth, PW)


async def test_held_guesses_for_a_user_with_a_known_password_are_wrong_passwords() -> None:
    """Over budget, a guess that is not the user's cached password is NO (counted by per-IP
    limits and fail2ban), so the cache cannot be tested against for free; for a user with no
    known password the same guess is "try later"."""
    limits = LimitsConfig(failure_budget=2, trickle_interval=0)
    auth, backend, _ = make(limits=limits)
    assert Verdict.OK == await check(auth, PW)
    for user in (USER, "nobody@example.com"):
        for n in range(2):
            await check(auth, f"guess {n}", user)
    assert Verdict.NO == await check(auth, "guess 9")
    assert Verdict.TEMPFAIL == await check(auth, "guess 9", "nobody@example.com")
    assert 5 == len(backend.calls)
