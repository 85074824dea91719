"""The SMTP side facing Postfix (127.0.0.1:10024): aiosmtpd, created by us, made safe.

This module owns what aiosmtpd needs to behave as an after-queue filter:

- ``XFORWARD`` (Postfix XFORWARD_README): advertised after EHLO and recorded,
  so the original client's name, address and HELO reach the re-injection;
- an exception in our handler answers ``451 4.3.0`` (aiosmtpd's default is a
  500, which would make Postfix bounce the message for our own fault);
- delayed ACKs: Postfix writes the end of DATA in a small segment that Nagle
  holds until our ACK, which Linux delays by up to 40 ms; ``TCP_QUICKACK``
  after every read acknowledges at once;
- a cap on open connections (``421`` beyond it) and the server lifecycle.

The decisions themselves are :mod:`filter.service`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from filter.service import Filter, Message

log = logging.getLogger(__name__)

XFORWARD_ATTRS = ("NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT")


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP with XFORWARD and quick ACKs."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.xforward: dict[str, str] = {}
        self._handler = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._handler.admit(self):
            cast(asyncio.Transport, transport).write(
                b"421 4.3.2 Too many connections, try again later\r\n"
            )
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._handler.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        """Record forwarded client attributes (only from our trusted loopback peer)."""
        for item in (arg or "").split():
            name, eq, value = item.partition("=")
            if not eq or name.upper() not in XFORWARD_ATTRS:
                await self.push("501 5.5.4 Bad XFORWARD attribute")
                return
            self.xforward[name.upper()] = _unxtext(value)
        await self.push("250 2.0.0 Ok")

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        # XFORWARD applies to the next transaction only (Postfix resends it each time).
        self.xforward = {}


def _unxtext(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "+" and _ishex(value[i + 1 : i + 3]):
            out.append(chr(int(value[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _ishex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789ABCDEFabcdef" for c in text)


class Handler:
    """aiosmtpd handler hooks, tracking connections for the cap and the drain."""

    def __init__(self, service: Filter, max_connections: int) -> None:
        self.service = service
        self.max_connections = max_connections
        self.connections: set[FilterSMTP] = set()
        self.busy = 0
        self.idle = asyncio.Event()  # set while no message is being processed
        self.idle.set()

    def admit(self, conn: FilterSMTP) -> bool:
        """Count a connection in, unless the cap is reached."""
        if len(self.connections) >= self.max_connections:
            log.warning("connection cap of %d reached; refusing with 421", self.max_connections)
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: FilterSMTP) -> None:
        """A connection ended."""
        self.connections.discard(conn)

    async def handle_EHLO(
        self, server: FilterSMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        """Advertise XFORWARD before the final line."""
        session.host_name = hostname
        return [*responses[:-1], "250-XFORWARD " + " ".join(XFORWARD_ATTRS), responses[-1]]

    async def handle_DATA(self, server: FilterSMTP, session: Session, envelope: Envelope) -> str:
        """Hand the message to the filter and answer with its verdict."""
        content = envelope.original_content or b""
        if isinstance(content, str):  # only with decode_data=True, which we never set
            content = content.encode("utf-8", "surrogateescape")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        msg = Message(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=content,
            mail_options=tuple(envelope.mail_options or ()),
            smtputf8=bool(envelope.smtp_utf8),
            helo=session.host_name or "",
            peer=peer,
            xforward=dict(server.xforward),
        )
        self.busy += 1
        self.idle.clear()
        try:
            return await self.service.handle(msg)
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()

    async def handle_exception(self, error: Exception) -> str:
        """Our own failure must never bounce mail: Postfix keeps it and retries."""
        log.error("internal error: %s: %s", type(error).__name__, error, exc_info=error)
        return "451 4.3.0 Internal error in the content filter, try again later"


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    hostname: str,
    data_size_limit: int,
    idle_timeout: float,
    sock: socket.socket | None = None,
) -> asyncio.AbstractServer:
    """Listen for Postfix; each connection gets a FilterSMTP."""
    loop = asyncio.get_running_loop()

    def factory() -> FilterSMTP:
        return FilterSMTP(
            handler,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="mail-filter",
            timeout=idle_timeout,
            loop=loop,
        )

    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=128)
    return await loop.create_server(factory, host, port, backlog=128, reuse_address=True)
