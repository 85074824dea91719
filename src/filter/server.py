"""The SMTP side facing Postfix (127.0.0.1:10024): aiosmtpd, created by us, made safe.

This module owns what aiosmtpd needs to behave as an after-queue filter:

- ``XFORWARD`` (Postfix XFORWARD_README): advertised after EHLO and recorded,
  so the original client's name, address and HELO reach the re-injection;
- an exception in our handler answers ``451 4.3.0`` (aiosmtpd's default is a
  500, which would make Postfix bounce the message for our own fault);
- delayed ACKs: Postfix writes the end of DATA in a small segment that Nagle
  holds until our ACK, which Linux delays by up to 40 ms; ``TCP_QUICKACK``
  after every read of the message acknowledges at once (a command's ACK rides
  on our reply, so commands are spared the two system calls it costs);
- a cap on open connections (``421`` beyond it) and the server lifecycle;
- per-connection and per-message cost: the shortcuts of
  :mod:`filter.aiosmtpd_shortcuts`, the one module that touches aiosmtpd's
  (and asyncio's) private names; this one uses only aiosmtpd's public API
  (handler hooks, ``smtp_*`` commands, ``push``, ``transport``).

The decisions themselves are :mod:`filter.service`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, cast

from aiosmtpd.smtp import Envelope, Session, syntax

from filter import replies
from filter.aiosmtpd_shortcuts import ShortcutSMTP
from filter.message import Message
from filter.service import Filter
from mailgate.lifecycle import Tracker

log = logging.getLogger(__name__)

XFORWARD_ATTRS = ("NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT")


class FilterSMTP(ShortcutSMTP):
    """aiosmtpd's SMTP with XFORWARD, the connection cap and quick ACKs."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.xforward: dict[str, str] = {}
        self._handler = handler
        self._sock: Any = None
        self._in_data = False  # reading the message after DATA: acknowledge every read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._handler.admit(self):
            cast(asyncio.Transport, transport).write(replies.TOO_MANY_CONNECTIONS)
            transport.close()
            return
        super().connection_made(transport)
        self._sock = transport.get_extra_info("socket")

    def connection_lost(self, exc: Exception | None) -> None:
        self._handler.forget(self)
        self._sock = None
        if self.transport is None:
            return  # refused at the cap: aiosmtpd never set this connection up
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_data and self._sock is not None and self.transport is not None:
            with contextlib.suppress(OSError, AttributeError):
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        """Record forwarded client attributes (only from our trusted loopback peer)."""
        for item in (arg or "").split():
            name, eq, value = item.partition("=")
            if not eq or name.upper() not in XFORWARD_ATTRS:
                await self.push(replies.XFORWARD_BAD)
                return
            self.xforward[name.upper()] = _unxtext(value)
        await self.push(replies.XFORWARD_OK)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """DATA (quick or aiosmtpd's), reads of the message acknowledged at once."""
        self._in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False

    def reset_transaction(self) -> None:
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


def _valid_utf8(address: str) -> bool:
    """Whether the address's bytes were valid UTF-8.

    aiosmtpd decodes arguments as UTF-8 with ``surrogateescape`` (with SMTPUTF8
    enabled, as here), so invalid bytes arrive as lone surrogates, which UTF-8
    cannot encode: such an address could never be re-injected (it failed at
    DATA with a 451 on every retry before this check).
    """
    if address.isascii():
        return True  # nearly every address: no encoding attempt
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refused_address(session: Session, command: str, address: str) -> None:
    """The one log line for a refused address, its bytes escaped (never raw into the log)."""
    raw = address.encode("utf-8", "surrogateescape")
    log.warning(
        "peer=%s: refused %s:%r: address is not valid UTF-8 (553)",
        _peer(session), command, raw,
    )  # fmt: skip


def _peer(session: Session) -> str:
    return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)


class Handler:
    """aiosmtpd handler hooks, tracking connections for the cap and the drain."""

    def __init__(self, service: Filter, max_connections: int) -> None:
        self.service = service
        self.max_connections = max_connections
        self.tracker = Tracker(max_connections)
        self.connections: set[FilterSMTP] = self.tracker.connections
        self.busy = 0
        self.idle = asyncio.Event()  # set while no message is being processed
        self.idle.set()

    def admit(self, conn: FilterSMTP) -> bool:
        """Count a connection in, unless the cap is reached."""
        if not self.tracker.admit(conn):
            log.warning("connection cap of %d reached; refusing with 421", self.max_connections)
            return False
        return True

    def forget(self, conn: FilterSMTP) -> None:
        """A connection ended."""
        self.tracker.forget(conn)

    async def handle_EHLO(
        self, server: FilterSMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        """Advertise XFORWARD before the final line."""
        session.host_name = hostname
        return [*responses[:-1], "250-XFORWARD " + " ".join(XFORWARD_ATTRS), responses[-1]]

    async def handle_MAIL(
        self, server: FilterSMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:  # fmt: skip
        """Refuse a reverse-path that is not valid UTF-8; else record it as aiosmtpd does."""
        if not _valid_utf8(address):
            _refused_address(session, "MAIL FROM", address)
            return replies.SENDER_NOT_UTF8
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.ENVELOPE_OK

    async def handle_RCPT(
        self, server: FilterSMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:  # fmt: skip
        """Refuse a forward-path that is not valid UTF-8; else record it as aiosmtpd does."""
        if not _valid_utf8(address):
            _refused_address(session, "RCPT TO", address)
            return replies.RECIPIENT_NOT_UTF8
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.ENVELOPE_OK

    async def handle_DATA(self, server: FilterSMTP, session: Session, envelope: Envelope) -> str:
        """Hand the message to the filter and answer with its verdict."""
        content = envelope.original_content or b""
        if isinstance(content, str):  # only with decode_data=True, which we never set
            content = content.encode("utf-8", "surrogateescape")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        # aiosmtpd records the null reverse-path of bounces (MAIL FROM:<>) as "<>";
        # ours is "" (re-injected as MAIL FROM:<>, never sent a DSN).
        mail_from = envelope.mail_from or ""
        msg = Message(
            mail_from="" if mail_from == "<>" else mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=content,
            mail_options=tuple(envelope.mail_options or ()),
            smtputf8=bool(envelope.smtp_utf8),
            helo=session.host_name or "",
            peer=peer,
            xforward=dict(server.xforward),
            dot_lines=server.dot_lines,
            spool=server.spool,
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
        return replies.INTERNAL_ERROR


class SmtpListener:
    """The listening SMTP server and its handler, as the lifecycle drains them."""

    def __init__(self, server: asyncio.AbstractServer, handler: Handler) -> None:
        self.server = server
        self.handler = handler

    def close(self) -> None:
        """Stop accepting; sessions already open carry on."""
        self.server.close()

    async def drain(self, deadline: float) -> None:
        """Wait up to ``deadline`` for messages in progress; then close every connection.

        Closing a connection cancels its session, so a message still unanswered is
        never acknowledged: Postfix keeps it and tries again.
        """
        self.close()
        with contextlib.suppress(TimeoutError):
            # drain_timeout = 0 has always meant "do not wait" for the filter.
            await asyncio.wait_for(self.handler.idle.wait(), deadline)
        if self.handler.busy:
            log.warning("drain deadline passed with %d message(s) unanswered", self.handler.busy)
        for conn in list(self.handler.connections):
            if conn.transport is not None:
                conn.transport.close()


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    *,
    hostname: str,
    data_size_limit: int,
    idle_timeout: float,
    sock: socket.socket | None = None,
    spool_threshold: int = 0,
) -> asyncio.AbstractServer:
    """Listen for Postfix; each connection gets a FilterSMTP.

    ``spool_threshold``: messages larger than this many bytes go to a temporary
    file as they arrive (:mod:`filter.spool`); 0 keeps every message in memory.
    """
    loop = asyncio.get_running_loop()

    def factory() -> FilterSMTP:
        conn = FilterSMTP(
            handler,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="mail-filter",
            timeout=idle_timeout,
            loop=loop,
        )
        conn.spool_threshold = spool_threshold
        return conn

    if sock is not None:
        return await loop.create_server(factory, sock=sock, backlog=128)
    return await loop.create_server(factory, host, port, backlog=128, reuse_address=True)
