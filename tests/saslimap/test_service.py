"""Authentication policy without sockets: validation, realms, domains, outcomes, per-IP limits."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from saslimap.config import IpLimitsConfig, LimitsConfig, UsersConfig
from saslimap.service import Authenticator, Verdict, shown
from tests.clock import FakeClock
from tests.fakes import FakeBackend


def make(users: UsersConfig | None = None) -> tuple[Authenticator, FakeBackend]:
    backend = FakeBackend({"alice@example.com": "right pw", "bob": "pw"})
    return Authenticator(users or UsersConfig(), backend), backend


async def test_right_password_is_ok() -> None:
    """The backend's acceptance becomes OK."""
    auth, _ = make()
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"example.com")
    assert Verdict.OK == result.verdict
    assert "alice@example.com" == result.user


async def test_wrong_password_is_no() -> None:
    """The backend's rejection becomes NO."""
    auth, _ = make()
    assert Verdict.NO == (await auth.verify(b"alice", b"wrong", b"smtp", b"example.com")).verdict


async def test_outage_is_tempfail_never_ok() -> None:
    """An unavailable backend gives TEMPFAIL with its kind."""
    auth, backend = make()
    backend.down = "timeout"
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"example.com")
    assert Verdict.TEMPFAIL == result.verdict
    assert "timeout" == result.error_kind


@pytest.mark.parametrize(
    ("login", "password"),
    [
        (b"", b"pw"),
        (b"bob", b""),
        (b"bob\x00", b"pw"),
        (b"bob", b"pw\x00"),
        (b'user "x"\r\nA2 LOGIN victim', b"pw"),
        (b"bob", b"pw\r\nA2 LOGIN victim x"),
        (b"bob\n", b"pw"),
        (b"bob", b"p\tw"),
        (b"bob", b"p\x7fw"),
        (b"bob\xff", b"pw"),
        (b"bob", b"\xc3\x28"),
    ],
)
async def test_bad_input_is_no_without_asking_imap(login: bytes, password: bytes) -> None:
    """Empty, control-character and non-UTF-8 values are refused before the backend."""
    auth, backend = make()
    result = await auth.verify(login, password, b"smtp", b"")
    assert Verdict.NO == result.verdict
    assert [] == backend.calls


async def test_control_characters_in_realm_are_refused() -> None:
    """CR/LF in the realm would end up in the IMAP user name: refused."""
    auth, backend = make()
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"example.com\r\nX")
    assert Verdict.NO == result.verdict
    assert [] == backend.calls


async def test_realm_is_joined_by_default() -> None:
    """Postfix's login + realm become login@realm, as saslauthd -r does."""
    auth, _ = make()
    assert "alice@example.com" == auth.imap_user("alice", "example.com")
    assert "bob" == auth.imap_user("bob", "")


async def test_realm_can_be_ignored_and_names_lowercased() -> None:
    """realm = ignore drops the realm; lowercase folds the whole name."""
    auth, _ = make(UsersConfig(realm="ignore", lowercase=True))
    assert "bob" == auth.imap_user("BOB", "example.com")


async def test_domain_outside_allowed_list_is_no_without_imap() -> None:
    """allowed_domains guards against relaying for foreign accounts."""
    auth, backend = make(UsersConfig(allowed_domains=("example.com",)))
    result = await auth.verify(b"mallory", b"x", b"smtp", b"evil.test")
    assert Verdict.NO == result.verdict
    assert "domain not allowed" == result.reason
    assert [] == backend.calls


DOVECOT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@"


@pytest.mark.parametrize("login", ["jürgen", "a b", "x+tag", "名前", "o'brien"])
async def test_a_name_the_imap_server_refuses_is_no_without_imap(login: str) -> None:
    """With name_chars set, a name holding another character is NO (bad_request), unasked."""
    auth, backend = make(UsersConfig(name_chars=DOVECOT_CHARS))
    result = await auth.verify(login, "x", "smtp", "example.com")
    assert (Verdict.NO, "bad_request") == (result.verdict, result.label)
    assert "user name has a character the IMAP server refuses" == result.reason
    assert [] == backend.calls


async def test_names_within_name_chars_are_checked() -> None:
    """Names made of allowed characters (realm joined) reach IMAP as before."""
    auth, backend = make(UsersConfig(name_chars=DOVECOT_CHARS))
    result = await auth.verify("alice", "right pw", "smtp", "example.com")
    assert Verdict.OK == result.verdict
    assert ["alice@example.com"] == backend.calls


async def test_bare_name_is_outside_allowed_domains() -> None:
    """With an allow-list, a name without a domain is refused too."""
    auth, backend = make(UsersConfig(allowed_domains=("example.com",)))
    assert Verdict.NO == (await auth.verify(b"bob", b"pw", b"smtp", b"")).verdict
    assert [] == backend.calls


async def test_allowed_domain_match_ignores_case() -> None:
    """Domains compare case-insensitively."""
    auth, _ = make(UsersConfig(allowed_domains=("example.com",)))
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"Example.COM")
    assert "domain not allowed" != result.reason


async def test_one_log_line_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """Each check logs one line with user, service, realm and result, never the password."""
    auth, _ = make()
    with caplog.at_level(logging.DEBUG):
        await auth.verify(b"alice", b"right pw", b"smtp", b"example.com")
    lines = [r.getMessage() for r in caplog.records]
    assert 1 == len(lines)
    assert 'user="alice@example.com" service="smtp" realm="example.com" result=ok' in lines[0]
    assert "right pw" not in caplog.text


async def test_hostile_user_name_is_escaped_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """CR/LF and quotes in a user name cannot forge log lines."""
    auth, _ = make()
    with caplog.at_level(logging.INFO):
        await auth.verify(b'x"\r\nfake line', b"pw", b"smtp", b"")
    assert "\n" not in caplog.records[0].getMessage()
    assert "x\\x22\\x0d\\x0afake line" in caplog.records[0].getMessage()


def test_shown_keeps_unicode_letters() -> None:
    """Non-ASCII letters stay readable; invisible characters are escaped."""
    assert "ünï\\u200b" == shown("ünï\u200b")


# -- per-IP limits, decided here for the Dovecot listener ----------------------------------


def make_ip(**limits: object) -> tuple[Authenticator, FakeBackend, FakeClock]:
    clock = FakeClock()
    backend = FakeBackend({"alice@example.com": "right pw"})
    cfg = replace(IpLimitsConfig(), **limits)  # type: ignore[arg-type]
    return Authenticator(UsersConfig(), backend, clock, iplimits=cfg), backend, clock


async def test_address_over_its_budget_is_refused_without_imap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At the budget an address gets "try later" (ratelimited, logged with rip=; never a
    wrong password: a user behind the same NAT is slowed, not refused) after the longest
    delay, without IMAP or the cache; another address is not affected."""
    auth, backend, _ = make_ip(budget=3, base_delay=1.0, max_delay=8.0)
    for n in range(3):
        result, _ = await auth.verify_client("alice@example.com", f"guess {n}", "smtp", "192.0.2.7")
        assert Verdict.NO == result.verdict
    calls = len(backend.calls)
    with caplog.at_level(logging.INFO, logger="saslimap.service"):
        result, delay = await auth.verify_client(
            "alice@example.com", "right pw", "smtp", "192.0.2.7"
        )
    assert (Verdict.TEMPFAIL, "ratelimited", "ip-limit", 8.0) == (
        result.verdict, result.label, result.source, delay,
    )  # fmt: skip
    assert calls == len(backend.calls)
    assert 'auth user="alice@example.com" rip=192.0.2.7 result=ratelimited' in caplog.text
    assert "right pw" not in caplog.text
    assert 1.0 == auth.metrics.registry.get_sample_value(
        "saslimap_requests_total", {"result": "ratelimited"}
    )
    result, delay = await auth.verify_client("alice@example.com", "right pw", "smtp", "192.0.2.8")
    assert (Verdict.OK, 0.0) == (result.verdict, delay)


async def test_penalty_grows_with_each_distinct_wrong_password() -> None:
    """The delay before a NO doubles with each new wrong password; the same one again
    (answered by the negative cache) leaves it where it is."""
    auth, _, _ = make_ip(base_delay=1.0, max_delay=15.0, budget=0)
    delays = []
    for password in ("a", "b", "b", "c"):
        _, delay = await auth.verify_client("alice@example.com", password, "smtp", "192.0.2.7")
        delays.append(delay)
    assert [1.0, 2.0, 2.0, 4.0] == delays


async def test_ipv6_addresses_of_one_64_share_one_budget() -> None:
    """Guesses spread over one IPv6 /64 fill one budget, and one user's password from two of
    its addresses counts once; the next /64 is not affected."""
    auth, backend, _ = make_ip(budget=2, base_delay=1.0)
    _, first = await auth.verify_client("alice@example.com", "a", "smtp", "2001:db8::1")
    _, again = await auth.verify_client("alice@example.com", "a", "smtp", "2001:db8::2")
    assert (1.0, 1.0) == (first, again)
    await auth.verify_client("alice@example.com", "b", "smtp", "2001:db8::3")
    calls = len(backend.calls)
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "2001:db8::4")
    assert "ratelimited" == result.label
    assert calls == len(backend.calls)
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "2001:db8:0:1::4")
    assert Verdict.OK == result.verdict


async def test_one_password_sprayed_over_many_users_fills_the_budget() -> None:
    """Password spraying (one password, many user names) counts one failure per user, so the
    address reaches its budget and the next guess never reaches IMAP."""
    auth, backend, _ = make_ip(budget=5, base_delay=0.0)
    for n in range(5):
        result, _ = await auth.verify_client(
            f"user{n}@example.com", "Summer2026!", "smtp", "192.0.2.9"
        )
        assert "no" == result.label
    calls = len(backend.calls)
    result, _ = await auth.verify_client("user9@example.com", "Summer2026!", "smtp", "192.0.2.9")
    assert "ratelimited" == result.label
    assert calls == len(backend.calls)


async def test_success_exempts_the_address_for_a_while() -> None:
    """After a right password the address's failures are forgiven and not counted until the
    exemption ends."""
    auth, _, clock = make_ip(budget=2, exempt_after_success=100.0)
    await auth.verify_client("alice@example.com", "a", "smtp", "192.0.2.7")
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "192.0.2.7")
    assert Verdict.OK == result.verdict
    for password in ("b", "c", "d"):
        _, delay = await auth.verify_client("alice@example.com", password, "smtp", "192.0.2.7")
        assert 0.0 == delay
    clock.advance(101)
    for password in ("e", "f"):
        await auth.verify_client("bob", password, "smtp", "192.0.2.7")
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "192.0.2.7")
    assert "ratelimited" == result.label


async def test_trusted_networks_and_outages_are_never_counted() -> None:
    """A trusted address is never limited; a check without a verdict adds no penalty."""
    auth, backend, _ = make_ip(budget=1, trusted_networks=("10.0.0.0/8",))
    for password in ("a", "b", "c"):
        _, delay = await auth.verify_client("alice@example.com", password, "smtp", "10.1.2.3")
        assert 0.0 == delay
    backend.down = "timeout"
    for password in ("d", "e"):
        result, delay = await auth.verify_client("bob", password, "smtp", "192.0.2.7")
        assert (Verdict.TEMPFAIL, 0.0) == (result.verdict, delay)
    backend.down = None
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "192.0.2.7")
    assert Verdict.OK == result.verdict


# -- limits that cannot be turned against the real user ------------------------------------


def make_both(
    limits: LimitsConfig, **iplimits: object
) -> tuple[Authenticator, FakeBackend, FakeClock]:
    """An authenticator with per-user limits and per-IP limits as given."""
    clock = FakeClock()
    backend = FakeBackend({"alice@example.com": "right pw"})
    cfg = replace(IpLimitsConfig(), **iplimits)  # type: ignore[arg-type]
    auth = Authenticator(UsersConfig(), backend, clock, limits=limits, iplimits=cfg)
    return auth, backend, clock


async def test_ten_thousand_guesses_from_one_address_leave_the_user_free_elsewhere() -> None:
    """10,000 guesses for one user from one address: IMAP sees the budget's worth, the
    address gets "try later" or NO, and the real user from another address gets OK at once."""
    auth, backend, _ = make_both(LimitsConfig(failure_budget=10), budget=30, base_delay=0.0)
    labels: set[str] = set()
    for n in range(10_000):
        result, _ = await auth.verify_client("alice@example.com", f"g{n}", "smtp", "192.0.2.66")
        labels.add(result.label)
    assert 10 == len(backend.calls)
    assert {"no", "ratelimited"} == labels
    result, delay = await auth.verify_client("alice@example.com", "right pw", "smtp", "198.51.0.7")
    assert (Verdict.OK, 0.0) == (result.verdict, delay)
    assert 11 == len(backend.calls)


async def test_over_the_budget_from_an_address_is_try_later_not_wrong_password() -> None:
    """The right password from the attacker's own address, over its budget, is never NO."""
    auth, backend, _ = make_both(LimitsConfig(failure_budget=3), budget=0, base_delay=0.0)
    for n in range(3):
        await auth.verify_client("alice@example.com", f"g{n}", "smtp", "192.0.2.66")
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "192.0.2.66")
    assert (Verdict.TEMPFAIL, "ratelimited") == (result.verdict, result.label)
    assert 3 == len(backend.calls)


async def test_guesses_spread_over_many_addresses_reach_the_ceiling_then_trickle() -> None:
    """Past the per-user ceiling (all addresses together) one check per interval reaches
    IMAP, so the real user is slowed, never refused."""
    limits = LimitsConfig(failure_budget=5, user_ceiling=20, trickle_interval=5)
    auth, backend, clock = make_both(limits, budget=0, base_delay=0.0)
    for n in range(100):
        await auth.verify_client("alice@example.com", f"g{n}", "smtp", f"192.0.2.{n % 50}")
    assert 21 == len(backend.calls)  # the ceiling, then one trickle slot
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "198.51.100.7")
    assert Verdict.TEMPFAIL == result.verdict
    clock.advance(5)
    result, _ = await auth.verify_client("alice@example.com", "right pw", "smtp", "198.51.100.7")
    assert Verdict.OK == result.verdict


async def test_simultaneous_guesses_from_one_address_stay_within_its_budget() -> None:
    """150 guesses at once (distinct users) from one address: at most the per-IP budget reach
    IMAP; the rest are refused or told to try later while the first are in flight."""
    auth, backend, _ = make_both(LimitsConfig(), budget=30, base_delay=0.0)
    backend.delay = 0.01
    results = await asyncio.gather(*(
        auth.verify_client(f"user{n}@example.com", "guess", "smtp", "192.0.2.66")
        for n in range(150)
    ))  # fmt: skip
    assert 30 == len(backend.calls)
    assert {"no", "ratelimited"} == {r.label for r, _ in results}


async def test_case_variants_from_one_address_are_one_pair() -> None:
    """The per-IP count folds case too: ALICE and alice with one password are one failure."""
    auth, _, _ = make_both(LimitsConfig(), budget=2, base_delay=1.0)
    _, first = await auth.verify_client("alice@example.com", "x", "smtp", "192.0.2.66")
    _, again = await auth.verify_client("ALICE@example.com", "x", "smtp", "192.0.2.66")
    assert (1.0, 1.0) == (first, again)
