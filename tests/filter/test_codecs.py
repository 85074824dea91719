"""clamd, spamd and SMTP-reply codecs, pinned with byte literals."""

from __future__ import annotations

import socket
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter import clamd, smtp_out, spamd
from filter.clamd import Outcome, ScanResult
from filter.smtp_out import Reply, SmtpProtocolError


def test_instream_framing() -> None:
    """Command, 4-byte big-endian chunk lengths, zero terminator."""
    assert [b"zINSTREAM\0", b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x00"] == list(
        clamd.frames(b"abc")
    )


def test_instream_chunks_large_data() -> None:
    """Data is cut into chunks of the given size."""
    out = list(clamd.frames(b"x" * 5, chunk=2))
    assert [b"\x00\x00\x00\x02xx", b"\x00\x00\x00\x02xx", b"\x00\x00\x00\x01x"] == out[1:4]


def test_empty_message_is_just_the_terminator() -> None:
    """An empty stream sends no data chunk."""
    assert [b"zINSTREAM\0", b"\0\0\0\0"] == list(clamd.frames(b""))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"stream: OK\0", ScanResult(Outcome.CLEAN)),
        (
            b"stream: Eicar-Test-Signature FOUND\0",
            ScanResult(Outcome.VIRUS, "Eicar-Test-Signature"),
        ),
        (
            b"stream: Win.Test.EICAR_HDB-1 FOUND\0",
            ScanResult(Outcome.VIRUS, "Win.Test.EICAR_HDB-1"),
        ),
        (
            b"stream: Some Name With Spaces FOUND\0",
            ScanResult(Outcome.VIRUS, "Some Name With Spaces"),
        ),
    ],
)
def test_clamd_replies(raw: bytes, expected: ScanResult) -> None:
    """OK is clean, FOUND names the virus."""
    assert expected == clamd.parse_reply(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"fd[10]: OK\0", ScanResult(Outcome.CLEAN)),
        (b"fd[7]: Eicar-Test-Signature.UNOFFICIAL FOUND\0",
         ScanResult(Outcome.VIRUS, "Eicar-Test-Signature.UNOFFICIAL")),
        (b"fd[7]: lstat() failed: Permission denied. ERROR\0",
         ScanResult(Outcome.ERROR, "fd[7]: lstat() failed: Permission denied. ERROR")),
        (b"fd[]: OK\0", ScanResult(Outcome.ERROR, "fd[]: OK")),
        (b"fd[x]: OK\0", ScanResult(Outcome.ERROR, "fd[x]: OK")),
        (b"file: OK\0", ScanResult(Outcome.ERROR, "file: OK")),
    ],
)  # fmt: skip
def test_clamd_fildes_replies(raw: bytes, expected: ScanResult) -> None:
    """FILDES answers: fd[N]: OK is clean, FOUND a virus, anything else not scanned."""
    assert expected == clamd.parse_reply(raw)


def test_clamd_fildes_request_carries_the_descriptor() -> None:
    """The command alone, then one byte with the descriptor as SCM_RIGHTS."""
    command, buffers, ancillary = clamd.fildes_request(7)
    assert b"zFILDES\0" == command
    assert [b"\0"] == buffers
    assert [(socket.SOL_SOCKET, socket.SCM_RIGHTS, (7).to_bytes(4, sys.byteorder))] == ancillary


@pytest.mark.parametrize(
    "raw",
    [
        b"INSTREAM size limit exceeded. ERROR\0",
        b"stream: Can't allocate memory ERROR\0",
        b"UNKNOWN COMMAND\0",
        b"\0",
        b"stream: \0",
        b"FOUND\0",
    ],
)
def test_anything_else_is_not_scanned(raw: bytes) -> None:
    """Errors, size limits and nonsense are 'not scanned', never clean."""
    assert Outcome.ERROR == clamd.parse_reply(raw).outcome


def test_clamd_addresses() -> None:
    """unix:/path and host:port are understood."""
    assert ("unix", "/run/clamd.ctl") == clamd.parse_address("unix:/run/clamd.ctl")
    assert ("127.0.0.1", 3310) == clamd.parse_address("127.0.0.1:3310")
    with pytest.raises(ValueError, match="clamd address"):
        clamd.parse_address("nonsense")


def test_spamd_request_has_exact_length() -> None:
    """Content-length counts the message bytes exactly (8-bit included)."""
    msg = "Subject: é\r\n\r\nbody\r\n".encode()
    req = spamd.encode_request("SYMBOLS", msg, "filter")
    assert req == (b"SYMBOLS SPAMC/1.5\r\nContent-length: 21\r\nUser: filter\r\n\r\n" + msg)


def test_spamd_tell() -> None:
    """TELL carries Message-class and Set (or Remove) local."""
    assert spamd.encode_tell(b"x", "spam") == (
        b"TELL SPAMC/1.5\r\nContent-length: 1\r\nMessage-class: spam\r\nSet: local\r\n\r\nx"
    )
    assert b"Remove: local" in spamd.encode_tell(b"x", "ham", remove=True)


def test_spamd_symbols_response() -> None:
    """Score, threshold and rule names come out of a SYMBOLS response."""
    raw = (
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 19\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
        b"GTUBE,NO_RECEIVED\r\n"
    )
    report = spamd.parse_report(spamd.parse_response(raw))
    assert spamd.SpamReport(True, 1000.0, 5.0, ("GTUBE", "NO_RECEIVED")) == report


def test_spamd_negative_score() -> None:
    """Negative scores parse."""
    raw = b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.1 / 5.0\r\n\r\n"
    assert -0.1 == spamd.parse_report(spamd.parse_response(raw)).score


@pytest.mark.parametrize(
    "raw",
    [
        b"SPAMD/1.0 76 Bad header line: x\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n",
    ],
)
def test_spamd_errors(raw: bytes) -> None:
    """Non-zero codes, missing or unreadable Spam: headers are errors."""
    with pytest.raises(spamd.SpamdError):
        spamd.parse_report(spamd.parse_response(raw))


def test_spamd_garbage_response_line() -> None:
    """A response that is not SPAMD/x is a protocol error."""
    with pytest.raises(spamd.SpamdError):
        spamd.parse_response(b"HTTP/1.1 200 OK\r\n\r\n")


def test_smtp_single_and_multiline_replies() -> None:
    """250-... continuation lines are joined; the rest stays in the buffer."""
    buf = b"250-first\r\n250-second\r\n250 last\r\n354 go"
    reply, used = smtp_out.parse_reply(buf)
    assert (Reply(250, "first second last"), 33) == (reply, used)
    assert (None, 0) == smtp_out.parse_reply(buf[used:])


def test_smtp_garbage_reply() -> None:
    """A line that is not a reply is an error, not a hang."""
    with pytest.raises(SmtpProtocolError):
        smtp_out.parse_reply(b"hello there\r\n")


def test_dot_stuffing() -> None:
    """Leading dots doubled, CRLF enforced, terminator added."""
    assert b"..a\r\nb\r\n..\r\n.\r\n" == smtp_out.dot_stuff(b".a\r\nb\r\n.\r\n")
    assert b"x\r\ny\r\n.\r\n" == smtp_out.dot_stuff(b"x\ny")


def test_dot_stuffing_keeps_crlf_messages_intact() -> None:
    """A CRLF message is changed only by the stuffing itself."""
    body = b"Subject: t\r\n\r\nline one\r\n.dot line\r\nend\r\n"
    assert body.replace(b"\r\n.", b"\r\n..") + b".\r\n" == smtp_out.dot_stuff(body)


def test_xforward_only_offered_attributes() -> None:
    """Attributes the server does not offer are left out; values are xtext-encoded."""
    lines = smtp_out.xforward_lines({"NAME": "a b", "ADDR": "192.0.2.1", "X": "y"}, "NAME ADDR")
    assert [b"XFORWARD NAME=a+20b ADDR=192.0.2.1\r\n"] == lines


def _dot_stuff_by_copy(data: bytes) -> bytes:
    """dot_stuff as first written: bare LFs found by searching a copy without CRLFs."""
    if b"\r\n" not in data or b"\n" in data.replace(b"\r\n", b""):
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


@settings(max_examples=2000)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"x", b"\r\r\n\n"]), max_size=12))
def test_dot_stuffing_counts_bare_lfs_as_the_copy_did(pieces: list[bytes]) -> None:
    """Any mix of CR, LF, CRLF and dots: the same payload as the copying version."""
    data = b"".join(pieces)
    assert _dot_stuff_by_copy(data) == smtp_out.dot_stuff(data)


@settings(max_examples=2000)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"x", b"\r\r\n\n"]), max_size=12))
def test_dot_stuffing_hint_changes_nothing_when_true(pieces: list[bytes]) -> None:
    """dot_lines=False for data with no CRLF-dot: the same payload, bare-LF dots included."""
    data = b"".join(pieces)
    if b"\r\n." not in data:
        assert smtp_out.dot_stuff(data) == smtp_out.dot_stuff(data, dot_lines=False)


def test_dot_stuffing_hint_still_stuffs_after_a_bare_lf() -> None:
    """A dot after a bare LF becomes a line start once normalised: it is doubled anyway."""
    assert b"a\r\n..\r\nb\r\n.\r\n" == smtp_out.dot_stuff(b"a\n.\r\nb", dot_lines=False)


def test_clamd_bare_ok_is_not_clean() -> None:
    """A reply of just "OK" (not clamd's "stream: OK") is an error, never clean."""
    assert clamd.Outcome.ERROR == clamd.parse_reply(b"OK\0").outcome
