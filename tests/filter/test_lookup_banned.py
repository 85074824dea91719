"""amavisd-new lookup order, list files, and banned attachment detection."""

from __future__ import annotations

import io
import zipfile
from email.message import EmailMessage

import pytest

from filter.banned import find_banned
from filter.lookup import AddressList, ListError, lookup_keys


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


def _with_attachment(data: bytes, filename: str, ctype: str = "application/octet-stream") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@b", "c@d", "att"
    msg.set_content("see attached")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


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
    assert find_banned(_with_attachment(data, filename, ctype)) is not None


def test_banned_inside_nested_zip() -> None:
    """An .exe two zips deep is found."""
    nested = _zip("outer.zip", _zip("evil.exe", b"MZ payload"))
    reason = find_banned(_with_attachment(nested, "docs.zip", "application/zip"))
    assert reason is not None
    assert "evil.exe" in reason


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"%PDF-1.7 ...", "report.pdf"),
        (b"\x1f\x8b data", "report.pdf.gz"),
        (_zip("a.txt", b"hi"), "a.zip"),
    ],
)
def test_harmless_attachments_pass(data: bytes, filename: str) -> None:
    """PDFs, compressed documents and zips of text are not banned."""
    assert find_banned(_with_attachment(data, filename)) is None


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nbroken",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary at all",
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!",
        _with_attachment(b"PK\x03\x04 truncated zip", "x.zip", "application/zip"),
    ],
)
def test_broken_mime_never_raises(message: bytes) -> None:
    """Broken MIME, bad base64 and corrupt zips are looked at, never a crash."""
    find_banned(message)
