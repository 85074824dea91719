"""The clamd client: a sans-I/O codec for ``zINSTREAM`` and a thin asyncio client.

The codec (pure functions over bytes) owns clamd's framing, documented in
clamd(8): the command ``zINSTREAM\\0``, then chunks each prefixed with a 4-byte
big-endian length, a zero-length chunk to end, and one NUL-terminated reply:

- ``stream: OK`` — nothing found;
- ``stream: <name> FOUND`` — a virus (the name may contain spaces);
- ``INSTREAM size limit exceeded. ERROR`` or any ``... ERROR`` — not scanned.

Anything that is not a clear OK or FOUND is "not scanned", never "clean".
The client sends at most ``max_stream`` bytes (clamd's StreamMaxLength); a
larger message is reported as not scanned without sending it.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

COMMAND = b"zINSTREAM\0"
END = b"\0\0\0\0"
CHUNK = 64 * 1024
MAX_REPLY = 4096
_LEN = struct.Struct(">I")


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


class ClamdError(Exception):
    """clamd could not be asked or gave no usable answer; ``kind`` labels a metric."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def frames(data: bytes, chunk: int = CHUNK) -> Iterator[bytes]:
    """The whole request: command, length-prefixed chunks, terminator."""
    yield COMMAND
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        piece = view[start : start + chunk]
        yield _LEN.pack(len(piece)) + piece.tobytes()
    yield END


def parse_reply(raw: bytes) -> ScanResult:
    """Interpret one reply (with or without its trailing NUL)."""
    text = raw.rstrip(b"\0").rstrip(b"\r\n").decode("utf-8", "replace").strip()
    body = text.split(": ", 1)[1] if text.startswith("stream: ") else text
    # Clean only on clamd's exact INSTREAM answer: anything else fails closed.
    if text == "stream: OK":
        return ScanResult(Outcome.CLEAN)
    if body.endswith(" FOUND") and text.startswith("stream: "):
        return ScanResult(Outcome.VIRUS, body[: -len(" FOUND")].strip())
    return ScanResult(Outcome.ERROR, text[:200] or "empty reply")


def parse_address(address: str) -> tuple[str, str | int]:
    """``unix:/path`` -> ("unix", path); ``host:port`` -> (host, port)."""
    if address.startswith("unix:"):
        return "unix", address[len("unix:") :]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"clamd address must be unix:/path or host:port, got {address!r}")
    return host.strip("[]"), int(port)


class ClamdClient:
    """Scans one message per connection, with a deadline and a concurrency limit."""

    def __init__(
        self, address: str, *, timeout: float = 30.0, max_stream: int = 25 * 1024 * 1024,
        concurrency: int = 8,
    ) -> None:  # fmt: skip
        self.address = address
        self._where = parse_address(address)
        self.timeout = timeout
        self.max_stream = max_stream
        self._slots = asyncio.Semaphore(concurrency)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kind, where = self._where
        if kind == "unix":
            return await asyncio.open_unix_connection(str(where), limit=MAX_REPLY)
        return await asyncio.open_connection(kind, where, limit=MAX_REPLY)

    async def scan(self, data: bytes) -> ScanResult:
        """Scan ``data``; raises :class:`ClamdError` when clamd gives no verdict."""
        if len(data) > self.max_stream:
            return ScanResult(Outcome.ERROR, f"message of {len(data)} bytes exceeds max_stream")
        try:
            async with self._slots, asyncio.timeout(self.timeout):
                reader, writer = await self._open()
                try:
                    # One write for the whole request: a drain (and a syscall) per chunk
                    # cost more than the scan for small messages.
                    writer.write(b"".join(frames(data)))
                    await writer.drain()
                    raw = await reader.readuntil(b"\0")
                finally:
                    writer.close()
        except TimeoutError:
            raise ClamdError("timeout", f"no answer within {self.timeout:g} s") from None
        except asyncio.IncompleteReadError as err:
            raise ClamdError(
                "protocol", f"connection closed after {len(err.partial)} bytes"
            ) from None
        except asyncio.LimitOverrunError:
            raise ClamdError("protocol", "reply too long") from None
        except OSError as err:
            raise ClamdError("connect", f"{self.address}: {err.strerror or err}") from None
        # An ERROR reply (including clamd's own "INSTREAM size limit exceeded")
        # comes back as Outcome.ERROR: the caller treats it as "not scanned".
        return parse_reply(raw)
