"""Every use of aiosmtpd's and asyncio's private names, in one class: the per-connection shortcuts.

Postfix (and smtp-source) opens a connection per message, and aiosmtpd's
constructor rebuilds its command, hook and AUTH tables with
``dir()``/``inspect.getmembers()`` every time; it parses every path with the
``email`` package's RFC 5322 parser, reads the message after DATA a line at a
time and writes each EHLO line on its own.  :class:`ShortcutSMTP` builds the
tables once per class, parses plain ``<local@domain>`` paths with one regular
expression, takes many complete lines after DATA at once (the pure halves are
:mod:`filter.smtp_in`) and sends the EHLO reply in one write.  Each shortcut
gives aiosmtpd's own result: ``tests/filter/test_server.py`` compares them
over real sockets with aiosmtpd's code, and ``tests/filter/test_smtp_in.py``
the pure halves.

The shortcuts mirror aiosmtpd's code of the exact versions in
:data:`SHORTCUT_VERSIONS`, the ones those tests ran against (``pyproject.toml``
pins aiosmtpd to them).  With any other version :attr:`ShortcutSMTP.shortcuts`
is False and aiosmtpd's own code runs; a test may set that class attribute to
compare the two.  The transaction-reset hook (:meth:`ShortcutSMTP.reset_transaction`)
is always on: it is how :mod:`filter.server` forgets XFORWARD attributes.

The private names touched here, and nowhere else in ``src/filter``
(``tests/filter/test_server.py`` checks both):

aiosmtpd 1.4 (``aiosmtpd.smtp``):

- ``SMTP.__init__``'s private attributes, set by the quick constructor:
  ``__ident__``, ``_decode_data``, ``_timeout_duration``, ``_timeout_handle``,
  ``_tls_handshake_okay``, ``_tls_protocol``, ``_original_transport``,
  ``_handler_coroutine``, ``_auth_require_tls``, ``_proxy_timeout``,
  ``_auth_callback``, ``_authenticator``, ``_auth_required``,
  ``_auth_methods``, ``_handle_hooks``, ``_ehlo_hook_ver``, ``_smtp_methods``,
  ``_enforce_call_limit`` (and the public ``loop``, ``event_handler``,
  ``data_size_limit``, ``enable_SMTPUTF8``, ``command_size_limits``,
  ``hostname``, ``tls_context``, ``require_starttls``, ``session``,
  ``envelope``, ``transport``);
- the module's ``_AuthMechAttr`` (the AUTH table's entries);
- the methods ``_cb_client_connected`` (passed on as aiosmtpd does),
  ``_getaddr`` (overridden), ``_call_handler_hook``, ``_set_post_data_state``
  and ``_set_rset_state`` (overridden, to call :meth:`reset_transaction`);
- the stream attributes ``_reader`` and ``_writer``.

asyncio:

- ``StreamReader._buffer``, peeked at (never changed) for complete lines;
- ``StreamReaderProtocol.__init__``, called directly as ``SMTP.__init__`` does
  (the class is undocumented).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, AnyStr, ClassVar
from warnings import warn

import aiosmtpd
from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import SMTP, syntax

from filter import replies
from filter.smtp_in import DataDecoder, DataState, parse_path
from filter.spool import Spool, head_length

log = logging.getLogger(__name__)

SHORTCUT_VERSIONS = frozenset({"1.4.6"})
"""aiosmtpd versions whose SMTP.__init__, _getaddr, smtp_EHLO and smtp_DATA the shortcuts
mirror, and against which the differential tests ran."""

# Constructor arguments the quick constructor handles: everything else (TLS,
# AUTH, PROXY, call limits) takes aiosmtpd's constructor.
_QUICK_KWARGS = frozenset(
    {"data_size_limit", "enable_SMTPUTF8", "decode_data", "hostname", "ident", "timeout", "loop"}
)


def shortcuts_for(version: str) -> bool:
    """Whether the shortcuts were checked against this aiosmtpd version (exactly)."""
    return version in SHORTCUT_VERSIONS


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


class ShortcutSMTP(SMTP):
    """aiosmtpd's SMTP, quicker per connection and per message, with the same replies."""

    shortcuts: ClassVar[bool] = shortcuts_for(aiosmtpd.__version__)
    """Whether the shortcuts run: only for :data:`SHORTCUT_VERSIONS` (tests may switch it)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        if self.shortcuts and kwargs.keys() <= _QUICK_KWARGS and kwargs.get("loop") is not None:
            _quick_init(self, handler, **kwargs)
        else:
            super().__init__(handler, **kwargs)
        self.dot_lines = True  # whether the last message had a dot-stuffed line (if unknown: yes)
        self._corked: list[bytes] | None = None
        self.spool_threshold = 0
        """Bytes of message data beyond which the quick DATA loop spools it (0: never)."""
        self.spool_directory: str | None = None
        self.spool: Spool | None = None
        """The message being handed to ``handle_DATA``, when it was spooled: its ``content``
        is then the head only (:func:`filter.spool.head_length`).  Closed after the hook."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's path parser, skipped for a plain ``<local@domain>`` (same result)."""
        found = parse_path(arg) if self.shortcuts else None
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
        if not self.shortcuts:
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

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4's DATA, taking all complete lines in the buffer at once.

        The replies, the limits and the content handed to ``handle_DATA`` are
        aiosmtpd's (:class:`filter.smtp_in.DataDecoder` applies its rules);
        only the number of reads differs.  Sets :attr:`dot_lines`.
        """
        self.dot_lines = True  # until our decoder says otherwise
        reader = self._reader
        buffer = getattr(reader, "_buffer", None)  # peeked at, never changed
        if (
            not self.shortcuts
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
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        await self.push(replies.START_DATA)
        decoder = DataDecoder(self.data_size_limit, self.line_length_limit)
        spooler = _Spooler(self.spool_threshold, self.spool_directory)
        try:
            while self.transport is not None and not decoder.done:
                if decoder.at_line_start:
                    complete, dotted = decoder.scan(buffer)
                    if complete:
                        # Already buffered: readexactly() returns without waiting.
                        decoder.feed_lines(await reader.readexactly(complete), dotted=dotted)
                        if decoder.num_bytes > spooler.threshold:
                            spooler.take(decoder)
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
                if decoder.num_bytes > spooler.threshold:
                    spooler.take(decoder)
            if decoder.state is DataState.TOO_LONG:
                await self.push(replies.LINE_TOO_LONG)
            elif decoder.state is DataState.TOO_MUCH:
                await self.push(replies.TOO_MUCH_DATA)
            elif spooler.error:
                await self.push(replies.SPOOL_FAILED.format(error=spooler.error))
            if decoder.state is not DataState.NOMINAL or spooler.error:
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            self.spool = spooler.finish(decoder)
            content = decoder.content() if self.spool is None else spooler.head
            self.dot_lines = decoder.dotted
            self.envelope.content = content
            self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
        finally:
            spooler.close()
            self.spool = None
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(replies.DATA_OK if status is aiosmtpd_smtp.MISSING else status)

    def _set_rset_state(self) -> None:
        super()._set_rset_state()  # type: ignore[no-untyped-call]
        self.reset_transaction()

    def reset_transaction(self) -> None:
        """Called whenever aiosmtpd resets the session state (connection start, HELO/EHLO, RSET)."""


class _Spooler:
    """Moves a large message's data from the DATA decoder to a file as it arrives."""

    def __init__(self, threshold: int, directory: str | None) -> None:
        # No threshold: never (num_bytes is never above this).
        self.threshold = threshold or 1 << 62
        self.directory = directory
        self.spool: Spool | None = None
        self.error = ""
        self.head = b""

    def take(self, decoder: DataDecoder) -> None:
        """Write what the decoder holds to the file (created on first use)."""
        blocks = decoder.take_blocks()
        if self.error or decoder.state is not DataState.NOMINAL:
            return  # nothing is kept any more: the message is refused at its end
        try:
            if self.spool is None:
                self.spool = Spool(self.directory)
            for block in blocks:
                self.spool.write(block)
        except OSError as err:
            # Read the rest of the data all the same, then answer 451 (Postfix keeps it).
            self.error = err.strerror or str(err)
            log.error("could not spool a message: %s", err)
            self.close()

    def finish(self, decoder: DataDecoder) -> Spool | None:
        """The spooled message, complete, with its head read back (None: not spooled)."""
        if self.spool is None:
            return None
        self.take(decoder)
        if self.spool is None:
            raise OSError(self.error)  # answered 451 by the exception hook
        self.head = self.spool.read(0, head_length(self.spool))
        return self.spool

    def close(self) -> None:
        """Give the file back."""
        if self.spool is not None:
            self.spool.close()
            self.spool = None


def _quick_init(
    self: SMTP,
    handler: Any,
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

    Sets the same attributes of the connection ``self`` to the same values; only
    the introspection is done once per class (``_tables``) instead of once per
    connection.
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
