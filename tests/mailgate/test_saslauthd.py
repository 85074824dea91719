"""The shared saslauthd client: the codec on byte literals, and one exchange over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailgate import saslauthd
from mailgate.saslauthd import NoReply, ReplyError, encode_request, parse_reply, reply_is_ok


def test_request_is_four_counted_strings() -> None:
    """login, password, service, realm: each a 2-byte big-endian length, then the bytes."""
    assert b"\x00\x05alice\x00\x02pw\x00\x06portal\x00\x00" == encode_request(
        b"alice", b"pw", b"portal", b""
    )


def test_request_carries_the_client_address_as_a_fifth_field() -> None:
    """The client address, when given, is a fifth counted string."""
    assert b"\x00\x01a\x00\x01b\x00\x00\x00\x00\x00\x09192.0.2.7" == encode_request(
        b"a", b"b", b"", b"", b"192.0.2.7"
    )


def test_request_field_over_65535_bytes_is_refused() -> None:
    """A counted string cannot say more than 65535 bytes."""
    with pytest.raises(ValueError, match="65535"):
        encode_request(b"x" * 65536, b"", b"", b"")


@pytest.mark.parametrize(
    ("buf", "expected"),
    [
        (b"", None),
        (b"\x00", None),
        (b"\x00\x02O", None),
        (b"\x00\x02OK", b"OK"),
        (b"\x00\x02OKtrailing", b"OK"),
        (b"\x00\x00", b""),
        (b"\x00\x0fNO bad password", b"NO bad password"),
    ],
)
def test_reply_parsing(buf: bytes, expected: bytes | None) -> None:
    """A reply is complete once its counted bytes are there; trailing bytes are ignored."""
    assert expected == parse_reply(buf)


def test_reply_announced_over_the_limit_is_refused_before_its_bytes() -> None:
    """A length over max_reply raises at once, so a client never waits for 64 KiB."""
    with pytest.raises(ReplyError, match="65535"):
        parse_reply(b"\xff\xff", max_reply=1023)
    assert b"x" * 1023 == parse_reply(b"\x03\xff" + b"x" * 1023, max_reply=1023)


@pytest.mark.parametrize(
    ("reply", "ok"),
    [(b"OK", True), (b"OK but odd", True), (b"NO", False), (b"NO OK", False), (b"", False)],
)
def test_ok_is_what_libsasl_accepts(reply: bytes, ok: bool) -> None:
    """Success is a reply starting with OK, as libsasl's strncmp decides."""
    assert ok == reply_is_ok(reply)


def test_saslimap_keeps_its_names() -> None:
    """saslimap's protocol and client modules still offer the moved names (re-exported)."""
    from saslimap import protocol, saslauthd_client

    assert protocol.encode_request is encode_request
    assert protocol.parse_reply is parse_reply
    assert protocol.reply_is_ok is reply_is_ok
    assert saslauthd_client.query is saslauthd.query
    assert saslauthd_client.NoReply is NoReply


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serving(path: Path, handler: Handler) -> asyncio.Server:
    return await asyncio.start_unix_server(handler, str(path))


async def test_async_check_sends_the_frame_and_reads_the_reply(sockdir: Path) -> None:
    """check() sends exactly the framed request and returns the reply text."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readexactly(len(encode_request(b"al", b"pw", b"portal", b""))))
        writer.write(b"\x00\x02OK")
        await writer.drain()
        writer.close()

    server = await _serving(sockdir / "mux", handler)
    async with server:
        reply = await saslauthd.check(sockdir / "mux", b"al", b"pw", b"portal", seconds=5)
    assert b"OK" == reply
    assert [b"\x00\x02al\x00\x02pw\x00\x06portal\x00\x00"] == seen


async def test_async_check_hang_up_is_no_reply(sockdir: Path) -> None:
    """A server closing without a reply (saslimap's "try later") raises NoReply."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    async with await _serving(sockdir / "mux", handler):
        with pytest.raises(NoReply):
            await saslauthd.check(sockdir / "mux", b"a", b"b", seconds=5)


async def test_async_check_stops_at_its_deadline(sockdir: Path) -> None:
    """A server that never answers costs the caller the deadline, then TimeoutError."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    async with await _serving(sockdir / "mux", handler):
        with pytest.raises(TimeoutError):
            await saslauthd.check(sockdir / "mux", b"a", b"b", seconds=0.05)
        release.set()


async def test_async_check_refuses_an_oversized_reply(sockdir: Path) -> None:
    """A reply announced over the limit ends the exchange without reading it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\xff\xff" + b"O" * 4096)
        await writer.drain()
        writer.close()

    async with await _serving(sockdir / "mux", handler):
        with pytest.raises(ReplyError):
            await saslauthd.check(sockdir / "mux", b"a", b"b", seconds=5)


async def test_async_check_missing_socket_is_oserror(sockdir: Path) -> None:
    """No daemon listening is an OSError (the caller says "try again later")."""
    with pytest.raises(OSError):  # noqa: PT011 - FileNotFoundError or ConnectionRefusedError
        await saslauthd.check(sockdir / "absent", b"a", b"b", seconds=5)
