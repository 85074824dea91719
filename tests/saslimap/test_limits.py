"""The sliding-window counter and the limits built on it: per user, per address (fake clock)."""

from __future__ import annotations

import pytest

from saslimap.limits import FailureBudget, IpLimiter, WindowCounter, budget_key, network_key
from tests.clock import FakeClock

# -- the counter --------------------------------------------------------------------------


def test_counter_counts_distinct_failures_per_key() -> None:
    """The same HMAC again is one failure; another key has its own count."""
    counter = WindowCounter(FakeClock(), window=60)
    for digest in (b"a", b"a", b"b"):
        counter.add("k", digest)
    counter.add("other", b"a")
    assert 2 == counter.count("k")
    assert 1 == counter.count("other")
    assert 0 == counter.count("never")


def test_counter_window_slides_per_failure() -> None:
    """Each failure leaves the count a window after it last happened, not all at once."""
    clock = FakeClock()
    counter = WindowCounter(clock, window=60)
    counter.add("k", b"a")
    clock.advance(30)
    counter.add("k", b"b")
    clock.advance(29)
    assert 2 == counter.count("k")
    clock.advance(1)  # a is 60 s old: out
    assert {b"b"} == set(counter.recent("k"))
    clock.advance(30)
    assert 0 == counter.count("k")


def test_counter_repeat_moves_the_failure_on() -> None:
    """A failure repeated keeps counting a window from its latest time."""
    clock = FakeClock()
    counter = WindowCounter(clock, window=60)
    counter.add("k", b"a")
    clock.advance(50)
    counter.add("k", b"a")
    clock.advance(50)
    assert 1 == counter.count("k")
    clock.advance(10)
    assert 0 == counter.count("k")


def test_counter_forget_clears_one_key() -> None:
    """forget clears the key's failures and no other's."""
    counter = WindowCounter(FakeClock(), window=60)
    counter.add("k", b"a")
    counter.add("j", b"a")
    counter.forget("k")
    counter.forget("never seen")
    assert (0, 1) == (counter.count("k"), counter.count("j"))


def test_counter_tracks_at_most_max_keys() -> None:
    """Beyond max_keys the least recently failing key goes first."""
    counter = WindowCounter(FakeClock(), window=60, max_keys=2)
    for key in ("a", "b", "c"):
        counter.add(key, b"x")
    assert [0, 1, 1] == [counter.count(k) for k in ("a", "b", "c")]


# -- per user -------------------------------------------------------------------------------


def test_budget_counts_checks_in_flight_once_each() -> None:
    """Checks in flight fill the budget (identical ones once) until they end."""
    budget = FailureBudget(FakeClock(), limit=2)
    budget.begin("u", b"a")
    budget.begin("u", b"a")
    assert not budget.exhausted("u")
    budget.begin("u", b"b")
    assert budget.exhausted("u")
    assert not budget.spent("u")
    budget.end("u", b"b")
    assert not budget.exhausted("u")


def test_budget_failure_in_flight_counts_once() -> None:
    """A check that failed counts once, while it is still in flight and after it ended."""
    budget = FailureBudget(FakeClock(), limit=2)
    budget.begin("u", b"a")
    budget.spend("u", b"a")
    assert not budget.exhausted("u")
    budget.end("u", b"a")
    budget.spend("u", b"b")
    assert (True, True, 2) == (budget.exhausted("u"), budget.spent("u"), budget.failures("u"))


def test_budget_window_and_forget() -> None:
    """Failures leave the budget with the window, or all at once on forget."""
    clock = FakeClock()
    budget = FailureBudget(clock, limit=1, window=60)
    budget.spend("u", b"a")
    assert budget.spent("u")
    clock.advance(60)
    assert not budget.spent("u")
    budget.spend("u", b"a")
    budget.forget("u")
    assert 0 == budget.failures("u")


def test_budget_of_zero_never_limits() -> None:
    """limit = 0 turns the budget off."""
    budget = FailureBudget(FakeClock(), limit=0)
    budget.spend("u", b"a")
    assert (False, False) == (budget.exhausted("u"), budget.spent("u"))


# -- per address ------------------------------------------------------------------------------


def test_ipv6_counts_per_64() -> None:
    """Addresses in one IPv6 /64 share limits; IPv4-mapped ones count as IPv4."""
    assert network_key("2001:db8::1") == network_key("2001:db8::ffff")
    assert network_key("2001:db8:0:1::1") != network_key("2001:db8::1")
    assert "192.0.2.1" == network_key("::ffff:192.0.2.1")


def test_penalty_grows_with_distinct_failures_only() -> None:
    """Each new wrong password doubles the delay; repeating the same one does not."""
    lim = IpLimiter(FakeClock(), base_delay=1, max_delay=8)
    for _ in range(3):
        lim.failed("192.0.2.1", b"same")
    assert 1.0 == lim.decide("192.0.2.1").penalty
    for pw in (b"b", b"c", b"d", b"e", b"f"):
        lim.failed("192.0.2.1", pw)
    assert 8.0 == lim.decide("192.0.2.1").penalty


def test_budget_refuses_the_address_not_others() -> None:
    """At the budget an address is refused without IMAP; another address is unaffected."""
    lim = IpLimiter(FakeClock(), budget=3)
    for pw in (b"a", b"b", b"c"):
        lim.failed("192.0.2.1", pw)
    assert not lim.decide("192.0.2.1").allowed
    assert lim.decide("192.0.2.2").allowed


def test_window_slides() -> None:
    """Failures older than the window are forgotten."""
    clock = FakeClock()
    lim = IpLimiter(clock, budget=2, window=60)
    lim.failed("192.0.2.1", b"a")
    lim.failed("192.0.2.1", b"b")
    clock.advance(61)
    assert lim.decide("192.0.2.1").allowed


def test_success_exempts_the_address() -> None:
    """A right password clears and exempts the address for a while."""
    clock = FakeClock()
    lim = IpLimiter(clock, budget=2, exempt_after_success=100)
    lim.succeeded("192.0.2.1")
    for pw in (b"a", b"b", b"c"):
        lim.failed("192.0.2.1", pw)
    assert (True, 0.0) == (lim.decide("192.0.2.1").allowed, lim.decide("192.0.2.1").penalty)
    clock.advance(101)
    for pw in (b"a", b"b"):
        lim.failed("192.0.2.1", pw)
    assert not lim.decide("192.0.2.1").allowed


def test_trusted_networks_are_never_limited() -> None:
    """Company networks are exempt."""
    lim = IpLimiter(FakeClock(), budget=1, trusted_networks=["10.0.0.0/8"])
    lim.failed("10.1.2.3", b"a")
    lim.failed("10.1.2.3", b"b")
    assert lim.decide("10.1.2.3").allowed


def test_trusted_networks_match_ipv4_mapped_addresses() -> None:
    """A dual-stack listener's "::ffff:10.1.2.3" is the trusted 10.1.2.3."""
    lim = IpLimiter(FakeClock(), budget=1, trusted_networks=["10.0.0.0/8"])
    lim.failed("::ffff:10.1.2.3", b"a")
    lim.failed("::ffff:10.1.2.3", b"b")
    assert lim.decide("::ffff:10.1.2.3").allowed


def test_ipv6_neighbours_share_one_budget() -> None:
    """Failures from different addresses of one IPv6 /64 fill one budget; the next /64 is apart."""
    lim = IpLimiter(FakeClock(), budget=3)
    for n, pw in enumerate((b"a", b"b", b"c")):
        lim.failed(f"2001:db8::{n + 1}", pw)
    assert not lim.decide("2001:db8::ffff").allowed
    assert not lim.decide("[2001:db8::7]").allowed
    assert lim.decide("2001:db8:0:1::1").allowed


def test_ipv6_success_exempts_the_whole_64() -> None:
    """A right password from one address of a /64 exempts its neighbours too."""
    lim = IpLimiter(FakeClock(), budget=1)
    lim.succeeded("2001:db8::1")
    lim.failed("2001:db8::2", b"a")
    assert lim.decide("2001:db8::3").allowed


@pytest.mark.parametrize(
    ("user", "addr", "key"),
    [
        ("Alice@Example.COM", "", "alice@example.com"),
        ("straße", "", "straße"),  # Dovecot lowers ASCII only: not "strasse"
        ("\u212aelvin", "", "\u212aelvin"),  # the Kelvin sign is not a K to Dovecot
        ("bob", "192.0.2.7", "bob\x00192.0.2.7"),
        ("bob", "::ffff:192.0.2.7", "bob\x00192.0.2.7"),
        ("bob", "2001:db8::1", "bob\0002001:db8::/64"),
        ("bob", "192.0.2.7;25", "bob"),  # not an address: as if none were known
        ("bob", "unknown", "bob"),
    ],
)
def test_budget_keys_fold_as_dovecot_does_and_keep_only_real_addresses(
    user: str, addr: str, key: str
) -> None:
    """Budgets key on the name as Dovecot's %Lu sees it, with the client network if any."""
    assert key == budget_key(user, addr)
