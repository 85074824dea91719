"""The saslauthd codec, pinned with byte literals."""

from __future__ import annotations

import pytest

from saslimap import protocol
from saslimap.protocol import FieldTooLong, Request, parse_request

FOUR = b"\x00\x05alice\x00\x06s3cret\x00\x04smtp\x00\x0bexample.com"


def test_four_fields_make_a_request() -> None:
    """Login, password, service and realm are read as counted strings."""
    parsed = parse_request(FOUR)
    assert parsed is not None
    assert Request(b"alice", b"s3cret", b"smtp", b"example.com") == parsed.request
    assert len(FOUR) == parsed.consumed


def test_fifth_field_is_taken_when_present() -> None:
    """Newer libsasl sends the client address as a fifth field."""
    parsed = parse_request(FOUR + b"\x00\x09192.0.2.1")
    assert parsed is not None
    assert b"192.0.2.1" == parsed.request.client_addr


def test_partial_fifth_field_is_not_waited_for() -> None:
    """A request is complete after four fields; a half-arrived fifth is ignored."""
    parsed = parse_request(FOUR + b"\x00\x09192")
    assert parsed is not None
    assert parsed.request.client_addr is None
    assert len(FOUR) == parsed.consumed


def test_empty_fields_are_valid_framing() -> None:
    """Zero-length strings are legal on the wire (policy refuses empty logins later)."""
    parsed = parse_request(b"\x00\x00\x00\x00\x00\x00\x00\x00")
    assert parsed is not None
    assert Request(b"", b"", b"", b"") == parsed.request


@pytest.mark.parametrize("cut", range(len(FOUR)))
def test_truncated_request_needs_more(cut: int) -> None:
    """Any prefix of a request is incomplete, not an error."""
    assert parse_request(FOUR[:cut]) is None


def test_oversized_field_is_refused_from_its_length_alone() -> None:
    """A length over the limit raises before the value arrives, naming the field."""
    with pytest.raises(FieldTooLong) as info:
        parse_request(b"\x00\x05alice\x01\x01")
    assert "password" == info.value.name
    assert 257 == info.value.length


def test_limit_is_inclusive() -> None:
    """A 256-byte field is allowed, like saslauthd's MAX_REQ_LEN."""
    login = b"a" * 256
    parsed = parse_request(b"\x01\x00" + login + b"\x00\x01p\x00\x00\x00\x00")
    assert parsed is not None
    assert login == parsed.request.login


def test_oversized_fifth_field_does_not_spoil_the_request() -> None:
    """The optional address field is ignored when it claims too many bytes."""
    parsed = parse_request(FOUR + b"\xff\xff")
    assert parsed is not None
    assert parsed.request.client_addr is None


def test_garbage_is_either_incomplete_or_too_long() -> None:
    """Random high bytes read as huge lengths and are refused, never crash."""
    with pytest.raises(FieldTooLong):
        parse_request(b"\xde\xad\xbe\xef" * 4)


def test_password_is_not_in_repr() -> None:
    """A request's repr (e.g. in a traceback) leaves the password out."""
    assert "s3cret" not in repr(Request(b"alice", b"s3cret", b"smtp", b""))


def test_ok_reply_frame() -> None:
    """Success is the counted string OK."""
    assert b"\x00\x02OK" == protocol.reply_ok()


def test_no_reply_frame() -> None:
    """Failure is NO followed by the reason."""
    assert b"\x00\x0bNO bad pass" == protocol.reply_no("bad pass")


def test_no_reply_never_carries_control_characters() -> None:
    """Reasons are reduced to printable ASCII."""
    assert b"\x00\x0aNO a?b?c??" == protocol.reply_no("a\rb\nc\x00\u00fc")


def test_reply_is_cut_to_libsasl_buffer() -> None:
    """libsasl reads at most 1023 bytes of reply text."""
    frame = protocol.reply_no("x" * 5000)
    assert b"\x03\xff" == frame[:2]
    assert 2 + 1023 == len(frame)


def test_reply_parsing() -> None:
    """The client side reads a counted reply and tells OK from anything else."""
    assert protocol.parse_reply(b"\x00\x02O") is None
    assert b"OK" == protocol.parse_reply(b"\x00\x02OK")
    assert protocol.reply_is_ok(b"OK")
    assert not protocol.reply_is_ok(b"NO OK")


def test_encode_request_round_trips() -> None:
    """What the client encodes, the server decodes."""
    frame = protocol.encode_request(b"alice", b"s3cret", b"smtp", b"example.com")
    assert FOUR == frame
