"""Issue 14 item 6: messages over the spool threshold go through a file, intact and scanned."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter import headers, inspect_child
from filter.banned import DEFAULT_NAMES, DEFAULT_TYPES, Inspection, inspect
from filter.config import Config, PolicyConfig, ServerConfig
from filter.findings import Limits
from filter.message import Message
from filter.qdir import DirectoryStore
from filter.server import Handler, start_server
from filter.service import Filter
from filter.smtp_out import Reply, dot_stuff
from filter.spool import CHUNK, HEAD_LIMIT, Spool, drop_fields, head_length, stuffed
from tests.filter.fakes import FakeClamd, FakeForwarder, FakeSpamd
from tests.filter.samples import zipped

THRESHOLD = 4096


_MADE: list[Spool] = []


@pytest.fixture(autouse=True)
def _close_spools() -> Iterator[None]:
    """Every spool a test made with spool_of() is closed after it."""
    yield
    while _MADE:
        _MADE.pop().close()


def spool_of(data: bytes) -> Spool:
    """A spool holding ``data`` (closed after the test)."""
    spool = Spool()
    _MADE.append(spool)
    spool.write(data)
    return spool


def dotted_body(size: int) -> bytes:
    """CRLF lines, many starting with a dot, some of them landing on chunk boundaries."""
    lines = []
    n = 0
    total = 0
    while total < size:
        line = (b"." * (n % 3) + b"line %d " % n + b"x" * (n % 97)) + b"\r\n"
        lines.append(line)
        total += len(line)
        n += 1
    return b"".join(lines)


RAW_HEAD = (
    b"Received: from client (client [192.0.2.9]) by gw (Postfix) with ESMTP id 4AbCdEf123\r\n"
    b"From: a@example.net\r\nTo: b@example.com\r\nSubject: big\r\nX-Spam-Flag: NO\r\n"
)


def big_message(size: int = 3 * CHUNK) -> bytes:
    """A message larger than the test threshold, with dot lines across chunk boundaries."""
    return RAW_HEAD + b"\r\n" + dotted_body(size)


# -- the chunked dot-stuffing ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b".", b"..", b".x", b"x", b"", b"\r\n.\r\n", b" y"]), max_size=40),
    st.lists(st.integers(1, 50), min_size=1, max_size=8),
)
def test_stuffing_in_pieces_sends_what_stuffing_at_once_sends(
    lines: list[bytes], cuts: list[int]
) -> None:
    """Any CRLF message cut anywhere (a dot just after a cut, CR and LF apart): same payload."""
    data = b"".join(line + b"\r\n" for line in lines)
    pieces, pos = [], 0
    for size in cuts * (len(data) // max(1, sum(cuts)) + 1):
        pieces.append(data[pos : pos + size])
        pos += size
    pieces.append(data[pos:])
    assert dot_stuff(data) == b"".join(stuffed(pieces))


@pytest.mark.parametrize(
    "data", [b"", b".", b"a\nb", b"a\r\n.\n.b\r", b"x\r", b"x" * 10, b".\r\n" * 3]
)
def test_stuffing_odd_endings_matches(data: bytes) -> None:
    """No final line end, bare LF, lone CR, a message of dots: as dot_stuff does it."""
    assert dot_stuff(data) == b"".join(stuffed([data[:1], data[1:]]))


def test_head_ends_after_the_empty_line() -> None:
    """A spooled message's head is its header section and the empty line, nothing more."""
    raw = big_message()
    assert len(RAW_HEAD) + 2 == head_length(spool_of(raw))
    assert 6 == head_length(spool_of(b"body\r\nmore\r\n" * 10))  # no header: its first line


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"X-Spam-Flag: YES", b"x-virus-scanned: forged", b"Keep: 1", b" folded",
             b"\tfolded", b"X-Quarantine-ID: <x>", b"no colon", b"X-Spammy: 2"]
        ),
        max_size=12,
    ),
    st.integers(1, 40),
)  # fmt: skip
def test_dropping_fields_in_pieces_matches_the_edit_of_the_whole(
    lines: list[bytes], cut: int
) -> None:
    """A cut head's tail, read in any pieces: the fields marking drops are gone, the body kept."""
    prefixes = (b"x-spam-", b"x-virus-", b"x-quarantine-")
    section = b"Top: 1\r\n" + b"".join(line + b"\r\n" for line in lines)
    raw = section + b"\r\nX-Spam-Flag: body text\r\n"
    pieces = [raw[i : i + cut] for i in range(0, len(raw), cut)]
    expected = headers.edit(raw, remove_prefixes=prefixes)
    assert expected == b"".join(drop_fields(pieces, prefixes))


def test_dropping_fields_without_an_empty_line() -> None:
    """A tail that ends inside the header section: the last field is judged like the rest."""
    got = b"".join(drop_fields([b"A: 1\r\nX-Spam-", b"Flag: YES"], (b"x-spam-",)))
    assert b"A: 1\r\n" == got


# -- through the SMTP server ----------------------------------------------------------------


async def _deliver(
    service: Filter, raw: bytes, *, threshold: int = THRESHOLD
) -> tuple[bytes, list[bytes]]:
    """Send ``raw`` through a FilterSMTP to ``service``; the final reply and all replies."""
    handler = Handler(service, max_connections=4)
    srv = await start_server(
        handler, "127.0.0.1", 0, hostname="gw.test", data_size_limit=50_000_000,
        idle_timeout=10, spool_threshold=threshold,
    )  # fmt: skip
    try:
        port = cast(asyncio.Server, srv).sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        async with asyncio.timeout(30):
            await reader.readline()
            for command in (b"EHLO client.test", b"MAIL FROM:<a@example.net>",
                            b"RCPT TO:<b@example.com>", b"DATA"):  # fmt: skip
                writer.write(command + b"\r\n")
                reply = await reader.readline()
                while reply[3:4] == b"-":
                    reply = await reader.readline()
                answers.append(reply)
            writer.write(dot_stuff(raw))
            answers.append(await reader.readline())
        writer.close()
    finally:
        srv.close()
    return answers[-1], answers


def make(tmp: Path) -> tuple[Filter, FakeClamd, FakeSpamd, FakeForwarder]:
    """A Filter with fakes and a quarantine in ``tmp``."""
    clam, spam, fwd = FakeClamd(), FakeSpamd(), FakeForwarder()
    cfg = Config(server=ServerConfig(hostname="gw.test", spool_threshold=THRESHOLD))
    return Filter(cfg, clam, spam, fwd, store=DirectoryStore(tmp)), clam, spam, fwd


def held_in(directory: Path) -> list[bytes]:
    """The quarantined messages in ``directory``."""
    return [path.read_bytes() for path in sorted(directory.glob("*.eml"))]


def open_files() -> int:
    """Files this process holds open that have no name any more (spool files)."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
        except OSError:
            continue  # the directory's own descriptor, already gone
    return found


async def test_a_big_message_goes_through_byte_exact(tmp_path: Path) -> None:
    """Over the threshold: spooled, scanned from the file, re-injected byte for byte."""
    f, clam, _, fwd = make(tmp_path)
    raw = big_message()
    before = open_files()
    final, _ = await _deliver(f, raw)
    assert final.startswith(b"250 2.0.0 Ok")
    assert 1 == clam.spooled
    out = fwd.sent[0].data
    marked_head, rest = headers.split(out)
    assert rest == raw[len(RAW_HEAD) :]  # the body, exactly
    assert b"X-Spam-Flag: NO" not in marked_head  # forged mark removed from the head
    assert marked_head.startswith(b"Received: from client.test")
    assert dot_stuff(out) == fwd.payloads[0]
    assert f"SIZE={len(out)}" in fwd.sent[0].mail_params
    assert before == open_files()  # the spool file is closed once answered


async def test_a_small_message_stays_in_memory(tmp_path: Path) -> None:
    """Under the threshold nothing is spooled."""
    f, clam, _, fwd = make(tmp_path)
    raw = RAW_HEAD + b"\r\nsmall\r\n"
    assert (await _deliver(f, raw))[0].startswith(b"250")
    assert 0 == clam.spooled
    assert fwd.sent[0].data.endswith(b"Subject: big\r\n\r\nsmall\r\n")


async def test_a_virus_at_the_end_of_a_big_message_is_found(tmp_path: Path) -> None:
    """clamd reads the whole file: a marker in the last chunk is found and quarantined."""
    f, _, _, fwd = make(tmp_path)
    raw = big_message() + b"VIRUS-MARKER\r\n"
    final, _ = await _deliver(f, raw)
    assert final.startswith(b"250 2.7.0 Ok, discarded")
    assert [] == fwd.sent
    [held] = held_in(tmp_path)
    assert held.endswith(raw[len(RAW_HEAD) :])  # the whole message, from the file
    assert b"X-Quarantine-ID: <" in headers.split(held)[0]


@pytest.mark.parametrize(
    ("failure", "expect"),
    [
        ("downstream 4xx", b"451 4.3.0 Downstream: 451"),
        ("downstream lost", b"451 4.3.0 Could not hand the message back"),
        ("clamd down", b"451 4.3.0 Virus scanner unavailable"),
    ],
)
async def test_nothing_is_lost_when_a_big_message_fails(
    tmp_path: Path, failure: str, expect: bytes
) -> None:
    """Any failure on the way of a spooled message is a 451: Postfix keeps it."""
    f, clam, _, fwd = make(tmp_path)
    if failure == "downstream 4xx":
        fwd.data_reply = Reply(451, "4.3.0 try later")
    elif failure == "downstream lost":
        fwd.error = "ConnectionResetError: lost"
    else:
        clam.fail = "connect"
    before = open_files()
    final, _ = await _deliver(f, big_message())
    assert final.startswith(expect)
    assert before == open_files()


async def test_a_spool_that_cannot_be_written_is_451_and_the_session_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while spooling: the data is read to its end, then 451; nothing is kept."""
    f, _, _, fwd = make(tmp_path)

    def full(self: Spool, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Spool, "write", full)
    before = open_files()
    final, _ = await _deliver(f, big_message())
    assert final.startswith(b"451 4.3.0 Could not store the message")
    assert [] == fwd.sent
    assert before == open_files()


# -- the banned-part check on the bounded view ----------------------------------------------


def multipart(parts: Sequence[tuple[str, str, bytes]], boundary: str = "b0und") -> bytes:
    """A multipart/mixed message of (content type, file name, body) parts, base64 bodies."""
    out = [RAW_HEAD, f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()]
    out.append(b"preamble\r\n")
    for ctype, name, body in parts:
        disposition = f'Content-Disposition: attachment; filename="{name}"\r\n' if name else ""
        encoded = base64.encodebytes(body).replace(b"\n", b"\r\n")
        out.append(
            f"--{boundary}\r\nContent-Type: {ctype}\r\n{disposition}"
            f"Content-Transfer-Encoding: base64\r\n\r\n".encode()
            + encoded
        )
    out.append(f"--{boundary}--\r\nepilogue\r\n".encode())
    return b"".join(out)


BIG_TEXT = ("text/plain", "", b"lorem ipsum dolor sit amet\r\n" * 12_000)


@pytest.mark.parametrize(
    ("parts", "found"),
    [
        ([BIG_TEXT, ("application/octet-stream", "evil.exe", b"MZ" + b"\0" * 100)], "evil.exe"),
        ([("application/octet-stream", "x.bin", b"MZ" + b"\0" * 200_000), BIG_TEXT],
         "detected type application/x-dosexec"),
        ([BIG_TEXT, ("application/zip", "docs.zip", zipped("run.js", b"alert(1)"))], "run.js"),
        ([("application/octet-stream", "data", zipped("a.vbs", os.urandom(100_000)))], "a.vbs"),
        ([BIG_TEXT, ("text/plain", "notes.txt", b"fine")], None),
    ],
)  # fmt: skip
async def test_the_spooled_inspection_finds_what_the_whole_message_shows(
    parts: list[tuple[str, str, bytes]], found: str | None
) -> None:
    """Names, sniffed types and zip members past a big part: same answer as inspect."""
    raw = multipart(parts)
    expected = inspect(raw).banned or None
    got = (await spooled_verdict(raw)).banned or None
    assert expected == got
    if found is None:
        assert got is None
    else:
        assert got is not None
        assert found in got


async def spooled_verdict(raw: bytes, limits: Limits | None = None) -> Inspection:
    """The child's verdict on ``raw`` spooled, with the default names and types."""
    return await inspect_child.inspect_spooled(
        spool_of(raw), DEFAULT_NAMES, DEFAULT_TYPES, limits or Limits(), asyncio.Semaphore(1)
    )


EXE_PART = (
    b'Content-Type: application/octet-stream; name="evil.exe"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nTVoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
)
FILLER = b"Content-Type: text/plain\r\n\r\n" + (b"y" * 76 + b"\r\n") * 100


def _zip_after_prefix() -> bytes:
    data = base64.encodebytes(b"\0" * 5000 + zipped("evil.exe", b"MZ")).replace(b"\n", b"\r\n")
    return (
        b'Content-Type: application/octet-stream; name="data.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + data
    )


# Shapes a bounded view of the structure missed (found by review): after the close
# delimiter, two Content-Types, "Content-Type :", two boundaries, message/global, a
# non-field line, a zip after a prefix, a lone-CR delimiter line.
_MP = b'Content-Type: multipart/mixed; boundary="X"\r\n\r\n'
AMBIGUOUS = [
    _MP + b"--X\r\n" + FILLER + b"\r\n--X--\r\n--X\r\n" + EXE_PART + b"\r\n--X--\r\n",
    b"Content-Type: text/plain\r\n" + _MP + b"--X\r\n" + EXE_PART + b"\r\n--X--\r\n",
    b'Content-Type : multipart/mixed; boundary="X"\r\n\r\n--X\r\n' + EXE_PART + b"--X--\r\n",
    b'Content-Type: multipart/mixed; boundary="A"; boundary="B"\r\n\r\n--A\r\n' + FILLER
    + b"\r\n--B\r\n" + EXE_PART + b"\r\n--B--\r\n--A--\r\n",
    _MP + b"--X\r\nContent-Type: message/global\r\n\r\n" + b'Content-Type: multipart/mixed;'
    b' boundary="I"\r\n\r\n--I\r\n' + EXE_PART + b"\r\n--I--\r\n\r\n--X--\r\n",
    b"no field here\r\n" + _MP + b"--X\r\n" + EXE_PART + b"\r\n--X--\r\n",
    _MP + b"--X\r\n" + FILLER + b"\r\n--X\r\n" + _zip_after_prefix() + b"--X--\r\n",
    _MP + b"--X\r\n" + FILLER + b'\r\n--X\rContent-Type: application/octet-stream; name="evil.exe"'
    b"\r\r\nMZ\r\n--X--\r\n",
]  # fmt: skip


@pytest.mark.parametrize("body", AMBIGUOUS)
async def test_spooled_and_small_messages_get_one_verdict(body: bytes) -> None:
    """Each shape is banned in memory, and banned just the same once spooled (padded to 1 MiB)."""
    raw = RAW_HEAD + b"MIME-Version: 1.0\r\n" + body
    big = raw.replace(FILLER, FILLER + (b"z" * 76 + b"\r\n") * 14_000, 1)
    assert inspect(raw).banned
    assert inspect(big).banned
    assert (await spooled_verdict(big)).banned


async def test_a_child_that_fails_means_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that dies without a verdict leaves the message unchecked, never clean."""
    monkeypatch.setattr(sys, "executable", "/bin/false")
    found = await spooled_verdict(multipart([BIG_TEXT]))
    assert ("", "could not be parsed (inspection exit 1)") == (found.banned, found.unchecked)


async def test_a_child_past_its_deadline_is_killed_and_unchecked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A child that does not answer in time is killed; the message is unchecked."""
    stuck = tmp_path / "stuck"
    stuck.write_text("#!/bin/sh\nexec sleep 30\n")
    stuck.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(stuck))
    monkeypatch.setattr(inspect_child, "STARTUP_SLACK", 0.2)
    found = await spooled_verdict(multipart([BIG_TEXT]), Limits(max_seconds=0.0))
    assert found.unchecked.startswith("inspection took longer than")


async def test_a_banned_part_in_a_big_message_is_held(tmp_path: Path) -> None:
    """Through the server: a program after a 300 KB part is banned and quarantined."""
    f, _, _, fwd = make(tmp_path)
    raw = multipart([BIG_TEXT, ("application/octet-stream", "evil.exe", b"MZ")])
    final, _ = await _deliver(f, raw)
    assert final.startswith(b"250 2.7.0 Ok, discarded")
    assert [] == fwd.sent
    assert 1 == len(held_in(tmp_path))


def long_header_message() -> bytes:
    """A header section longer than HEAD_LIMIT with forged marks past the cut, then a body."""
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 200) for n in range(HEAD_LIMIT // 200 + 10))
    forged = (
        b"X-Spam-Flag: NO\r\nX-Spam-Report:\r\n\tall clean\r\nX-Virus-Scanned: forged\r\n"
        b"X-Quarantine-ID: <forged>\r\nX-Kept: yes\r\n"
    )
    return RAW_HEAD + pad + forged + b"\r\nX-Spam-Flag: NO (body text)\r\n" + b"body line\r\n" * 500


async def test_forged_marks_past_a_cut_head_are_removed(tmp_path: Path) -> None:
    """A header section over HEAD_LIMIT: held unchecked by default, no forged field in any copy."""
    raw = long_header_message()
    f, _, _, fwd = make(tmp_path)
    final, _ = await _deliver(f, raw)
    assert final.startswith(b"250 2.7.0 Ok, discarded")
    (copy,) = held_in(tmp_path)
    # A tagged pass (an unchecked lover's copy) is cleaned the same way.
    clam, spam, fwd = FakeClamd(), FakeSpamd(), FakeForwarder()
    cfg = Config(
        server=ServerConfig(hostname="gw.test", spool_threshold=THRESHOLD),
        policy=PolicyConfig(unchecked_destiny="pass"),  # type: ignore[arg-type]
    )
    final, _ = await _deliver(
        Filter(cfg, clam, spam, fwd, store=DirectoryStore(tmp_path / "q2")), raw
    )
    assert final.startswith(b"250 2.0.0 Ok")
    passed = fwd.sent[0].data  # head and tail, as read back
    for out in (copy, passed):
        head, body = headers.split(out)
        assert b"forged" not in head
        assert b"all clean" not in head
        assert b"X-Spam-Flag: NO\r\n" not in head
        assert b"X-Kept: yes\r\n" in head
        assert b"X-Virus-Unchecked: header section longer than" in head
        assert body.startswith(b"\r\nX-Spam-Flag: NO (body text)\r\n")


def test_message_size_counts_the_spooled_whole() -> None:
    """A spooled message's size (summary line, SIZE=) is the file's, not its head's."""
    raw = big_message()
    spool = spool_of(raw)
    msg = Message("a@x", ("b@y",), raw[: head_length(spool)], spool=spool)
    assert len(raw) == msg.size
    assert raw == msg.whole()
    tail = msg.tail()
    assert tail is not None
    assert raw == msg.data + b"".join(tail.chunks())
    spool.close()


def test_spool_files_have_no_name() -> None:
    """The spool file is unlinked from the start: nothing named is left in its directory."""
    with tempfile.TemporaryDirectory(prefix="spl") as where:
        spool = Spool(where)
        spool.write(b"x" * 10)
        assert [] == os.listdir(where)
        spool.close()
