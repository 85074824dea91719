"""Issue 14's bypasses of the banned check, and the unchecked verdict, each built as attacked."""

from __future__ import annotations

import base64
import io
import logging
import struct
import subprocess
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest

from filter.banned import Inspection, Limits, inspect
from filter.clamd import Outcome, ScanResult
from filter.config import BannedConfig, Config, ServerConfig
from filter.lookup import AddressList
from filter.message import Message
from filter.metrics import Metrics
from filter.policy import Lists
from filter.qdir import DirectoryStore
from filter.qstore import Query
from filter.service import Filter
from filter.signatures import sniff
from filter.spool import Spool
from tests.filter.fakes import FakeClamd, FakeForwarder, FakeSpamd
from tests.filter.samples import attach, zipped

HEAD = b"From: a@example.net\r\nTo: b@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\n"


def mixed(*parts: bytes, boundary: bytes = b"b1", extra: bytes = b"") -> bytes:
    """A multipart/mixed message of raw parts (header lines and body each)."""
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    head = HEAD + b'Content-Type: multipart/mixed; boundary="' + boundary + b'"' + extra
    return head + b"\r\n\r\n" + body + b"--" + boundary + b"--\r\n"


def seven_zip(workdir: Path, *args: str, files: dict[str, bytes]) -> bytes:
    """An archive made by the real 7z tool from ``files``."""
    for name, data in files.items():
        (workdir / name).write_bytes(data)
    out = workdir / "out.archive"
    out.unlink(missing_ok=True)
    subprocess.run(
        ["7z", "a", "-bd", "-y", *args, str(out), *files], cwd=workdir, check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


@pytest.fixture
def workdir() -> Path:
    """A temporary directory for the archive tools."""
    return Path(tempfile.mkdtemp(prefix="insp"))


DEEP = HEAD + b"".join(
    b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(2000)
)
"""2,000 multiparts nested in each other (the RecursionError of issue 14)."""


# --- names as mail clients decode them ------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        b'Content-Disposition: attachment; filename="=?utf-8?B?ZXZpbC5qcw==?="',
        b'Content-Type: application/octet-stream; name="=?iso-8859-1?Q?evil=2Evbs?="',
        b"Content-Type: text/plain; name==?UTF-8?q?run.hta?=",
        b"Content-Disposition: attachment; filename*=utf-8''%65vil.bat",
        b'Content-Disposition: attachment; filename="=?koi8-r?B?c2NyaXB0?= =?utf-8?Q?.ps1?="',
    ],
)
def test_encoded_names_are_decoded(field: bytes) -> None:
    """RFC 2047 B and Q words (any charset, split words) and RFC 2231 names are checked."""
    raw = mixed(b"Content-Type: text/plain\r\n\r\nhi", field + b"\r\n\r\nalert(1)")
    assert inspect(raw).banned


@pytest.mark.parametrize(
    "fields",
    [
        b'Content-Type: text/plain; name="evil.js"\r\nContent-Disposition: attachment; '
        b'filename="a.txt"',
        b'Content-Disposition: attachment; filename="a.txt"\r\n'
        b'Content-Disposition: attachment; filename="evil.js"',
        b"Content-Type: text/plain\r\nContent-Type: application/x-msdownload",
        b'Content-Disposition: attachment; filename="a.txt"; filename="evil.vbs"',
    ],
)
def test_every_declared_name_and_type_counts(fields: bytes) -> None:
    """Both parameters, duplicate fields and duplicate parameters are all checked."""
    assert inspect(mixed(fields + b"\r\n\r\nx")).banned


def test_a_second_boundary_is_a_second_reading() -> None:
    """A part hidden from the first boundary's reading is found under the second."""
    evil = b'Content-Disposition: attachment; filename="evil.exe"\r\n\r\nMZ'
    body = (
        b"--one\r\nContent-Type: text/plain\r\n\r\nharmless\r\n"
        b"--two\r\n" + evil + b"\r\n--two--\r\n--one--\r\n"
    )
    raw = HEAD + b'Content-Type: multipart/mixed; boundary="one"; boundary="two"\r\n\r\n' + body
    assert "evil.exe" in inspect(raw).banned


def test_a_second_content_type_is_a_second_reading() -> None:
    """Two Content-Type fields, one multipart, one not: both readings are judged."""
    evil = b'--x\r\nContent-Disposition: attachment; filename="evil.exe"\r\n\r\nMZ\r\n--x--\r\n'
    raw = HEAD + b"Content-Type: text/plain\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
    assert "evil.exe" in inspect(raw + evil).banned


def test_base64_spelling_variants_are_decoded() -> None:
    """Content-Transfer-Encoding: base-64 still reveals a zip holding an .exe."""
    data = base64.encodebytes(zipped("evil.exe", b"MZ payload"))
    part = (
        b'Content-Type: application/octet-stream; name="notes.dat"\r\n'
        b"Content-Transfer-Encoding: Base-64\r\n\r\n" + data
    )
    assert "evil.exe" in inspect(mixed(part)).banned


# --- archives found by content, in more formats ----------------------------------------


@pytest.mark.parametrize("prefix", [b"", b"junk!", b"%PDF-1.4 not really\r\n" * 3])
def test_zip_with_a_prefix_under_a_harmless_name(prefix: bytes) -> None:
    """A zip after a prefix, attached as a .txt, is opened all the same."""
    raw = attach(prefix + zipped("evil.exe", b"MZ"), "readme.txt", "text/plain")
    assert "evil.exe" in inspect(raw).banned


def test_plain_7z_made_by_7z_is_opened(workdir: Path) -> None:
    """A 7z archive (real 7z tool) is listed: its .exe member is banned."""
    archive = seven_zip(workdir, "-t7z", files={"evil.exe": b"MZ payload"})
    assert "evil.exe" in inspect(attach(archive, "photos.dat")).banned


def test_7z_with_encrypted_headers_is_unchecked(workdir: Path) -> None:
    """A 7z with encrypted names (-mhe=on) cannot be listed: unchecked, never clean."""
    archive = seven_zip(workdir, "-t7z", "-pSecret1", "-mhe=on", files={"evil.exe": b"MZ"})
    found = inspect(attach(archive, "photos.7z"))
    assert ("", True) == (found.banned, "encrypted" in found.unchecked)


def test_encrypted_zip_holding_an_archive_is_unchecked(workdir: Path) -> None:
    """An encrypted zip's members cannot be read: the archive inside is not let through."""
    inner = zipped("evil.exe", b"MZ")
    archive = seven_zip(workdir, "-tzip", "-pSecret1", files={"inner.zip": inner})
    found = inspect(attach(archive, "docs.zip"))
    assert "" == found.banned
    assert "encrypted" in found.unchecked


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["tar", "czf", "out", "evil.exe"], "a.tgz"),
        (["tar", "cJf", "out", "evil.exe"], "a.tar.xz"),
        (["tar", "cjf", "out", "evil.exe"], "a.tar.bz2"),
        (["gcab", "-c", "out", "evil.exe"], "a.cab"),
        (["arj", "a", "-m0", "-y", "out", "evil.exe"], "a.arj"),
    ],
)
def test_more_formats_are_listed(workdir: Path, command: list[str], name: str) -> None:
    """tar (gzip, xz, bzip2), cab and arj members made by the real tools are checked."""
    (workdir / "evil.exe").write_bytes(b"MZ payload")
    subprocess.run(command, cwd=workdir, check=True, capture_output=True, timeout=60)
    made = next(p for p in workdir.iterdir() if p.name.startswith("out"))
    assert "evil.exe" in inspect(attach(made.read_bytes(), name)).banned


@pytest.mark.parametrize("prefix", [b"SFX stub" + bytes(range(256)) * 4, b"\x60\xea\x01"])
def test_arj_after_a_prefix_under_a_harmless_name(workdir: Path, prefix: bytes) -> None:
    """An ARJ archive after a stub (a self-extractor), attached as .dat, is listed."""
    (workdir / "evil.exe").write_bytes(b"MZ payload")
    subprocess.run(
        ["arj", "a", "-m0", "-y", "out", "evil.exe"],
        cwd=workdir, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    made = next(p for p in workdir.iterdir() if p.name.startswith("out"))
    found = inspect(attach(prefix + made.read_bytes(), "report.dat"))
    assert "evil.exe" in found.banned


def test_arj_magic_by_chance_is_no_archive() -> None:
    """The two ARJ magic bytes in random binary data, without a valid header CRC, are no archive."""
    data = bytes(range(256)) + b"\x60\xea\x10\x00" + bytes(40) + b"\x00" * 8
    assert sniff(data) is None


# --- limits: past them, unchecked -------------------------------------------------------


@pytest.mark.parametrize("depth", [5, 6])
def test_zip_nested_past_the_depth_is_unchecked(depth: int) -> None:
    """A harmless-looking zip nested 5 or 6 deep is unchecked, not clean."""
    data = zipped("evil.exe", b"MZ")
    for level in range(depth - 1):
        data = zipped(f"level{level}.zip", data)
    found = inspect(attach(data, "docs.zip"))
    assert ("", True) == (found.banned, "nested deeper" in found.unchecked)


def test_a_banned_member_after_the_member_cap_is_not_passed() -> None:
    """1,000 harmless members then an .exe: unchecked (the cap was reached), never clean."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in range(1000):
            zf.writestr(f"f{n}.txt", b"")
        zf.writestr("evil.exe", b"MZ")
    found = inspect(attach(buf.getvalue(), "many.zip"))
    assert "more than 1000 archive members" in found.unchecked


def test_inner_archive_over_the_unpack_budget_is_unchecked() -> None:
    """An inner zip of 51 MiB (a few KB packed) exceeds the 50 MiB budget: unchecked."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", bytes(51 * 1024 * 1024))
    found = inspect(attach(zipped("inner.zip", buf.getvalue()), "outer.zip"))
    assert "bytes unpacked" in found.unchecked


def test_time_limit_makes_it_unchecked() -> None:
    """Past max_seconds (an injected clock) the inspection stops, unchecked."""
    ticks = iter(range(0, 10_000, 10))
    raw = mixed(*[b"Content-Type: text/plain\r\n\r\nx"] * 5)
    found = inspect(raw, limits=Limits(max_seconds=15), clock=lambda: float(next(ticks)))
    assert "longer than 15 s" in found.unchecked


def test_multipart_nested_2000_deep_is_unchecked_not_an_error() -> None:
    """2,000 nested multiparts: no RecursionError, an unchecked verdict."""
    raw = DEEP + b"Content-Type: text/plain\r\n\r\nhi\r\n"
    assert "MIME nested deeper than 30" in inspect(raw).unchecked


def test_a_banned_part_after_a_gap_still_wins() -> None:
    """An encrypted PDF and then an .exe: banned (the graver category)."""
    pdf = attach(b"%PDF-1.7\n/Encrypt 5 0 R\n", "a.pdf", "application/pdf")
    assert "" != inspect(pdf).unchecked
    raw = mixed(
        b"Content-Type: application/pdf; name=a.pdf\r\n\r\n%PDF-1.7 /Encrypt",
        b"Content-Type: application/octet-stream; name=b.exe\r\n\r\nx",
    )
    assert "b.exe" in inspect(raw).banned


@pytest.mark.parametrize(
    "raw",
    [
        HEAD + b"\r\nplain text\r\n",
        attach(b"%PDF-1.7 ...", "report.pdf", "application/pdf"),
        attach(zipped("a.txt", b"hi"), "a.zip", "application/zip"),
    ],
)
def test_ordinary_mail_is_clean(raw: bytes) -> None:
    """Plain text, a PDF and a zip of text are neither banned nor unchecked."""
    assert Inspection() == inspect(raw)


# --- the verdict through the pipeline ---------------------------------------------------


def make(
    clamd: FakeClamd | None = None, lists: Lists | None = None
) -> tuple[Filter, FakeForwarder]:
    cfg = Config(server=ServerConfig(hostname="gw.test"), banned=BannedConfig())
    fwd = FakeForwarder()
    store = DirectoryStore(Path(tempfile.mkdtemp(prefix="inspq")))
    f = Filter(cfg, clamd or FakeClamd(), FakeSpamd(), fwd, Metrics(), lists=lists, store=store)
    return f, fwd


async def test_unchecked_is_held_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    """By default unchecked mail is discarded into the quarantine, reason logged and stored."""
    f, fwd = make()
    caplog.set_level(logging.INFO, logger="filter.service")
    reply = await f.handle(Message("a@example.net", ("b@example.com",), DEEP))
    assert reply.startswith("250 2.7.0 Ok, discarded")
    assert "UNCHECKED: MIME nested deeper" in reply
    assert [] == fwd.sent
    assert f.store is not None
    [entry] = list(f.store.search(Query()).entries)
    assert ("unchecked", True) == (entry.category, entry.reason.startswith("MIME nested"))
    assert b"X-Virus-Unchecked: MIME nested" in f.store.message(entry.id)
    assert 'result=unchecked unchecked="MIME nested deeper' in caplog.text
    sample = f.metrics.registry.get_sample_value
    assert 1.0 == sample("mailfilter_messages_total", {"outcome": "unchecked"})


async def test_unchecked_lover_gets_it_tagged() -> None:
    """An unchecked lover receives the message with the subject tag and the reason field."""
    lovers = Lists(unchecked_lovers=AddressList.parse("t", ["b@example.com"]))
    f, fwd = make(lists=lovers)
    reply = await f.handle(Message("a@example.net", ("b@example.com",), DEEP))
    assert reply.startswith("250 2.0.0 Ok")
    [sent] = fwd.sent
    assert b"Subject: ***UNCHECKED*** s" in sent.data
    assert b"X-Virus-Unchecked: MIME nested deeper" in sent.data


@pytest.mark.parametrize(
    "name", ["Heuristics.Encrypted.Zip", "Heuristics.Limits.Exceeded.MaxFileSize"]
)
async def test_clamd_heuristics_are_unchecked_not_virus(name: str) -> None:
    """clamd's encryption and limit heuristics make the message unchecked, not infected."""

    class HeuristicClamd(FakeClamd):
        async def scan(self, data: bytes | Spool) -> ScanResult:
            return ScanResult(Outcome.VIRUS, name)

    f, _ = make(HeuristicClamd())
    reply = await f.handle(Message("a@example.net", ("b@example.com",), HEAD + b"\r\nhi\r\n"))
    assert f"UNCHECKED: clamd: {name}" in reply
    assert "INFECTED" not in reply


async def test_unparseable_input_is_unchecked_not_451(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should inspection itself fail, the answer is a verdict (held), never a 451 loop."""

    def broken(*args: object, **kwargs: object) -> Inspection:
        raise RecursionError("deep")

    monkeypatch.setattr("filter.scanning.inspect", broken)
    f, _ = make()
    reply = await f.handle(Message("a@example.net", ("b@example.com",), HEAD + b"\r\nhi\r\n"))
    assert reply.startswith("250 2.7.0 Ok, discarded")
    assert "could not be parsed (RecursionError)" in reply


def test_boundary_lines_ended_by_a_lone_cr_still_split_the_parts() -> None:
    """A multipart whose delimiter lines end in a bare CR is read as the email parser reads it."""
    message = (
        b"From: a@example.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        b"--XX\rContent-Type: text/plain\r\rhello\r"
        b'--XX\rContent-Type: application/octet-stream; name="evil.js"\r'
        b"Content-Transfer-Encoding: base64\r\rYWxlcnQoMSk=\r--XX--\r"
    )
    assert "evil.js" in inspect(message).banned


# -- found by the hostile review of this first version -------------------------


def test_zip_central_directory_names_are_judged_too() -> None:
    """A zip whose local header says evil.txt and central directory evil.exe is banned."""
    archive = zipped("evil.exe", b"hello")
    at = archive.find(b"evil.exe")
    local_txt = archive[:at] + b"evil.txt" + archive[at + 8 :]
    found = inspect(attach(local_txt, "files.zip", "application/zip"))
    assert "evil.exe" in found.banned
    assert "central directory" in found.banned


def test_an_overlong_content_type_field_is_unchecked_not_parsed() -> None:
    """A 40 KB Content-Type (quadratic for the stdlib's parser) is unchecked, at once."""
    raw = HEAD + b'Content-Type: text/plain; a="' + b";" * 40_000 + b'"\r\n\r\nhi\r\n'
    assert "content-type field over 8192 bytes" in inspect(raw).unchecked


def test_two_boundaries_per_level_cannot_multiply_the_work() -> None:
    """Parts split by two boundaries at every level end unchecked, within a bounded walk."""
    inner = b"Content-Type: text/plain\r\n\r\nx\r\n"
    for level in range(12):
        inner = (
            f'Content-Type: multipart/mixed; boundary="a{level}"; boundary="b{level}"\r\n\r\n'
            f"--a{level}\r\n--b{level}\r\n".encode()
            + inner
            + f"\r\n--b{level}--\r\n--a{level}--\r\n".encode()
        )
    found = inspect(HEAD + inner + b"y" * 10_000)
    assert found.unchecked


def test_a_non_ascii_boundary_is_unchecked() -> None:
    """An RFC 2231 UTF-8 boundary (which clients may match either way) is unchecked."""
    raw = (
        HEAD + b"Content-Type: multipart/mixed; boundary*=utf-8''%E2%82%AC\r\n\r\n"
        b'--\xe2\x82\xac\r\nContent-Type: application/octet-stream; name="evil.exe"\r\n\r\n'
        b"MZ\r\n--\xe2\x82\xac--\r\n"
    )
    assert "boundary that is not ASCII" in inspect(raw).unchecked


def test_unchecked_destiny_given_as_a_string_in_code_is_the_enum() -> None:
    """PolicyConfig(unchecked_destiny="pass") holds Destiny.PASS (compared by identity)."""
    from filter.config import PolicyConfig
    from filter.verdicts import Destiny

    policy = PolicyConfig(unchecked_destiny="pass")  # type: ignore[arg-type]
    assert Destiny.PASS is policy.unchecked_destiny


def rar4(name: str, data: bytes) -> bytes:
    """A RAR 4 archive storing one file, built byte by byte (Debian has no tool that writes RAR).

    Blocks per the RAR 4 technical note: marker, main header, one stored file
    header (method 0x30), end of archive; each header's CRC is the low 16 bits
    of the CRC-32 of the rest of it.  7-Zip and libarchive both list it.
    """

    def block(head_type: int, flags: int, body: bytes) -> bytes:
        rest = struct.pack("<BHH", head_type, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest

    raw = name.encode()
    header = struct.pack(
        "<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A8C0000, 20, 0x30, len(raw),
        0o100644 << 16,
    ) + raw  # fmt: skip
    return (
        b"Rar!\x1a\x07\x00"
        + block(0x73, 0, struct.pack("<HI", 0, 0))
        + block(0x74, 0x8000, header)
        + data
        + block(0x7B, 0x4000, b"")
    )


def test_rar_members_are_listed() -> None:
    """A program inside a RAR archive under a harmless name is banned by its member's name."""
    found = inspect(attach(rar4("evil.exe", b"MZ" + b"\0" * 30), "photos.dat"))
    assert "evil.exe" in found.banned


def test_a_zip_after_a_text_prefix_is_still_found() -> None:
    """Plain text is skipped by one pass, but an archive after text is found all the same."""
    from filter.signatures import sniff

    text = b"just words and lines\r\n" * 500
    assert sniff(text) is None
    assert ("zip", len(text)) == sniff(text + zipped("evil.exe", b"MZ"))
    found = inspect(attach(text + zipped("evil.exe", b"MZ"), "notes.txt", "text/plain"))
    assert "evil.exe" in found.banned
