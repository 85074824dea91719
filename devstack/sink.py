"""A recording SMTP server on 127.0.0.1: the "next hop" behind the content filter in tests.

This module owns a tiny SMTP server built on aiosmtpd that accepts every
message and records what arrived (envelope and the exact content bytes), and
can be told to fail: every DATA or RCPT with a given reply, or selected
recipients only.  It runs on its own event loop in a background thread
(aiosmtpd's ``Controller``), so synchronous tests and the gateway's own event
loop never share a loop with it.

Two deliberate differences from aiosmtpd's defaults, both to stand in for
Postfix's smtpd faithfully: lines of any length up to 1 MiB are accepted
(aiosmtpd answers ``500 Line too long`` above RFC 5321's 1000 octets, which
Postfix does not), and the greeting name is fixed (aiosmtpd would otherwise
call socket.getfqdn(), a DNS lookup, on every start).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from devstack.ports import LOOPBACK, free_port
from devstack.proc import Launcher

__all__ = ["Received", "SmtpSink"]

# An SMTP failure reply: 4xx or 5xx, a space, then text (RFC 5321 section 4.2).
_FAILURE_REPLY = re.compile(r"^[45][0-9][0-9] \S.*$")

_MAX_LINE = 1024 * 1024

_HOSTNAME = "sink.test"


@dataclass(frozen=True)
class Received:
    """One message as the sink saw it.

    ``data`` is the content exactly as transmitted between DATA and the final
    dot, after dot-unstuffing: line endings as sent (normally CRLF, including
    the one ending the last line), no re-encoding.  ``at`` is
    ``time.monotonic()`` when the final dot arrived, comparable with the
    sender's own monotonic clock for latency measurements.
    """

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float


class _LongLineSMTP(SMTP):
    # Also the StreamReader limit: longer lines raise LimitOverrunError and
    # are answered "500 Line too long" after the final dot.
    line_length_limit = _MAX_LINE


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _LongLineSMTP(self.handler, **self.SMTP_kwargs)


class _Handler:
    """aiosmtpd hooks; runs on the sink's thread, shares state with SmtpSink under its lock."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._sink._rcpt_reply(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self._sink._record(envelope)


class SmtpSink(Launcher):
    """An SMTP server on 127.0.0.1:``port`` that records every message it accepts.

    ``refuse_rcpt`` names recipients (compared case-insensitively) answered
    ``550 5.1.1 <addr>: Recipient address rejected: User unknown``; the
    others are accepted.  It may be reassigned while the sink runs.
    """

    def __init__(self, *, port: int | None = None, refuse_rcpt: Iterable[str] = ()) -> None:
        self._port = port if port is not None else free_port()
        self._lock = threading.Condition()
        self._messages: list[Received] = []
        self._rejected: list[Received] = []
        self._data_reply: str | None = None
        self._rcpt_reply_all: str | None = None
        self._refuse_rcpt: frozenset[str] = frozenset(rcpt.lower() for rcpt in refuse_rcpt)
        self._controller: _Controller | None = None

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def refuse_rcpt(self) -> frozenset[str]:
        """Recipients refused with 550, lowercased."""
        return self._refuse_rcpt

    @refuse_rcpt.setter
    def refuse_rcpt(self, recipients: Iterable[str]) -> None:
        # Frozen and swapped whole: the sink's thread reads it while the
        # test thread may assign, and an in-place set.add() would race.
        refused = frozenset(rcpt.lower() for rcpt in recipients)
        with self._lock:
            self._refuse_rcpt = refused

    @property
    def messages(self) -> list[Received]:
        """A snapshot of the messages accepted so far, oldest first."""
        with self._lock:
            return list(self._messages)

    @property
    def rejected(self) -> list[Received]:
        """A snapshot of the messages whose DATA was answered with set_reply's failure."""
        with self._lock:
            return list(self._rejected)

    # -- behaviour ----------------------------------------------------------

    def set_reply(self, code_text: str | None, *, stage: Literal["DATA", "RCPT"] = "DATA") -> None:
        """Answer every DATA (or every RCPT) with ``code_text`` until reset with None.

        ``code_text`` is a complete failure reply such as ``"451 4.3.0 try
        later"`` or ``"550 5.1.1 no such user"``.  A DATA failure is sent
        after the whole message has been received (as a real server does);
        the message is then recorded in ``rejected``, not ``messages``.
        """
        if code_text is not None and not _FAILURE_REPLY.match(code_text):
            raise ValueError(f"not a 4xx/5xx SMTP reply: {code_text!r}")
        with self._lock:
            if stage == "DATA":
                self._data_reply = code_text
            else:
                self._rcpt_reply_all = code_text

    def clear(self) -> None:
        """Forget every recorded message (accepted and rejected)."""
        with self._lock:
            self._messages.clear()
            self._rejected.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least ``count`` messages were accepted; return them all.

        Raises ``TimeoutError`` saying how many arrived if ``timeout`` passes first.
        """
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"sink on port {self._port}: {len(self._messages)} of {count} messages "
                    f"after {timeout:.1f} s ({len(self._rejected)} rejected)"
                )
            return list(self._messages)

    # Called by _Handler on the sink's thread.

    def _rcpt_reply(self, address: str) -> str | None:
        with self._lock:
            if self._rcpt_reply_all is not None:
                return self._rcpt_reply_all
            refused = self._refuse_rcpt
        if address.lower() in refused:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        return None

    def _record(self, envelope: Envelope) -> str:
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            at=time.monotonic(),
        )
        with self._lock:
            if self._data_reply is not None:
                self._rejected.append(received)
                return self._data_reply
            self._messages.append(received)
            number = len(self._messages)
            self._lock.notify_all()
        return f"250 2.0.0 Ok: queued as SINK{number}"

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Listen and serve in a background thread; returns once a connection is greeted."""
        if self._controller is not None:
            raise RuntimeError(f"sink already running on port {self._port}")
        controller = _Controller(
            _Handler(self),
            hostname=LOOPBACK,
            port=self._port,
            server_hostname=_HOSTNAME,
            # Accept UTF-8 addresses and keep content as bytes (never decoded).
            enable_SMTPUTF8=True,
            decode_data=False,
        )
        # Controller.start() opens one probe connection and waits for the
        # greeting, so the sink is ready when this returns.
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        """Close the listener and any open session, and join the thread; no-op if stopped."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __repr__(self) -> str:
        running = self._controller is not None
        return f"SmtpSink(port={self._port}, running={running}, messages={len(self.messages)})"
