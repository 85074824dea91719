"""The Dovecot-protocol listener: Postfix's ``smtpd_sasl_type = dovecot`` talking to saslimap.

This module owns the connections on the second socket: the handshake, one
line at a time with a length limit, the PLAIN and LOGIN exchanges, the
answers, and the deadlines: a client that does not finish its handshake, a
line or a PLAIN/LOGIN exchange within ``read_timeout`` is closed, and so is
one idle between requests for ``idle_timeout``.  Unlike the saslauthd
protocol, each request carries the SMTP client's address, which goes to the
authenticator with the credentials: it decides the per-IP limits
(:meth:`saslimap.service.Authenticator.verify_client`) as it decides everything
else for the mux socket (caches, budgets, IMAP), and this listener carries out
its answer, including the penalty delay before a FAIL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Protocol, cast

from mailgate.lifecycle import Tracker
from saslimap import dovecot_proto as proto
from saslimap.metrics import Metrics
from saslimap.service import Result, Verdict, shown

log = logging.getLogger(__name__)
_CUIDS = itertools.count(1)


class ClientChecker(Protocol):
    """The authenticator as this listener uses it."""

    async def verify_client(
        self, login: str, password: str, service: str, client_addr: str
    ) -> tuple[Result, float]:
        """Check credentials from this address; the result and the delay before answering."""
        ...


class DovecotAuthServer:
    """Shared state of the listener: the checker and the open connections."""

    def __init__(
        self,
        checker: ClientChecker,
        metrics: Metrics,
        max_connections: int = 512,
        *,
        read_timeout: float = 5.0,
        idle_timeout: float = 600.0,
    ) -> None:
        self.checker = checker
        self.metrics = metrics
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.tracker = Tracker(max_connections)
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: object) -> None:
        """Serve on an already bound, listening Unix socket."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _Connection(self),
            sock=sock,  # type: ignore[arg-type]
        )

    def close(self) -> None:
        """Stop accepting; connections already open carry on."""
        if self._server is not None:
            self._server.close()

    async def drain(self, deadline: float) -> None:
        """Let requests in progress answer within ``deadline``, cancel the rest, then close."""
        self.close()
        await self.tracker.finish_tasks(deadline, "Dovecot-protocol request")
        for conn in list(self.tracker.connections):
            conn.close()


class _Connection(asyncio.Protocol):
    """One Postfix smtpd process's connection (kept open across many requests)."""

    def __init__(self, server: DovecotAuthServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: dict[str, tuple[proto.Auth, proto.Mechanism]] = {}
        self.handshaken = False  # the client's CPID line has arrived
        self.checking = 0  # checks of this connection's requests under way
        self.timer: asyncio.TimerHandle | None = None
        self.phase = ""  # what the running timer is for: "busy", "idle" or none

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.tracker.admit(self):
            log.warning("dovecot listener: connection cap reached; closing a new connection")
            self.transport.close()
            return
        self.transport.write(proto.handshake(next(_CUIDS)))
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.server.tracker.forget(self)

    def close(self) -> None:
        """Close the connection."""
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def _arm(self, *, restart: bool = False) -> None:
        """Put the connection under the deadline of what it is doing now, if any.

        While a check runs there is none (the IMAP step has its own); a handshake,
        a part-sent line or an exchange waiting for its next step gets
        ``read_timeout``, counted from when it began: more bytes do not extend it
        (one byte every so often must not hold a connection open), only our own
        answer (``restart``) does; a connection between requests gets ``idle_timeout``.
        """
        if self.checking or self.transport is None or self.transport.is_closing():
            self._disarm()
            self.phase = ""
            return
        busy = not self.handshaken or bool(self.buf) or bool(self.pending)
        phase = "busy" if busy else "idle"
        if phase == self.phase and self.timer is not None and not restart:
            return  # the deadline already running goes on
        self._disarm()
        self.phase = phase
        if busy:
            seconds, what = self.server.read_timeout, "handshake or request not completed"
        else:
            seconds, what = self.server.idle_timeout, "idle"
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire, what, seconds)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self, what: str, seconds: float) -> None:
        self.timer = None
        log.info("dovecot listener: closing a connection (%s within %g s)", what, seconds)
        self.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                self._line(line.rstrip(b"\r"))
            except proto.DovecotProtocolError as err:
                log.warning("dovecot listener: protocol error, closing: %s", err)
                self.close()
                return
        if len(self.buf) > proto.MAX_LINE:
            log.warning("dovecot listener: line over %d bytes, closing", proto.MAX_LINE)
            self.close()
            return
        self._arm()

    def _line(self, line: bytes) -> None:
        message = proto.parse_line(line)
        if isinstance(message, proto.Other):
            if message.command == "CPID":
                self.handshaken = True
            return
        if isinstance(message, proto.Auth):
            mech = proto.Mechanism(message.mechanism)
            self.pending[message.id] = (message, mech)
            self._step(message.id, message.resp)
            return
        if message.id not in self.pending:
            raise proto.DovecotProtocolError(f"CONT for unknown request {message.id}")
        self._step(message.id, message.data)

    def _step(self, request_id: str, data: bytes | None) -> None:
        auth, mech = self.pending[request_id]
        outcome = mech.step(data)
        if isinstance(outcome, bytes):
            self._write(proto.cont(request_id, outcome))
            return
        del self.pending[request_id]
        self.checking += 1
        self.server.tracker.spawn(self._check(auth, outcome))

    async def _check(self, auth: proto.Auth, creds: proto.Credentials) -> None:
        try:
            result, delay = await self.server.checker.verify_client(
                creds.user, creds.password, auth.service, auth.client_ip
            )
        except Exception:
            log.exception("internal error while checking a request; answering temp")
            result, delay = Result(Verdict.TEMPFAIL, "internal error"), 0.0
        finally:
            self.checking -= 1
        if result.verdict is Verdict.OK:
            self._write(proto.ok(auth.id, result.user or creds.user))
        elif result.verdict is Verdict.NO:
            await asyncio.sleep(delay)  # the address's penalty, as Dovecot delays a failure
            self._write(proto.fail(auth.id, "authentication failed", user=creds.user))
        else:
            await asyncio.sleep(delay)  # an address over its limit still waits its penalty
            # Dovecot's protocol has "FAIL ... temp", but Postfix 3.7's xsasl_dovecot client
            # answers 535 to any FAIL (seen in this project's tests); a lost connection is
            # what it answers with 454, so an outage hangs up (Postfix reconnects next time).
            # A limit's "try later" was logged by the authenticator already: once is enough
            # under a flood of guesses.
            level = logging.DEBUG if result.kind == "ratelimited" else logging.INFO
            log.log(level, 'dovecot listener: %s for user="%s"; closing so Postfix answers 454',
                    result.reason, shown(creds.user))  # fmt: skip
            self.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            # An answer sent: between requests, or the client's turn in an exchange.
            self._arm(restart=True)
