"""amavisd-new lookup order, list files, and banned attachment detection."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter.banned import ArchiveInside, find_banned, may_nest, parse
from filter.lookup import AddressList, ListError, lookup_keys
from tests.filter.samples import attach, zipped


def test_lookup_order_is_amavis() -> None:
    """user+ext@sub.dom, user@sub.dom, user+ext@, user@, sub.dom, .sub.dom, .dom, ."""
    assert [
        "user+ext@sub.dom.tld",
        "user@sub.dom.tld",
        "user+ext@",
        "user@",
        "sub.dom.tld",
        ".sub.dom.tld",
        ".dom.tld",
        ".tld",
        ".",
    ] == lookup_keys("User+Ext@Sub.Dom.TLD")


@pytest.mark.parametrize(
    ("entry", "sender", "listed"),
    [
        ("user+ext@sub.dom", "user+ext@sub.dom", True),
        ("user+ext@sub.dom", "user@sub.dom", False),
        ("user@sub.dom", "user+anything@sub.dom", True),
        ("user+ext@", "user+ext@elsewhere.test", True),
        ("user@", "user@anywhere.test", True),
        ("sub.dom", "x@sub.dom", True),
        ("sub.dom", "x@deeper.sub.dom", False),
        (".sub.dom", "x@deeper.sub.dom", True),
        (".sub.dom", "x@sub.dom", True),
        (".dom", "x@a.b.dom", True),
        (".", "anyone@anywhere.test", True),
        ("other.dom", "x@sub.dom", False),
    ],
)
def test_each_lookup_form(entry: str, sender: str, listed: bool) -> None:
    """Every entry form matches what amavisd-new's would, and nothing more."""
    assert listed == AddressList.parse("t", [entry]).contains(sender)


def test_per_recipient_entries() -> None:
    """SENDER RECIPIENT applies to that recipient (by lookup too) only."""
    lst = AddressList.parse(
        "t", ["news@shop.test  bob@example.com", "# comment", "", ".partner.test"]
    )
    assert lst.contains("news@shop.test", "bob@example.com")
    assert not lst.contains("news@shop.test", "alice@example.com")
    assert lst.contains("x@mail.partner.test", "alice@example.com")


def test_bad_line_names_file_and_line() -> None:
    """A bad line is reported with its file and line number."""
    with pytest.raises(ListError, match=r"whitelist:3: "):
        AddressList.parse("whitelist", ["a@b", "# ok", "a@b@c"])


@pytest.mark.parametrize(
    ("data", "filename", "ctype"),
    [
        (b"hello", "invoice.exe", "application/octet-stream"),
        (b"hello", "invoice.pdf.exe", "application/pdf"),
        (b"hello", "run.JS", "text/plain"),
        (b"MZ\x90\x00 program", "harmless.txt", "text/plain"),
        (b"x", "setup.bin", "application/x-msdownload"),
    ],
)
def test_banned_by_name_and_type(data: bytes, filename: str, ctype: str) -> None:
    """Executables are found by name, double extension, declared and detected type."""
    assert find_banned(attach(data, filename, ctype)) is not None


def test_banned_inside_nestedzipped() -> None:
    """An .exe two zips deep is found."""
    nested = zipped("outer.zip", zipped("evil.exe", b"MZ payload"))
    reason = find_banned(attach(nested, "docs.zip", "application/zip"))
    assert reason is not None
    assert "evil.exe" in reason


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"%PDF-1.7 ...", "report.pdf"),
        (b"\x1f\x8b data", "report.pdf.gz"),
        (zipped("a.txt", b"hi"), "a.zip"),
    ],
)
def test_harmless_attachments_pass(data: bytes, filename: str) -> None:
    """PDFs, compressed documents and zips of text are not banned."""
    assert find_banned(attach(data, filename)) is None


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nbroken",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all",
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!",
        attach(b"PK\x03\x04 truncated zip", "x.zip", "application/zip"),
    ],
)
def test_broken_mime_never_raises(message: bytes) -> None:
    """Broken MIME, bad base64 and corrupt zips are looked at, never a crash."""
    find_banned(message)


_SAMPLES = [
    b"",
    b"Subject: plain\r\n\r\nno MIME at all\r\n",
    b"Subject: x\r\n\r\n#!/bin/sh\r\n",
    attach(b"hello", "invoice.exe"),
    attach(b"MZ\x90\x00 program", "harmless.txt", "text/plain"),
    attach(b"%PDF-1.7 ...", "report.pdf"),
    attach(zipped("a.txt", b"hi"), "a.zip"),
    attach(zipped("evil.exe", b"MZ"), "docs.bin"),
    attach(b"not a zip", "fake.ZIP"),
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nbroken",
]


@pytest.mark.parametrize("message", _SAMPLES)
def test_without_opening_archives_the_answer_is_the_same_or_deferred(message: bytes) -> None:
    """open_archives=False answers as the full check does, or raises ArchiveInside."""
    try:
        quick = find_banned(message, open_archives=False)
    except ArchiveInside:
        return
    assert find_banned(message) == quick


@pytest.mark.parametrize("name", ["a.zip", "docs.bin"])
def test_an_archive_is_never_judged_without_opening_it(name: str) -> None:
    """A zip, by name or by content, raises ArchiveInside rather than passing unopened."""
    with pytest.raises(ArchiveInside):
        find_banned(attach(zipped("evil.exe", b"MZ"), name), open_archives=False)


def test_a_banned_part_before_an_archive_is_found_without_opening_it() -> None:
    """Parts are judged in order: an .exe ahead of a zip needs no archive opened."""
    msg = EmailMessage()
    msg.set_content("see attached")
    msg.add_attachment(b"x", maintype="application", subtype="octet-stream", filename="a.exe")
    archive = zipped("b.txt", b"hi")
    msg.add_attachment(archive, maintype="application", subtype="zip", filename="b.zip")
    assert "a.exe" in (find_banned(msg.as_bytes(), open_archives=False) or "")


def _seen(msg: Message) -> list[tuple[object, ...]]:
    """What find_banned looks at in each leaf part, plus the headers."""
    return [
        (n, part.items(), part.get_content_type(), part.get_filename(), part.get_param("name"),
         part.get_payload(), part.get_payload(decode=True))
        for n, part in enumerate(msg.walk())
        if not part.is_multipart()
    ]  # fmt: skip


_HEAD_LINES = st.sampled_from(
    [
        b"From: a@b", b"Subject: hi", b"Content-Type: text/plain; name=x.exe",
        b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: message/rfc822",
        b"Content-Type: application/octet-stream", b"Content-Transfer-Encoding: base64",
        b"Content-Disposition: attachment; filename=a.exe", b" folded continuation",
        b"not a header line", b"From nobody", b"X: \xff\xfe", b"", b"Content-Type: bogus",
    ]
)  # fmt: skip
_BODY_LINES = st.sampled_from(
    [b"", b"--b", b"--b--", b"TVqQAAMAAAAEAAAA", b"MZ", b"text", b"Content-Type: text/html",
     b"\x00\xff", b"a\rb", b"#!/bin/sh"]
)  # fmt: skip
_ENDS = st.sampled_from([b"\r\n", b"\n", b"\r"])


@settings(max_examples=1500)
@given(
    st.lists(st.tuples(_HEAD_LINES, _ENDS), max_size=6),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n", b""]),
    st.lists(st.tuples(_BODY_LINES, _ENDS), max_size=8),
)
def test_quick_parse_sees_what_the_email_parser_sees(
    head: list[tuple[bytes, bytes]], gap: bytes, body: list[tuple[bytes, bytes]]
) -> None:
    """Any header and body lines, any line ends: every part, header and payload identical."""
    raw = b"".join(a + b for a, b in head) + gap + b"".join(a + b for a, b in body)
    full = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert _seen(full) == _seen(parse(raw))


def test_quick_parse_keeps_a_large_single_part_body_whole() -> None:
    """A 100 KB text message: same headers and the body byte for byte."""
    raw = b"From: a@b\r\nSubject: s\r\n\r\n" + b"1" + b"X" * 77 + b"\r\n" * 1300
    assert raw.split(b"\r\n\r\n", 1)[1] == parse(raw).get_payload(decode=True)
    assert _seen(email.message_from_bytes(raw, policy=email.policy.compat32)) == _seen(parse(raw))


_NEST_HEAD_LINES = st.sampled_from(
    [
        b"From: a@b", b"Message-Id: <m@b>", b"Content-Type: MULTIPART/Mixed; boundary=b",
        b"Content-Type:message/rfc822", b"Content-Type : multipart/mixed", b"content-type: text/x",
        b"Content-Type: multi", b" part/mixed", b" multipart/alternative", b"X: message/x",
        b"not a header line", b"From nobody", b"X: \xff\xfe", b"", b"Content-Type: bogus",
    ]
)  # fmt: skip


@settings(max_examples=1500)
@given(
    st.lists(st.tuples(_NEST_HEAD_LINES, _ENDS), max_size=7),
    st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n", b""]),
    st.lists(st.tuples(_BODY_LINES, _ENDS), max_size=4),
)
def test_may_nest_is_never_wrong_about_a_nesting_message(
    head: list[tuple[bytes, bytes]], gap: bytes, body: list[tuple[bytes, bytes]]
) -> None:
    """Whenever the email parser sees multipart/* or message/*, may_nest says it might."""
    raw = b"".join(a + b for a, b in head) + gap + b"".join(a + b for a, b in body)
    full = email.message_from_bytes(raw, policy=email.policy.compat32)
    if full.get_content_maintype() in ("multipart", "message"):
        assert may_nest(raw)


def test_may_nest_passes_a_plain_message() -> None:
    """A plain message with a Message-Id and a long body is one part."""
    raw = b"Message-Id: <a@b>\r\nContent-Type: text/plain\r\n\r\n" + b"multipart/x\r\n" * 100
    assert not may_nest(raw)
