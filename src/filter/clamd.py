"""The clamd client: a sans-I/O codec for ``zINSTREAM`` and ``zFILDES``, and a thin client.

The codec (pure functions over bytes) owns clamd's framing, documented in
clamd(8).  ``zINSTREAM\0``, then chunks each prefixed with a 4-byte
big-endian length, a zero-length chunk to end; or, on a Unix socket,
``zFILDES\0`` and then one byte carrying a file descriptor (SCM_RIGHTS) that
clamd reads the message from.  One NUL-terminated reply:

- ``stream: OK`` (``fd[N]: OK``) — nothing found;
- ``stream: <name> FOUND`` — a virus (the name may contain spaces);
- ``INSTREAM size limit exceeded. ERROR`` or any ``... ERROR`` — not scanned.

Anything that is not a clear OK or FOUND is "not scanned", never "clean".
The client sends at most ``max_stream`` bytes (clamd's StreamMaxLength); a
larger message is reported as not scanned without sending it.

On a Unix socket the message is passed as an in-memory file (``memfd``):
clamd then scans it where it lies instead of receiving it and writing it to a
temporary file of its own first, which measured as a tenth of a 100 KB scan.
A message spooled to a file (:mod:`filter.spool`) is passed as that file's
descriptor, or streamed from it a chunk at a time.  Should clamd be unable to
read such a descriptor (a confining profile), the message is scanned again by
INSTREAM, and after a few such cases the client keeps to INSTREAM.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import enum
import logging
import os
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from filter.spool import Spool
from mailgate.config import Address
from mailgate.errors import BackendError

log = logging.getLogger(__name__)

COMMAND = b"zINSTREAM\0"
FILDES = b"zFILDES\0"
END = b"\0\0\0\0"
CHUNK = 64 * 1024
MAX_REPLY = 4096
_LEN = struct.Struct(">I")
_FD_NAME = re.compile(r"fd\[\d+\]")
FD_FAILURES_BEFORE_INSTREAM = 3
"""FILDES scans answered ERROR, then scanned by INSTREAM, before the client keeps to INSTREAM."""


class Outcome(enum.Enum):
    """What clamd said about a stream."""

    CLEAN = "clean"
    VIRUS = "virus"
    ERROR = "error"


@dataclass(frozen=True)
class ScanResult:
    """A parsed clamd reply; ``name`` is the virus name or the error text."""

    outcome: Outcome
    name: str = ""


class ClamdError(BackendError):
    """clamd could not be asked or gave no usable answer; ``kind`` labels a metric."""


def frames(data: bytes, chunk: int = CHUNK) -> Iterator[bytes]:
    """The whole request: command, length-prefixed chunks, terminator."""
    yield COMMAND
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        piece = view[start : start + chunk]
        yield _LEN.pack(len(piece)) + piece.tobytes()
    yield END


def spooled_frames(spool: Spool) -> Iterator[bytes]:
    """:func:`frames` of a spooled message, read from its file a chunk at a time."""
    yield COMMAND
    for piece in spool.chunks(chunk=CHUNK):
        yield _LEN.pack(len(piece)) + piece
    yield END


def parse_reply(raw: bytes) -> ScanResult:
    """Interpret one reply (with or without its trailing NUL), to INSTREAM or FILDES."""
    text = raw.rstrip(b"\0").rstrip(b"\r\n").decode("utf-8", "replace").strip()
    name, sep, body = text.partition(": ")
    # Clean only on clamd's exact answer: anything else fails closed.
    if sep and (name == "stream" or _FD_NAME.fullmatch(name)):
        if body == "OK":
            return ScanResult(Outcome.CLEAN)
        if body.endswith(" FOUND"):
            return ScanResult(Outcome.VIRUS, body[: -len(" FOUND")].strip())
    return ScanResult(Outcome.ERROR, text[:200] or "empty reply")


def fildes_request(fd: int) -> tuple[bytes, list[bytes], list[tuple[int, int, bytes]]]:
    """The FILDES request: the command, then one byte with ``fd`` as ancillary data.

    Returned as (command, sendmsg buffers, sendmsg ancillary data), the second
    message being a separate send, as clamdscan --fdpass does.
    """
    rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())
    return FILDES, [b"\0"], [rights]


def parse_address(address: str) -> tuple[str, str | int]:
    """``unix:/path`` -> ("unix", path); ``host:port`` -> (host, port); ValueError if neither."""
    return Address.parse(address, "clamd address").where()


class ClamdClient:
    """Scans one message per connection, with a deadline and a concurrency limit.

    ``pass_fd`` (Unix sockets only) passes the message as a descriptor
    (``zFILDES``) rather than streaming it (``zINSTREAM``).
    """

    def __init__(
        self, address: str, *, timeout: float = 30.0, max_stream: int = 25 * 1024 * 1024,
        concurrency: int = 8, pass_fd: bool = True,
    ) -> None:  # fmt: skip
        self.address = address
        self._where = parse_address(address)
        kind = self._where[0]
        self.timeout = timeout
        self.max_stream = max_stream
        self._slots = asyncio.Semaphore(concurrency)
        self.pass_fd = pass_fd and kind == "unix" and hasattr(os, "memfd_create")
        self._fd_failures = 0

    async def scan(self, data: bytes | Spool) -> ScanResult:
        """Scan ``data`` (bytes, or a spooled message's file); raises :class:`ClamdError`
        when clamd gives no verdict."""
        size = data.size if isinstance(data, Spool) else len(data)
        if size > self.max_stream:
            return ScanResult(Outcome.ERROR, f"message of {size} bytes exceeds max_stream")
        try:
            async with self._slots, asyncio.timeout(self.timeout):
                if self.pass_fd:
                    result = parse_reply(await self._ask(data, by_fd=True))
                    if result.outcome is not Outcome.ERROR:
                        return result
                    # Maybe clamd cannot read what we pass (a confining profile, or
                    # clamd elsewhere): the stream says whether the message is at fault.
                    result = parse_reply(await self._ask(data, by_fd=False))
                    if result.outcome is not Outcome.ERROR:
                        self._fd_failed()
                    return result
                # An ERROR reply (including clamd's own "INSTREAM size limit exceeded")
                # comes back as Outcome.ERROR: the caller treats it as "not scanned".
                return parse_reply(await self._ask(data, by_fd=False))
        except TimeoutError:
            raise ClamdError("timeout", f"no answer within {self.timeout:g} s") from None
        except OSError as err:
            raise ClamdError("connect", f"{self.address}: {err.strerror or err}") from None

    def _fd_failed(self) -> None:
        self._fd_failures += 1
        if self._fd_failures >= FD_FAILURES_BEFORE_INSTREAM:
            self.pass_fd = False
            log.warning(
                "clamd at %s answered ERROR to %d passed descriptors that INSTREAM then "
                "scanned; using INSTREAM from now on (set [clamd] pass_fd = false to skip this)",
                self.address, self._fd_failures,
            )  # fmt: skip

    async def _ask(self, data: bytes | Spool, *, by_fd: bool) -> bytes:
        """One request on a connection of its own; the raw reply, NUL included."""
        kind, where = self._where
        if kind != "unix":
            return await self._ask_tcp(kind, int(where), data)
        # A bare socket on a Unix path: no stream objects per message, and sendmsg().
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        memfd = -1
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, str(where))
            if by_fd:
                if isinstance(data, Spool):
                    fd = data.fd  # already a file: clamd reads it where it lies
                else:
                    fd = memfd = os.memfd_create("mail-filter-scan", os.MFD_CLOEXEC)
                    _write_all(memfd, data)
                command, buffers, ancillary = fildes_request(fd)
                # Both fit an empty socket buffer at once: a fresh connection's is.
                if sock.send(command) != len(command) or sock.sendmsg(buffers, ancillary) != 1:
                    raise ClamdError("protocol", "could not send the FILDES request at once")
                if memfd >= 0:  # ours to close now (clamd holds its own copy); a spool's is not
                    os.close(memfd)
                    memfd = -1
            elif isinstance(data, Spool):
                # A chunk at a time from the file: never the whole message in memory.
                for frame in spooled_frames(data):
                    await loop.sock_sendall(sock, frame)
            else:
                # One write for the whole request: a drain (and a syscall) per chunk
                # cost more than the scan for small messages.
                await loop.sock_sendall(sock, b"".join(frames(data)))
            reply = b""
            while not reply.endswith(b"\0"):
                chunk = await loop.sock_recv(sock, MAX_REPLY)
                if not chunk:
                    raise ClamdError("protocol", f"connection closed after {len(reply)} bytes")
                reply += chunk
                if len(reply) > MAX_REPLY:
                    raise ClamdError("protocol", "reply too long")
            return reply
        finally:
            if memfd >= 0:
                os.close(memfd)
            with contextlib.suppress(OSError):
                sock.close()

    async def _ask_tcp(self, host: str, port: int, data: bytes | Spool) -> bytes:
        """INSTREAM over TCP (the host name resolved as open_connection does)."""
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY)
            try:
                if isinstance(data, Spool):
                    for frame in spooled_frames(data):
                        writer.write(frame)
                        await writer.drain()
                else:
                    writer.write(b"".join(frames(data)))
                await writer.drain()
                return await reader.readuntil(b"\0")
            finally:
                writer.close()
        except asyncio.IncompleteReadError as err:
            raise ClamdError(
                "protocol", f"connection closed after {len(err.partial)} bytes"
            ) from None
        except asyncio.LimitOverrunError:
            raise ClamdError("protocol", "reply too long") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
