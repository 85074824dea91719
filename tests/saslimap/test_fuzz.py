"""Property-based tests (hypothesis) of the saslauthd codec."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from saslimap import protocol

FIELD = st.binary(max_size=256)


@given(FIELD, FIELD, FIELD, FIELD, st.none() | FIELD)
def test_saslauthd_round_trip(
    login: bytes, pw: bytes, svc: bytes, realm: bytes, addr: bytes | None
) -> None:
    """Whatever libsasl encodes within the limits, the server decodes back exactly."""
    frame = protocol.encode_request(login, pw, svc, realm, addr)
    parsed = protocol.parse_request(frame)
    assert parsed is not None
    assert (login, pw, svc, realm, addr) == (
        parsed.request.login, parsed.request.password, parsed.request.service,
        parsed.request.realm, parsed.request.client_addr,
    )  # fmt: skip
    assert len(frame) == parsed.consumed


@given(st.binary(max_size=2000), st.integers(min_value=16, max_value=512))
def test_saslauthd_parser_never_crashes(data: bytes, limit: int) -> None:
    """Random bytes give a request, 'need more', or FieldTooLong; nothing else."""
    try:
        parsed = protocol.parse_request(data, limit)
    except protocol.FieldTooLong:
        return
    if parsed is not None:
        assert parsed.consumed <= len(data)
        assert all(len(f) <= limit for f in (parsed.request.login, parsed.request.password))


@given(st.text(max_size=2000))
def test_no_reply_never_looks_like_ok(reason: str) -> None:
    """A NO reply can never be read as OK by libsasl, whatever the reason text."""
    frame = protocol.reply_no(reason)
    reply = protocol.parse_reply(frame)
    assert reply is not None
    assert not protocol.reply_is_ok(reply)
    assert len(frame) <= 2 + protocol.MAX_REPLY
