"""The client side of the saslauthd protocol: the request and reply codec, and two small clients.

This module owns what any program asking a saslauthd "mux" socket needs, as
cyrus-sasl 2.1.28's ``lib/checkpw.c`` does it: framing a request
(:func:`encode_request`), reading the reply (:func:`parse_reply`), telling
success from failure (:func:`reply_is_ok`), and one exchange over the socket,
blocking (:func:`query`: tools, tests, benchmarks) or with asyncio
(:func:`check`: the quarantine portal's login).  The codec is pure; the
server side (parsing requests, framing replies) is :mod:`saslimap.protocol`'s.

It lives in the shared core because two front ends use it: saslimap's own
``saslimap test`` and the filter's portal, which must not import each other.

A request is a sequence of *counted strings* (a 2-byte big-endian length, then
that many bytes): login, password, service, realm, and optionally the client's
address.  The reply is one counted string, ``OK`` or ``NO <reason>``; a server
that closes without one means "try later" (saslimap's answer to an IMAP
outage or a full budget: libsasl reports a generic failure, Postfix says 454).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from pathlib import Path

# libsasl reads the reply into a 1024-byte buffer including the NUL it adds.
MAX_REPLY = 1023
_LEN = struct.Struct(">H")


class ReplyError(Exception):
    """The server's answer is no saslauthd reply: a stranger on the socket, or a broken server."""


class NoReply(ConnectionError):
    """The daemon closed the connection without answering (libsasl: "generic failure")."""


def encode_request(
    login: bytes,
    password: bytes,
    service: bytes,
    realm: bytes,
    client_addr: bytes | None = None,
) -> bytes:
    """Frame a request as libsasl does: four counted strings, a fifth for the client address."""
    parts = [login, password, service, realm]
    if client_addr is not None:
        parts.append(client_addr)
    out = bytearray()
    for part in parts:
        if len(part) > 0xFFFF:
            raise ValueError("a counted string holds at most 65535 bytes")
        out += _LEN.pack(len(part)) + part
    return bytes(out)


def parse_reply(buf: bytes, max_reply: int | None = None) -> bytes | None:
    """Decode a framed reply, or ``None`` while it is incomplete.

    ``max_reply``: a declared length over it raises :class:`ReplyError` at once,
    before its bytes are waited for (None: any length the frame can hold).
    """
    if len(buf) < _LEN.size:
        return None
    (length,) = _LEN.unpack_from(buf)
    if max_reply is not None and length > max_reply:
        raise ReplyError(f"reply of {length} bytes announced; at most {max_reply} expected")
    if len(buf) < _LEN.size + length:
        return None
    return buf[_LEN.size : _LEN.size + length]


def reply_is_ok(reply: bytes) -> bool:
    """Whether libsasl would treat this reply as success (its ``strncmp(.., "OK", 2)``)."""
    return reply[:2] == b"OK"


def query(
    path: str | Path,
    login: bytes,
    password: bytes,
    service: bytes = b"",
    realm: bytes = b"",
    *,
    timeout: float = 30.0,
    client_addr: bytes | None = None,
) -> bytes:
    """Send one request and return the reply text (``b"OK"`` or ``b"NO ..."``), blocking.

    Raises :class:`NoReply` when the daemon hangs up without a reply, and
    ``OSError`` when the socket cannot be reached.
    """
    frame = encode_request(login, password, service, realm, client_addr)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(frame)
        buf = b""
        while (reply := parse_reply(buf)) is None:
            chunk = sock.recv(2048)
            if not chunk:
                raise NoReply("connection closed without a reply")
            buf += chunk
        return reply


async def check(
    path: str | Path,
    login: bytes,
    password: bytes,
    service: bytes = b"",
    realm: bytes = b"",
    *,
    seconds: float = 30.0,
    client_addr: bytes | None = None,
    max_reply: int = MAX_REPLY,
) -> bytes:
    """One exchange with asyncio, all of it (connect, send, read) within ``seconds``.

    Returns the reply text.  Raises :class:`NoReply` when the daemon hangs up
    without one, :class:`ReplyError` for a reply announced over ``max_reply``
    bytes (never read), ``TimeoutError`` past the deadline, ``OSError`` when the
    socket cannot be reached.  The password is only ever in the frame sent.
    """
    frame = encode_request(login, password, service, realm, client_addr)
    async with asyncio.timeout(seconds):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(frame)
            await writer.drain()
            buf = b""
            while (reply := parse_reply(buf, max_reply)) is None:
                # Never more than the frame can still need: the size bound holds per read.
                chunk = await reader.read(_LEN.size + max_reply - len(buf))
                if not chunk:
                    raise NoReply("connection closed without a reply")
                buf += chunk
            return reply
        finally:
            writer.close()
            # The server may have reset the socket after its reply.
            with contextlib.suppress(OSError):
                await writer.wait_closed()
