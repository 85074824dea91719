"""The Dovecot-protocol listener: Postfix's ``smtpd_sasl_type = dovecot`` talking to saslimap.

This module owns the connections on the second socket: the handshake, one
line at a time with a length limit, the PLAIN and LOGIN exchanges, and the
answers.  Unlike the saslauthd protocol, each request carries the SMTP client's
address, so the per-IP limits of :mod:`saslimap.limits` apply here, and an
outage is answered ``FAIL ... temp`` (Postfix: 454) rather than by hanging up.
The check itself is the same authenticator (caches, budgets, IMAP) as the mux
socket's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Protocol, cast

from mailgate.lifecycle import Tracker
from saslimap import dovecot_proto as proto
from saslimap.cache import Hasher
from saslimap.limits import IpLimiter
from saslimap.metrics import Metrics
from saslimap.service import Result, Verdict, shown

log = logging.getLogger(__name__)
_CUIDS = itertools.count(1)


class Verifier(Protocol):
    """The authenticator as this listener uses it."""

    async def verify(
        self, login: str, password: str, service: str, realm: str, client_addr: str = ""
    ) -> Result:
        """Check credentials; never raises for bad input."""
        ...


class DovecotAuthServer:
    """Shared state of the listener: the checker, the IP limits, the open connections."""

    def __init__(
        self, checker: Verifier, limiter: IpLimiter, metrics: Metrics, max_connections: int = 512
    ) -> None:
        self.checker = checker
        self.limiter = limiter
        self.metrics = metrics
        self.max_connections = max_connections
        self.hasher = Hasher()
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if not self.server.tracker.admit(self):
            log.warning("dovecot listener: connection cap reached; closing a new connection")
            self.transport.close()
            return
        self.transport.write(proto.handshake(next(_CUIDS)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.tracker.forget(self)

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()

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

    def _line(self, line: bytes) -> None:
        message = proto.parse_line(line)
        if isinstance(message, proto.Other):
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
        self.server.tracker.spawn(self._check(auth, outcome))

    async def _check(self, auth: proto.Auth, creds: proto.Credentials) -> None:
        server = self.server
        ip = auth.client_ip
        decision = server.limiter.decide(ip)
        if not decision.allowed:
            server.metrics.count_request("ratelimited")
            log.info(
                'auth user="%s" rip=%s result=ratelimited source=ip-limit', shown(creds.user), ip
            )
            await asyncio.sleep(decision.penalty)
            self._write(proto.fail(auth.id, "authentication failed", user=creds.user))
            return
        try:
            result = await server.checker.verify(creds.user, creds.password, auth.service, "", ip)
        except Exception:
            log.exception("internal error while checking a request; answering temp")
            result = Result(Verdict.TEMPFAIL, "internal error")
        if result.verdict is Verdict.OK:
            server.limiter.succeeded(ip)
            self._write(proto.ok(auth.id, result.user or creds.user))
        elif result.verdict is Verdict.NO:
            server.limiter.failed(ip, server.hasher.digest(ip, creds.password))
            await asyncio.sleep(server.limiter.decide(ip).penalty)
            self._write(proto.fail(auth.id, "authentication failed", user=creds.user))
        else:
            # Dovecot's protocol has "FAIL ... temp", but Postfix 3.7's xsasl_dovecot client
            # answers 535 to any FAIL (seen in this project's tests); a lost connection is
            # what it answers with 454, so an outage hangs up (Postfix reconnects next time).
            log.info('dovecot listener: IMAP unavailable for user="%s"; closing so Postfix '
                     "answers 454", shown(creds.user))  # fmt: skip
            self.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
