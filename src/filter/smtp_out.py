"""Re-injection: handing a scanned message back to Postfix (127.0.0.1:10025) over SMTP.

Two layers.  The codec (pure functions over bytes) owns SMTP reply parsing
(multi-line ``250-``/``250 `` replies, RFC 5321 4.2), the command lines we
send, and dot-stuffing (RFC 5321 4.5.2).  :class:`Reinjector` owns the
connections: it keeps a few open between messages (so a message costs no TCP
or EHLO round trips), pipelines MAIL, RCPT and DATA when the server offers
PIPELINING (RFC 2920), passes XFORWARD attributes when offered, and reports
every recipient's reply so the caller can answer Postfix without losing any.

It never guesses: if the connection breaks after the message body was sent
and before the final reply, the outcome is unknown and reported as a
temporary failure (Postfix retries; a duplicate is possible, a loss is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from filter.spool import Tail, stuffed

log = logging.getLogger(__name__)

MAX_LINE = 2048
MAX_REPLY_LINES = 100

Payload = bytes | Callable[[], Iterator[bytes]]
"""What follows DATA: the stuffed bytes, or (a spooled message) a maker of its blocks,
called again if the message must be sent on a fresh connection."""


class SmtpProtocolError(Exception):
    """The server's replies do not follow SMTP."""


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: code and the text of all its lines joined by a space."""

    code: int
    text: str

    @property
    def ok(self) -> bool:
        """2xx."""
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        """4xx."""
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def parse_reply(buf: bytes) -> tuple[Reply | None, int]:
    """Decode one complete reply from the start of ``buf``: (reply, bytes used) or (None, 0)."""
    pos = 0
    texts: list[str] = []
    while True:
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_LINE:
                raise SmtpProtocolError("reply line too long")
            return None, 0
        line = buf[pos:end].rstrip(b"\r")
        pos = end + 1
        if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
            raise SmtpProtocolError(f"not an SMTP reply line: {line[:60]!r}")
        texts.append(line[4:].decode("utf-8", "replace"))
        if len(texts) > MAX_REPLY_LINES:
            raise SmtpProtocolError("reply has too many lines")
        if line[3:4] != b"-":
            return Reply(int(line[:3]), " ".join(t for t in texts if t)), pos


def dot_stuff(data: bytes, *, dot_lines: bool = True) -> bytes:
    """The DATA payload: leading dots doubled, CRLF line ends, and the final ``.`` line.

    ``dot_lines=False`` promises that no line after the first starts with a dot
    (the message came in with none, :attr:`filter.smtp_in.DataDecoder.dotted`),
    which spares a search of the whole message.
    """
    # A bare LF is an LF outside a CRLF pair (counted, not searched for in a copy).
    if b"\r\n" not in data or data.count(b"\n") != data.count(b"\r\n"):
        # Normalise bare LF (and lone CR) to CRLF: SMTP requires CRLF (RFC 5321 2.3.8).
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        dot_lines = True  # new line starts: any of them may be a dot (SMTP smuggling)
    if data.startswith(b"."):
        data = b"." + data
    if dot_lines:
        data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def ehlo_keywords(lines: Sequence[str]) -> dict[str, str]:
    """EHLO extensions (upper-case keyword -> parameters) from the lines after the first."""
    out: dict[str, str] = {}
    for line in lines[1:]:
        keyword, _, params = line.partition(" ")
        out[keyword.upper()] = params
    return out


def xforward_lines(attrs: Mapping[str, str], offered: str) -> list[bytes]:
    """XFORWARD commands for the attributes the server offers (Postfix XFORWARD_README).

    Values are sent as xtext-safe text; at most a few attributes per line to stay short.
    """
    names = {n.upper() for n in offered.split()}
    items = [f"{k}={_xtext(v)}" for k, v in attrs.items() if k.upper() in names and v is not None]
    return [f"XFORWARD {' '.join(items[i : i + 3])}\r\n".encode() for i in range(0, len(items), 3)]


def _xtext(value: str) -> str:
    # RFC 3461 xtext: "+", "=", controls and non-ASCII become +XX.
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else "".join(f"+{b:02X}" for b in _raw(c))
        for c in value
    )


def _raw(char: str) -> bytes:
    # A byte that was not UTF-8 arrives from aiosmtpd as a lone surrogate
    # (surrogateescape): xtext carries the original byte, it never raises.
    return char.encode("utf-8", "surrogateescape")


@dataclass
class Delivery:
    """What the downstream server said about one message."""

    recipients: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None
    error: str = ""  # set when the exchange broke off; the outcome is then unknown/temporary

    @property
    def accepted(self) -> list[str]:
        """Recipients the server took (only meaningful with a 2xx data reply)."""
        return [r for r, reply in self.recipients.items() if reply.ok]


class _Conn:
    """One SMTP connection to the downstream server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.extensions: dict[str, str] = {}
        self.last_used = time.monotonic()

    async def reply(self) -> Reply:
        while True:
            reply, used = parse_reply(self.buf)
            if reply is not None:
                self.buf = self.buf[used:]
                return reply
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk

    async def ehlo(self, name: str) -> None:
        greeting = await self.reply()
        if greeting.code != 220:
            raise ConnectionError(f"greeting {greeting}")
        self.writer.write(f"EHLO {name}\r\n".encode())
        # Read the EHLO reply line by line to keep the extension list.
        lines: list[str] = []
        while True:
            end = self.buf.find(b"\n")
            while end < 0:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError("connection closed during EHLO")
                self.buf += chunk
                end = self.buf.find(b"\n")
            line = self.buf[:end].rstrip(b"\r").decode("utf-8", "replace")
            self.buf = self.buf[end + 1 :]
            if not line[:3].isdigit():
                raise SmtpProtocolError(f"bad EHLO reply line {line[:60]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                if line[:1] != "2":
                    raise ConnectionError(f"EHLO refused: {line}")
                break
        self.extensions = ehlo_keywords(lines)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Reinjector:
    """Sends messages to the downstream SMTP server, reusing connections."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        helo: str = "localhost",
        timeout: float = 60.0,
        pool_size: int = 8,
        max_idle: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.helo = helo
        self.timeout = timeout
        self.pool_size = pool_size
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        self.closed = False  # after close(): connections coming back are closed, not pooled

    @property
    def pooled(self) -> int:
        """Connections kept open for the next message (every other one is closed)."""
        return len(self._idle)

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE * 64)
        conn = _Conn(reader, writer)
        try:
            await conn.ehlo(self.helo)
        except BaseException:
            conn.close()
            raise
        return conn

    def _take(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.last_used < self.max_idle and not conn.writer.is_closing():
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Conn) -> None:
        conn.last_used = time.monotonic()
        if not self.closed and len(self._idle) < self.pool_size:
            self._idle.append(conn)
        else:
            conn.close()

    async def send(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        mail_params: Sequence[str] = (),
        xforward: Mapping[str, str] | None = None,
        dot_lines: bool = True,
        tail: Tail | None = None,
    ) -> Delivery:
        """Deliver one message; never raises for SMTP or network trouble (see Delivery.error).

        ``dot_lines=False``: no line of ``data`` after the first starts with a dot.
        ``tail``: the rest of a spooled message after ``data``; the whole is then sent
        from its file, dot-stuffed a block at a time, never joined in memory.
        """
        payload: Payload
        if tail is None:
            payload = dot_stuff(data, dot_lines=dot_lines)
        else:
            payload = functools.partial(_stuffed_stream, data, tail)
        for attempt in (1, 2):
            conn = self._take() if attempt == 1 else None
            fresh = conn is None
            try:
                async with asyncio.timeout(self.timeout):
                    if conn is None:
                        conn = await self._connect()
                    delivery = await self._transaction(
                        conn, mail_from, recipients, payload, mail_params, xforward or {}
                    )
            except (ConnectionError, OSError, SmtpProtocolError, TimeoutError) as err:
                if conn is not None:
                    conn.close()
                if isinstance(err, _StaleConnection) and not fresh:
                    continue  # a pooled connection the server had closed: nothing was sent
                what = "timeout" if isinstance(err, TimeoutError) else type(err).__name__
                return Delivery(error=f"{what}: {err}")
            except BaseException:
                # Our own exception or the caller's cancellation (the message deadline):
                # the transaction's state is unknown, so the connection is never reused,
                # and closed here rather than left to the server's idle timeout.
                if conn is not None:
                    conn.close()
                raise
            if delivery.error:
                conn.close()
            else:
                self._give_back(conn)
            return delivery
        return Delivery(error="could not connect")

    async def _transaction(
        self,
        conn: _Conn,
        mail_from: str,
        recipients: Sequence[str],
        payload: Payload,
        mail_params: Sequence[str],
        xforward: Mapping[str, str],
    ) -> Delivery:
        delivery = Delivery()
        ext = conn.extensions
        commands: list[bytes] = []
        if xforward and "XFORWARD" in ext:
            commands += xforward_lines(xforward, ext["XFORWARD"])
        params = [p for p in mail_params if _offered(p, ext)]
        commands.append(f"MAIL FROM:<{mail_from}>{''.join(' ' + p for p in params)}\r\n".encode())
        commands += [f"RCPT TO:<{r}>\r\n".encode() for r in recipients]
        commands.append(b"DATA\r\n")
        pipelining = "PIPELINING" in ext
        replies: list[Reply] = []
        try:
            if pipelining:
                conn.writer.write(b"".join(commands))
                for _ in commands:
                    replies.append(await conn.reply())
            else:
                for command in commands:
                    conn.writer.write(command)
                    replies.append(await conn.reply())
                    if command.startswith(b"MAIL") and not replies[-1].ok:
                        break
        except ConnectionError as err:
            if not replies:
                raise _StaleConnection(str(err)) from err
            raise
        n_xf = len(commands) - len(recipients) - 2
        xf_replies, rest = replies[:n_xf], replies[n_xf:]
        if any(not r.ok for r in xf_replies):
            log.warning("downstream refused XFORWARD: %s", xf_replies)
        mail_reply = rest[0]
        if not mail_reply.ok:
            delivery.recipients = {r: mail_reply for r in recipients}
            delivery.data = mail_reply
            await self._reset(conn)
            return delivery
        delivery.recipients = dict(zip(recipients, rest[1 : 1 + len(recipients)], strict=True))
        data_reply = rest[1 + len(recipients)] if len(rest) > 1 + len(recipients) else None
        if data_reply is None or data_reply.code != 354:
            delivery.data = data_reply or Reply(554, "no DATA")
            await self._reset(conn)
            return delivery
        if not delivery.accepted:
            # 354 although nobody was accepted (RFC 2920 3.1): end the data at once.
            conn.writer.write(b".\r\n")
            await conn.reply()
            delivery.data = Reply(554, "no valid recipients")
            return delivery
        try:
            if isinstance(payload, bytes):
                conn.writer.write(payload)
            else:
                # A block at a time, each written out before the next is read: the
                # message is never all in memory, in our buffers or the transport's.
                for block in payload():
                    conn.writer.write(block)
                    await conn.writer.drain()
            delivery.data = await conn.reply()
        except (ConnectionError, OSError) as err:
            delivery.error = f"connection lost after the message was sent ({err}); outcome unknown"
        return delivery

    @staticmethod
    async def _reset(conn: _Conn) -> None:
        conn.writer.write(b"RSET\r\n")
        await conn.reply()

    async def close(self) -> None:
        """Close idle connections with QUIT; ones still in use are closed when they come back."""
        self.closed = True
        while self._idle:
            conn = self._idle.pop()
            with contextlib.suppress(Exception):
                conn.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(conn.writer.drain(), 1)
            conn.close()


def _stuffed_stream(head: bytes, tail: Tail) -> Iterator[bytes]:
    """The DATA payload of a spooled message: its marked head, then its file."""
    return stuffed(itertools.chain((head,), tail.chunks()))


class _StaleConnection(ConnectionError):
    """A pooled connection failed before the server answered anything."""


def _offered(param: str, ext: Mapping[str, str]) -> bool:
    """Whether the downstream server advertised the extension a MAIL parameter needs."""
    key = param.split("=", 1)[0].upper()
    needs = {"SIZE": "SIZE", "BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8"}.get(key)
    return needs is not None and needs in ext
