"""Dovecot auth protocol codec and mechanisms (byte literals), and per-IP limits (fake clock)."""

from __future__ import annotations

import pytest

from saslimap import dovecot_proto as proto
from saslimap.limits import IpLimiter, network_key
from tests.clock import FakeClock


def test_handshake_lists_plain_and_login_then_done() -> None:
    """VERSION first, MECH lines marked plaintext, DONE last."""
    lines = proto.handshake(7).decode().splitlines()
    assert "VERSION\t1\t2" == lines[0]
    assert ["MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext"] == lines[1:3]
    assert "CUID\t7" in lines
    assert "DONE" == lines[-1]


def test_postfix_auth_line() -> None:
    """Postfix's AUTH line: id, mechanism, parameters, flags and the decoded response."""
    line = (
        b"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.7"
        b"\tsecured\tresp=AGFsaWNlAHB3"
    )
    auth = proto.parse_line(line)
    assert isinstance(auth, proto.Auth)
    assert ("1", "PLAIN", "smtp", "192.0.2.7") == (
        auth.id,
        auth.mechanism,
        auth.service,
        auth.client_ip,
    )
    assert {"nologin", "secured"} == set(auth.flags)
    assert b"\0alice\0pw" == auth.resp


@pytest.mark.parametrize(
    "line",
    [
        b"AUTH\tx\tPLAIN",
        b"AUTH\t1",
        b"CONT\t1",
        b"CONT\t1\t!!!",
        b"HELLO",
        b"AUTH\t1\tPLAIN\tresp=@@",
        b"\xff",
    ],
)
def test_bad_lines_are_protocol_errors(line: bytes) -> None:
    """Malformed lines raise; the connection is then closed."""
    with pytest.raises(proto.DovecotProtocolError):
        proto.parse_line(line)


def test_replies() -> None:
    """OK, FAIL (with temp for outages) and CONT as Postfix parses them; no TAB smuggling."""
    assert b"OK\t3\tuser=alice@example.com\n" == proto.ok("3", "alice@example.com")
    assert b"FAIL\t3\ttemp\treason=IMAP down\tuser=a\n" == proto.fail(
        "3", "IMAP down", user="a", temp=True
    )
    assert b"FAIL\t3\treason=x?y\n" == proto.fail("3", "x\ty")
    assert b"CONT\t3\tVXNlcm5hbWU6\n" == proto.cont("3", b"Username:")


def test_plain_mechanism() -> None:
    """PLAIN: an empty challenge without initial response, then the credentials."""
    mech = proto.Mechanism("PLAIN")
    assert b"" == mech.step(None)
    assert proto.Credentials("alice", "p w") == mech.step(b"\0alice\0p w")


def test_plain_rejects_other_authzid() -> None:
    """Acting as another user (authzid) is refused."""
    with pytest.raises(proto.DovecotProtocolError):
        proto.Mechanism("PLAIN").step(b"admin\0alice\0pw")


def test_login_mechanism() -> None:
    """LOGIN: Username: then Password: prompts."""
    mech = proto.Mechanism("LOGIN")
    assert b"Username:" == mech.step(None)
    assert b"Password:" == mech.step(b"alice")
    assert proto.Credentials("alice", "secret") == mech.step(b"secret")


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
