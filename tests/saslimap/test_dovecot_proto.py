"""Dovecot auth protocol codec and mechanisms (byte literals)."""

from __future__ import annotations

import pytest

from saslimap import dovecot_proto as proto


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
