"""The mux socket: accept, read with a deadline and a size limit, reply, drain.

This module owns the Unix socket (creating it with the right mode and group,
replacing a stale one safely, removing it on exit), the per-connection state
machine, the connection cap, and the graceful drain on shutdown.  Decoding is
:mod:`saslimap.protocol`'s job and deciding is the authenticator's; a
connection here only moves bytes between them.

Per connection (saslauthd's ``ipc_unix.c`` semantics): one request, one reply,
then a half-close (``shutdown(SHUT_WR)``) and a bounded drain so a fifth field
or trailing bytes never turn into a reset.  A request that is not complete
within ``read_timeout`` of the connection opening (a slow or silent client) is
closed without a reply.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Protocol, cast

from mailgate.lifecycle import Tracker
from mailgate.sockets import bind_unix_socket, unlink_if_ours
from saslimap import protocol
from saslimap.config import ServerConfig
from saslimap.metrics import Metrics
from saslimap.service import Pending, Result, Verdict

log = logging.getLogger(__name__)


class Checker(Protocol):
    """The policy as the server uses it (an :class:`~saslimap.service.Authenticator`)."""

    @property
    def failure_delay(self) -> float:
        """Seconds NO answers are delayed (then they go through :meth:`finish`)."""
        ...

    def decide(
        self,
        login: bytes,
        password: bytes,
        service: bytes,
        realm: bytes,
        client_addr: str = "",
        frame: bytes = b"",
    ) -> Result | Pending:
        """Answer now if no IMAP login is needed."""
        ...

    async def finish(self, decided: Result | Pending) -> Result:
        """Ask the IMAP server if :meth:`decide` could not answer; apply any failure delay."""
        ...

    def repeat(self, frame: bytes) -> bytes | None:
        """The reply if this one read repeats a request answered from a cache (logged)."""
        ...


class _State(enum.Enum):
    READING = "reading"
    CHECKING = "checking"
    DRAINING = "draining"
    CLOSED = "closed"


_REPLY_OK = protocol.reply_ok()


class _Connection(asyncio.Protocol):
    """One client: one request, one reply."""

    __slots__ = ("buf", "deadline", "server", "state", "transport")

    def __init__(self, server: MuxServer) -> None:
        self.server = server
        self.state = _State.READING
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        # When this connection must have finished its current phase (reading the
        # request, or the client closing after our reply); MuxServer's sweeper
        # enforces it, so no timer is created per connection.
        self.deadline = math.inf

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.admit(self):
            self.state = _State.CLOSED
            self.transport.abort()
            return
        self.deadline = self.server.loop.time() + self.server.read_timeout

    def data_received(self, data: bytes) -> None:
        if self.state is not _State.READING:
            return  # trailing bytes after a complete request are drained and ignored
        if not self.buf:
            reply = self.server.checker.repeat(data)
            if reply is not None:  # the commonest requests: repeats answered from a cache
                self._reply(reply)
                return
        if self.buf:  # the request came in pieces
            self.buf += data
            data = bytes(self.buf)
        try:
            parsed = protocol.parse_request(data, self.server.cfg.max_field_length)
        except protocol.FieldTooLong as err:
            self.server.bad_request(f"{err}")
            self._reply(protocol.reply_no(f"{err.name} too long"))
            return
        if parsed is None:
            if not self.buf:
                self.buf += data
            if len(self.buf) > self.server.max_request:  # cannot happen with checked lengths
                self.server.bad_request("request larger than any valid one")
                self._close()
            return
        self.state = _State.CHECKING
        self._cancel_timer()
        req = parsed.request
        checker = self.server.checker
        try:
            addr = (req.client_addr or b"").decode("ascii", "replace")
            # The whole read, if it is exactly this request, for repeat() next time.
            frame = data if parsed.consumed == len(data) else b""
            decided = checker.decide(req.login, req.password, req.service, req.realm, addr, frame)
        except Exception:
            log.exception("internal error while checking a request; answering tempfail")
            decided = Result(Verdict.TEMPFAIL, "internal error")
        if isinstance(decided, Result) and not (
            decided.verdict is Verdict.NO and checker.failure_delay
        ):
            self._answer(decided)  # cache hits and refusals: no task, no await
        else:
            # The checker that decided finishes (a reload may replace the server's meanwhile).
            self.server.spawn(self._finish(checker, decided))

    def eof_received(self) -> bool:
        if self.state is _State.READING:
            self.server.bad_request(f"truncated request ({len(self.buf)} bytes) closed")
            self._close()
            return False
        if self.state is _State.DRAINING:
            self._close()
            return False
        return True  # half-closed while we check: keep the socket open to reply

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _State.CLOSED
        self._cancel_timer()
        self.server.forget(self)

    # -- our own steps -----------------------------------------------------
    async def _finish(self, checker: Checker, decided: Result | Pending) -> None:
        try:
            result = await checker.finish(decided)
        except Exception:
            # The policy never raises for bad input; anything here is our bug.
            log.exception("internal error while checking a request; answering tempfail")
            result = Result(Verdict.TEMPFAIL, "internal error")
        self._answer(result)

    def _answer(self, result: Result) -> None:
        if self.state is not _State.CHECKING:
            return  # the client went away; the check was still logged
        if result.verdict is Verdict.OK:
            self._reply(_REPLY_OK)
        elif result.verdict is Verdict.NO:
            self._reply(protocol.reply_no(result.reason))
        elif self.server.cfg.on_backend_error == "no":
            self._reply(protocol.reply_no(f"temporary failure: {result.reason}"))
        else:
            # No reply: libsasl reports "generic failure" and Postfix answers 454 4.7.0,
            # which clients retry and fail2ban does not count as a wrong password.
            self._close()

    def _reply(self, frame: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.state = _State.DRAINING
        transport.write(frame)
        if transport.can_write_eof():
            transport.write_eof()
        if self.buf:
            self.buf.clear()
        # Now the client's turn to close (the read deadline is replaced, not added to).
        self.deadline = self.server.loop.time() + self.server.read_timeout

    def expire(self) -> None:
        """The deadline passed: a slow or silent client, or one that never closes."""
        if self.state is _State.READING:
            self.server.bad_request(
                f"no complete request within {self.server.cfg.read_timeout:g} s "
                f"({len(self.buf)} bytes) closed"
            )
        self._close()

    def _cancel_timer(self) -> None:
        self.deadline = math.inf

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and self.state is not _State.CLOSED:
            self.state = _State.CLOSED
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (used when the drain deadline passes)."""
        if self.transport is not None:
            self.transport.abort()


class MuxServer:
    """The saslauthd-protocol server on a Unix socket."""

    def __init__(
        self,
        cfg: ServerConfig,
        checker: Checker,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.checker = checker
        self.metrics = metrics or Metrics()
        self.loop = asyncio.get_running_loop()
        self.max_request = protocol.max_request_size(cfg.max_field_length)
        self.read_timeout = cfg.read_timeout
        self.tracker = Tracker(cfg.max_connections)
        # The tracker's own sets, named here for the per-request paths.
        self.connections: set[_Connection] = self.tracker.connections
        self.tasks: set[asyncio.Task[None]] = self.tracker.tasks
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._path: Path | None = None
        self._inode: int | None = None
        self._refused = 0
        self._refused_logged_at = 0.0
        self.bad_requests = 0

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on ``sock`` (e.g. from systemd) or on a socket created at ``cfg.socket``."""
        if sock is None:
            sock = bind_unix_socket(
                self.cfg.socket,
                self.cfg.socket_mode,
                self.cfg.socket_group,
                self.cfg.create_directory,
            )
            self._path = self.cfg.socket
            self._inode = os.stat(self._path).st_ino
        self._server = await self.loop.create_unix_server(
            functools.partial(_Connection, self), sock=sock, backlog=1024
        )
        self._sweep()
        log.info("listening on %s", self._path or sock.getsockname())

    def _sweep(self) -> None:
        """Enforce connection deadlines, a few times per second (one timer for all)."""
        now = self.loop.time()
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.expire()
        self._sweeper = self.loop.call_later(min(0.1, self.cfg.read_timeout / 4), self._sweep)

    # -- bookkeeping used by connections ----------------------------------
    def admit(self, conn: _Connection) -> bool:
        """Count a new connection in, unless the cap is reached."""
        if len(self.connections) >= self.cfg.max_connections:
            self._refused += 1
            self.metrics.connections_refused.inc()
            now = time.monotonic()
            if now - self._refused_logged_at >= 10.0:  # one line per 10 s, not one per client
                log.warning(
                    "connection cap of %d reached; refused %d connection(s) since last report",
                    self.cfg.max_connections,
                    self._refused,
                )
                self._refused = 0
                self._refused_logged_at = now
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: _Connection) -> None:
        """A connection ended."""
        self.connections.discard(conn)

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a check, keeping a reference so it is not garbage-collected and can be awaited."""
        self.tracker.spawn(coro)

    def bad_request(self, what: str) -> None:
        """Log one line for a request that could not be answered normally."""
        self.bad_requests += 1
        self.metrics.count_request("bad_request")
        log.warning("bad request: %s", what)

    # -- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        """Stop accepting; connections already open carry on."""
        if self._server is not None:
            self._server.close()
        self._unlink()

    async def drain(self, deadline: float) -> None:
        """Wait up to ``deadline`` seconds for checks in progress, then drop what is left."""
        self.close()
        await self.tracker.finish_tasks(deadline, "check")
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def _unlink(self) -> None:
        if self._path is not None and self._inode is not None:
            unlink_if_ours(self._path, self._inode)
        self._path = None
