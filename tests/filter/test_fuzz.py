"""Property-based tests (hypothesis) of the filter's codecs and of header editing."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from filter import clamd, headers, smtp_out, spamd

FIELD = st.binary(max_size=256)


@given(st.binary(max_size=300))
def test_clamd_reply_parser_is_total(raw: bytes) -> None:
    """Any reply is clean, virus or error; 'clean' only for exactly 'stream: OK'."""
    result = clamd.parse_reply(raw)
    if result.outcome is clamd.Outcome.CLEAN:
        assert raw.rstrip(b"\0").rstrip(b"\r\n").strip() == b"stream: OK"


@given(st.binary(max_size=200_000), st.integers(min_value=1, max_value=70_000))
@settings(max_examples=50)
def test_instream_frames_carry_the_data(data: bytes, chunk: int) -> None:
    """Concatenated chunk payloads are the message, each chunk length-prefixed."""
    frames = list(clamd.frames(data, chunk))
    assert frames[0] == clamd.COMMAND
    assert frames[-1] == clamd.END
    body = b"".join(f[4:] for f in frames[1:-1])
    assert data == body
    assert all(int.from_bytes(f[:4], "big") == len(f) - 4 for f in frames[1:-1])


@given(st.binary(max_size=2000))
def test_spamd_parser_never_crashes(raw: bytes) -> None:
    """Random responses parse or raise SpamdError."""
    with contextlib.suppress(spamd.SpamdError):
        spamd.parse_report(spamd.parse_response(raw))


@given(st.binary(max_size=5000))
def test_smtp_reply_parser_never_crashes(raw: bytes) -> None:
    """Random bytes are a reply, 'need more', or a protocol error."""
    with contextlib.suppress(smtp_out.SmtpProtocolError):
        smtp_out.parse_reply(raw)


@given(st.binary(max_size=5000))
def test_dot_stuffing_round_trips(data: bytes) -> None:
    """Undoing the stuffing gives the message back (line ends as CRLF)."""
    stuffed = smtp_out.dot_stuff(data)
    assert stuffed.endswith(b"\r\n.\r\n" if data else b".\r\n")
    lines = stuffed[: -len(b".\r\n")].split(b"\r\n")
    assert not any(line == b"." for line in lines)


HEADER_LINE = st.from_regex(rb"\A[A-Za-z-]{1,20}: [ -~]{0,60}\Z", fullmatch=True)


@given(
    st.lists(HEADER_LINE, max_size=8),
    st.binary(max_size=3000),
    st.lists(
        st.tuples(st.sampled_from(["X-A", "X-Spam-Status"]), st.text(" abcdef,=[]", max_size=200)),
        max_size=3,
    ),
    st.sampled_from(["", "***SPAM*** "]),
)
def test_header_editing_never_changes_the_body(
    fields: list[bytes], body: bytes, prepend: list[tuple[str, str]], prefix: str
) -> None:
    """Whatever we add, remove or prefix, everything from the empty line on is unchanged."""
    message = b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body
    out = headers.edit(message, prepend, [b"x-spam-flag"], prefix)
    assert out.endswith(b"\r\n" + body)
    assert headers.split(out)[1] == b"\r\n" + body


@given(st.binary(max_size=3000))
def test_header_editing_survives_any_bytes(message: bytes) -> None:
    """Arbitrary bytes never make the editor raise, and the original bytes survive in order."""
    out = headers.edit(message, [("X-Virus-Scanned", "by test")], [], "")
    assert out.endswith(message)
