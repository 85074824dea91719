"""Header editing as bytes: the body never changes, broken input never raises."""

from __future__ import annotations

import pytest

from filter import headers
from filter.scanning import bad_header

MSG = b"Received: from x\r\nSubject: Hello\r\n world\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n.dot\r\n"


def test_prepend_keeps_everything_else() -> None:
    """New fields go first; the old header and the body are byte-identical."""
    out = headers.edit(MSG, [("X-Virus-Scanned", "by f at h")])
    assert b"X-Virus-Scanned: by f at h\r\n" + MSG == out


def test_forged_spam_headers_are_removed() -> None:
    """A sender's own X-Spam-Flag is dropped, nothing else."""
    out = headers.edit(MSG, [], [b"x-spam-flag"])
    assert b"X-Spam-Flag" not in out
    assert out.endswith(b"\r\n\r\nbody\r\n.dot\r\n")


def test_subject_prefix_keeps_folding() -> None:
    """The prefix goes before the (folded) subject text, which is not re-folded."""
    out = headers.edit(MSG, [], [], "***SPAM*** ")
    assert b"Subject: ***SPAM*** Hello\r\n world\r\n" in out


def test_subject_prefix_not_doubled() -> None:
    """A subject already carrying the prefix is left alone."""
    once = headers.edit(MSG, [], [], "***SPAM*** ")
    assert once == headers.edit(once, [], [], "***SPAM*** ")


def test_missing_subject_gets_one() -> None:
    """A message without Subject gets one holding the prefix."""
    out = headers.edit(b"From: a@b\r\n\r\nx", [], [], "***SPAM*** ")
    assert b"From: a@b\r\nSubject: ***SPAM***\r\n\r\nx" == out


def test_lf_only_message_keeps_its_line_ends() -> None:
    """New fields use the message's own line ending."""
    out = headers.edit(b"Subject: s\n\nbody\n", [("A", "b")])
    assert b"A: b\nSubject: s\n\nbody\n" == out


def test_long_values_are_folded() -> None:
    """Our own long fields are folded under 78 columns at spaces."""
    value = "No, score=1.0 tests=[" + ", ".join(f"RULE_NUMBER_{n}" for n in range(12)) + "]"
    field = headers.fold("X-Spam-Status", value)
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    assert field.replace(b"\r\n\t", b" ") == f"X-Spam-Status: {value}\r\n".encode()


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"no header at all, just text\r\n",
        b"Subject: no body",
        b"\r\nbody only",
        b"Subject: \xff\xfe 8-bit\r\n\r\n\x00\x01 NUL body",
        b"X: " + b"a" * 5000 + b"\r\n\r\nlong line",
        b" continuation first\r\nSubject: x\r\n\r\nb",
        b"Broken header without colon\r\nSubject: x\r\n\r\nb",
    ],
)
def test_broken_messages_keep_their_bytes(message: bytes) -> None:
    """Whatever arrives, the original bytes survive after our new fields."""
    out = headers.edit(message, [("X-Virus-Scanned", "by f")])
    assert out.startswith(b"X-Virus-Scanned: by f\r\n")
    rest = out[len(b"X-Virus-Scanned: by f\r\n") :]
    assert rest in (message, b"\r\n" + message)


@pytest.mark.parametrize(
    ("message", "allow_8bit", "why"),
    [
        (b"Subject: hi\r\n\r\nbody \xff\r\n", False, ""),
        (b"Subject: h\xc3\xa9\r\n\r\nbody\r\n", False, "non-encoded 8-bit data in header"),
        (b"Subject: h\xc3\xa9\r\n\r\nbody\r\n", True, ""),
        (b"Subject: a\0b\r\n\r\n", True, "NUL character in header"),
        (b"X: " + b"x" * 995 + b"\r\n\r\n", False, ""),
        (b"X: " + b"x" * 996 + b"\r\n\r\n", False, "header line longer than 998 characters"),
        (b"X: y\r\n" + b"Y: " + b"x" * 996 + b"\r\n\r\n", False,
         "header line longer than 998 characters"),
        (b"X: y\r\n\r\n" + b"x" * 5000 + b"\r\n", False, ""),
    ],
)  # fmt: skip
def test_bad_header_reasons(message: bytes, allow_8bit: bool, why: str) -> None:
    """NUL, unencoded 8-bit (unless SMTPUTF8) and lines over 998 in the header; never the body."""
    assert why == bad_header(message, allow_8bit=allow_8bit)


def test_split_remembered_for_one_message_never_leaks_into_another() -> None:
    """Alternating messages, and editing one twice, give the answers a fresh split would."""
    a = b"Subject: a\r\nFrom: <x@a>\r\n\r\nbody a\r\n"
    b = b"Subject: b\r\n\r\nbody b\r\n"
    for _ in range(2):
        assert (b"Subject: a\r\nFrom: <x@a>\r\n", b"\r\nbody a\r\n") == headers.split(a)
        assert b"Subject: b\r\n" == headers.first_field(b, b"subject")
        assert b"From: <x@a>\r\n" == headers.first_field(a, b"from")
    tagged = headers.edit(a, subject_prefix="[x] ")
    assert tagged == headers.edit(a, subject_prefix="[x] ")
    assert b"Subject: [x] a\r\n" == headers.first_field(tagged, b"subject")
    assert b"Subject: a\r\n" == headers.first_field(a, b"subject")


def test_forged_fields_after_a_first_line_that_is_no_field_stay_body() -> None:
    """No header section (first line no field): our fields, an empty line, then it all as body.

    Nothing is stripped, and nothing needs to be: a mail client reads the forged
    "fields" after our empty line as body text, never as header fields.
    """
    raw = b"not a field\r\nX-Spam-Flag: NO\r\nX-Virus-Scanned: forged\r\n\r\nbody\r\n"
    out = headers.edit(raw, [("X-Virus-Scanned", "by us")], remove_prefixes=(b"x-virus-",))
    head, rest = headers.split(out)
    assert b"X-Virus-Scanned: by us\r\n" == head
    assert b"\r\n" + raw == rest
