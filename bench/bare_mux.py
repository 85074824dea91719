"""A floor for the cache-hit benchmark: a mux server that does nothing but answer.

This module owns a stand-in daemon for :mod:`bench.cache_bench`: on uvloop, the
event loop saslimap uses, it accepts a connection, waits for four complete
counted strings, answers ``OK``, half-closes and drains until the client
closes, exactly the socket work saslimap does per request, with no decoding,
policy, cache, metrics or logging.  Its rate is what any Python daemon built
this way could reach on the machine; it is never a gateway (it says OK to
everyone).

Run: ``.venv/bin/python -m bench.bare_mux SOCKET_PATH`` (stops on SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import uvloop

_OK = b"\x00\x02OK"


def _complete(buf: bytes) -> bool:
    pos = 0
    for _ in range(4):
        if len(buf) - pos < 2:
            return False
        pos += 2 + (buf[pos] << 8 | buf[pos + 1])
    return pos <= len(buf)


class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.answered = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answered or self.transport is None:
            return
        self.buf += data
        if _complete(self.buf):
            self.answered = True
            self.transport.write(_OK)
            self.transport.write_eof()

    def eof_received(self) -> bool:
        return False  # close


async def _serve(path: str) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await loop.create_unix_server(_Answer, path, backlog=1024)
    await stop
    server.close()


def main() -> int:
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    uvloop.run(_serve(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
