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
- per-connection cost: Postfix (and smtp-source) opens a connection per
  message, and aiosmtpd's constructor rebuilds its command, hook and AUTH
  tables with ``dir()``/``inspect.getmembers()`` every time.  The tables depend
  only on the classes, so :class:`FilterSMTP` builds them once and binds them
  per connection; plain ``<local@domain>`` paths skip the ``email`` package's
  parser and the message after DATA is taken many lines at a time
  (:mod:`filter.smtp_in`); the EHLO reply goes out in one write.  Each
  shortcut is taken only for the aiosmtpd series it was checked against and
  gives aiosmtpd's own result (``tests/filter/test_server.py`` compares).

The decisions themselves are :mod:`filter.service`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, AnyStr, cast
from warnings import warn

import aiosmtpd
from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from filter.message import Message
from filter.service import Filter
from filter.smtp_in import DataDecoder, DataState, parse_path
from mailgate.lifecycle import Tracker

log = logging.getLogger(__name__)

XFORWARD_ATTRS = ("NAME", "ADDR", "PROTO", "HELO", "SOURCE", "PORT", "IDENT")

# The shortcuts below mirror aiosmtpd 1.4's SMTP.__init__ and SMTP._getaddr;
# with any other series aiosmtpd's own code runs.
SHORTCUTS = aiosmtpd.__version__.startswith("1.4.")
# Constructor arguments the quick constructor handles: everything else (TLS,
# AUTH, PROXY, call limits) takes aiosmtpd's constructor.
_QUICK_KWARGS = frozenset(
    {"data_size_limit", "enable_SMTPUTF8", "decode_data", "hostname", "ident", "timeout", "loop"}
)


@dataclass(frozen=True)
class _Tables:
    """What aiosmtpd's constructor finds by introspection, by attribute name."""

    smtp: tuple[tuple[str, str], ...]
    """(command, method name on the connection), in dir() order."""
    auth: tuple[tuple[str, bool, str], ...]
    """(mechanism, whether it is the connection's own method, method name), in the order
    aiosmtpd's dict comprehension met them (a handler's mechanism replaces a built-in one)."""
    hooks: dict[str, Callable[..., Any]]
    """The handler's bound ``handle_*`` hooks (the handler is the same for every connection)."""
    ehlo_hook_ver: str | None
    """aiosmtpd's classification of the handler's ``handle_EHLO`` signature."""


# handler -> {connection class -> tables}; weak, so a dropped handler is forgotten.
_TABLES: weakref.WeakKeyDictionary[Any, dict[type[SMTP], _Tables]] = weakref.WeakKeyDictionary()


def _tables(conn: SMTP, handler: Any) -> _Tables:
    """The tables for this connection class and handler, built on first use like aiosmtpd does."""
    per_class = _TABLES.get(handler)
    if per_class is None:
        per_class = _TABLES[handler] = {}
    tables = per_class.get(type(conn))
    if tables is not None:
        return tables
    auth = tuple(
        (
            getattr(mfunc, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-")),
            obj is conn,
            name,
        )
        for obj in (conn, handler)
        for name, mfunc in inspect.getmembers(obj)
        if name.startswith("auth_")
    )
    hooks = {
        name.replace("handle_", ""): getattr(handler, name)
        for name in dir(handler)
        if name.startswith("handle_")
    }
    ehlo_hook = hooks.get("EHLO")
    ver: str | None = None
    if ehlo_hook is not None:
        ver = {4: "old", 5: "new"}.get(len(inspect.signature(ehlo_hook).parameters), "unsupported")
    smtp = tuple((m.replace("smtp_", ""), m) for m in dir(conn) if m.startswith("smtp_"))
    tables = per_class[type(conn)] = _Tables(smtp, auth, hooks, ver)
    return tables


class FilterSMTP(SMTP):
    """aiosmtpd's SMTP with XFORWARD and quick ACKs."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        if SHORTCUTS and kwargs.keys() <= _QUICK_KWARGS and kwargs.get("loop") is not None:
            self._quick_init(handler, **kwargs)
        else:
            super().__init__(handler, **kwargs)
        self.xforward: dict[str, str] = {}
        self._handler = handler
        self._sock: Any = None
        self._in_data = False  # reading the message after DATA: acknowledge every read
        self.dot_lines = True  # whether the last message had a dot-stuffed line (if unknown: yes)
        self._corked: list[bytes] | None = None

    def _quick_init(
        self,
        handler: Handler,
        *,
        loop: asyncio.AbstractEventLoop,
        data_size_limit: int | None = aiosmtpd_smtp.DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        hostname: str | None = None,
        ident: str | None = None,
        timeout: float = 300,
    ) -> None:
        """SMTP.__init__ of aiosmtpd 1.4 without TLS, AUTH, PROXY or call limits.

        Sets the same attributes to the same values; only the introspection is
        done once per class (``_tables``) instead of once per connection.
        """
        self.__ident__ = ident or aiosmtpd_smtp.__ident__
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = handler
        assert data_size_limit is None or isinstance(data_size_limit, int)
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname or socket.getfqdn()
        self.tls_context = None
        self.require_starttls = None  # aiosmtpd: ``tls_context and require_starttls``
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._auth_callback = aiosmtpd_smtp.login_always_fail
        self._authenticator = None
        self._auth_required = False
        tables = _tables(self, handler)
        self._auth_methods = {
            mech: aiosmtpd_smtp._AuthMechAttr(getattr(self if own else handler, name), own)
            for mech, own, name in tables.auth
        }
        if aiosmtpd_smtp.log.isEnabledFor(logging.INFO):
            aiosmtpd_smtp.log.info(
                "Available AUTH mechanisms: "
                + " ".join(
                    m + "(builtin)" if impl.is_builtin else m
                    for m, impl in sorted(self._auth_methods.items())
                )
            )
        self._handle_hooks = tables.hooks
        if tables.ehlo_hook_ver == "old":
            warn(
                "Use the 5-argument handle_EHLO() hook instead of the 4-argument handle_EHLO()"
                " hook; support for the 4-argument handle_EHLO() hook will be removed in"
                " version 2.0",
                DeprecationWarning,
                stacklevel=2,
            )
        elif tables.ehlo_hook_ver == "unsupported":
            raise RuntimeError("Unsupported EHLO Hook")
        self._ehlo_hook_ver = tables.ehlo_hook_ver
        self._smtp_methods = {command: getattr(self, name) for command, name in tables.smtp}
        self._enforce_call_limit = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._handler.admit(self):
            cast(asyncio.Transport, transport).write(
                b"421 4.3.2 Too many connections, try again later\r\n"
            )
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

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's path parser, skipped for a plain ``<local@domain>`` (same result)."""
        found = parse_path(arg) if SHORTCUTS else None
        if found is None:
            return super()._getaddr(arg)
        address, rest = found
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    async def push(self, status: AnyStr) -> None:
        """aiosmtpd's push, or, while the EHLO reply is being built, collect the line."""
        if self._corked is None:
            await super().push(status)
            return
        if isinstance(status, str):
            response = bytes(status, "utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        self._corked.append(response + b"\r\n")
        assert self.session is not None
        aiosmtpd_smtp.log.debug("%r << %r", self.session.peer, response)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        """aiosmtpd's EHLO, its lines sent in one write rather than one each."""
        if not SHORTCUTS:
            await super().smtp_EHLO(hostname)
            return
        self._corked = []
        try:
            await super().smtp_EHLO(hostname)
        finally:
            lines, self._corked = self._corked, None
            if lines:
                self._writer.write(b"".join(lines))
                await self._writer.drain()

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

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reads of the message acknowledged at once."""
        self.dot_lines = True  # until our decoder says otherwise
        self._in_data = True
        try:
            await self._data(arg)
        finally:
            self._in_data = False

    async def _data(self, arg: str) -> None:
        """aiosmtpd 1.4's DATA, taking all complete lines in the buffer at once.

        The replies, the limits and the content handed to ``handle_DATA`` are
        aiosmtpd's (:class:`filter.smtp_in.DataDecoder` applies its rules);
        only the number of reads differs.
        """
        reader = self._reader
        buffer = getattr(reader, "_buffer", None)  # peeked at, never changed
        if (
            not SHORTCUTS
            or self._decode_data
            or "DATA" not in self._handle_hooks
            or not isinstance(buffer, bytearray)
        ):
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        decoder = DataDecoder(self.data_size_limit, self.line_length_limit)
        while self.transport is not None and not decoder.done:
            if decoder.at_line_start:
                complete, dotted = decoder.scan(buffer)
                if complete:
                    # Already buffered: readexactly() returns without waiting.
                    decoder.feed_lines(await reader.readexactly(complete), dotted=dotted)
                    continue
            # No complete line yet: aiosmtpd's own read, which waits for one.
            try:
                piece = await reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                aiosmtpd_smtp.log.info("Connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as err:
                decoder.feed_piece(await reader.read(err.consumed), overrun=True)
                continue
            decoder.feed_piece(piece)
        if decoder.state is DataState.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
        elif decoder.state is DataState.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
        if decoder.state is not DataState.NOMINAL:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        content = decoder.content()
        self.dot_lines = decoder.dotted
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is aiosmtpd_smtp.MISSING else status)

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
            await asyncio.wait_for(self.handler.idle.wait(), deadline or None)
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
