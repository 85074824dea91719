"""Delivery: handing marked copies back to Postfix (127.0.0.1:10025) and sending our DSNs.

This module owns what the downstream's replies mean for the message, and
says it with a type: :meth:`Courier.hand_back` returns a :class:`Handoff`
whose :class:`Fate` is

- ``DELIVERED``: the downstream accepted the copy for the group (recipients
  it refused for good are in ``refused`` and were reported by our DSN);
- ``DEFERRED``: nothing is settled (a 4xx anywhere, a connection lost, our
  DSN not accepted): the caller answers 451 with ``why`` and Postfix retries.
  An accepted recipient may then get a duplicate; better than a loss;
- ``REFUSED``: refused for good.  When the group is the whole message the
  downstream's refusal goes back to Postfix, which bounces it; otherwise our
  DSN reported it (``reported``), since a 5xx would also bounce the others.

The decisions are made on reply codes (:class:`filter.smtp_out.Reply`),
never on reply text.  The re-injection client is a small protocol, so tests
use fakes.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from filter import dsn, replies
from filter.message import Message
from filter.metrics import Metrics
from filter.smtp_out import Delivery, Reply
from filter.spool import Tail

log = logging.getLogger(__name__)


class Forwarder(Protocol):
    """The re-injection client, or a fake."""

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
        """Deliver; never raise for SMTP trouble (``dot_lines``: see smtp_out.dot_stuff;
        ``tail``: the rest of a spooled message after ``data``, read from its file)."""
        ...


class Fate(enum.Enum):
    """What became of one copy of a message (see the module docstring)."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    REFUSED = "refused"


@dataclass(frozen=True)
class Handoff:
    """The outcome of handing one copy back to Postfix for a group of recipients."""

    fate: Fate
    recipients: tuple[str, ...]
    downstream: Reply | None = None
    """The downstream's final reply (None when the exchange broke off before it)."""
    why: str = ""
    """DEFERRED: the text of our 451."""
    refused: Mapping[str, Reply] = field(default_factory=dict)
    """Recipients refused for good, with the reply that refused each."""
    reported: bool = False
    """The refused recipients were reported to the sender by our DSN (or the sender is
    the null sender, who is never sent one)."""
    seconds: float = 0.0
    """How long the re-injection took (without our DSN)."""

    @property
    def refusal(self) -> Reply:
        """REFUSED for the whole message: the reply Postfix gets (and bounces with).

        The first recipient's own 5xx if there is one, else the final reply.
        """
        assert self.downstream is not None
        for reply in self.refused.values():
            return reply if reply.code >= 500 else self.downstream
        return self.downstream


class Courier:
    """Re-injects copies of messages and reports refused recipients."""

    def __init__(self, forwarder: Forwarder, metrics: Metrics, hostname: str) -> None:
        self.forwarder = forwarder
        self.metrics = metrics
        self.hostname = hostname

    async def hand_back(
        self,
        msg: Message,
        rcpts: Sequence[str],
        data: bytes,
        *,
        dot_lines: bool = True,
        queue_id: str = "-",
        tail: Tail | None = None,
    ) -> Handoff:
        """Re-inject ``data`` for ``rcpts`` (some or all of ``msg``'s recipients).

        ``tail``: for a spooled message, the rest of it after ``data`` (its marked head)."""
        params = [p for p in msg.mail_options if p.upper().startswith(("BODY=", "SMTPUTF8"))]
        params.insert(0, f"SIZE={len(data) + (tail.size if tail else 0)}")
        if msg.smtputf8 and not any(p.upper() == "SMTPUTF8" for p in params):
            params.append("SMTPUTF8")
        started = time.monotonic()
        if tail is None:
            delivery = await self.forwarder.send(
                msg.mail_from, rcpts, data, mail_params=params, xforward=msg.xforward,
                dot_lines=dot_lines,
            )  # fmt: skip
        else:  # a spooled message: the marked head here, the rest from its file
            delivery = await self.forwarder.send(
                msg.mail_from, rcpts, data, mail_params=params, xforward=msg.xforward,
                tail=tail,
            )  # fmt: skip
        seconds = time.monotonic() - started
        return await self._judge(msg, tuple(rcpts), data, delivery, seconds, queue_id)

    async def _judge(
        self,
        msg: Message,
        rcpts: tuple[str, ...],
        data: bytes,
        delivery: Delivery,
        seconds: float,
        queue_id: str,
    ) -> Handoff:
        """What the downstream's replies mean for this copy (reporting refusals if needed)."""
        if delivery.error:
            self.metrics.reinject_failures.labels("connection").inc()
            why = replies.NOT_HANDED_BACK.format(error=delivery.error)
            return Handoff(Fate.DEFERRED, rcpts, why=why, seconds=seconds)
        final = delivery.data
        assert final is not None
        if not final.ok:
            if final.temporary or any(r.temporary for r in delivery.recipients.values()):
                self.metrics.reinject_failures.labels("temporary").inc()
                why = replies.DOWNSTREAM_DEFERRED.format(downstream=final)
                return Handoff(Fate.DEFERRED, rcpts, final, why, seconds=seconds)
            self.metrics.reinject_failures.labels("permanent").inc()
            refused = {r: reply for r, reply in delivery.recipients.items() if not reply.ok}
            if len(rcpts) == len(msg.rcpt_tos):  # the whole message: Postfix bounces it
                return Handoff(Fate.REFUSED, rcpts, final, refused=refused, seconds=seconds)
            # Other recipients of the message may have it: our own DSN, for each
            # recipient with its own RCPT refusal or else DATA's.
            refused = {r: _refusal(delivery.recipients.get(r), final) for r in rcpts}
            if await self.report(msg, data, refused, queue_id) is Fate.DEFERRED:
                return Handoff(Fate.DEFERRED, rcpts, final, replies.DSN_FAILED, seconds=seconds)
            return Handoff(Fate.REFUSED, rcpts, final, "", refused, True, seconds)
        refused = {r: reply for r, reply in delivery.recipients.items() if not reply.ok}
        if any(reply.temporary for reply in refused.values()):
            self.metrics.reinject_failures.labels("partial").inc()
            why = replies.SOME_DEFERRED.format(downstream=next(iter(refused.values())))
            return Handoff(Fate.DEFERRED, rcpts, final, why, refused, seconds=seconds)
        if refused:
            self.metrics.reinject_failures.labels("partial").inc()
            if await self.report(msg, data, refused, queue_id) is Fate.DEFERRED:
                return Handoff(Fate.DEFERRED, rcpts, final, replies.DSN_FAILED, seconds=seconds)
        return Handoff(Fate.DELIVERED, rcpts, final, "", refused, bool(refused), seconds)

    async def report(
        self, msg: Message, data: bytes, refused: Mapping[str, Reply], queue_id: str
    ) -> Fate:
        """Report recipients refused for good to the sender in our DSN (RFC 3464).

        DELIVERED when the DSN was accepted (or not sent: the null sender gets
        none, a bounce is never bounced); DEFERRED when it could not be sent.
        """
        if not msg.mail_from:
            log.warning(
                "queue_id=%s: downstream refused %s for a message with the null sender;"
                " not bouncing a bounce",
                queue_id, ",".join(refused),
            )  # fmt: skip
            return Fate.DELIVERED
        report = dsn.build(
            reporting_mta=self.hostname,
            sender=msg.mail_from,
            failed=refused,
            original=data,
            queue_id=queue_id,
        )
        delivery = await self.forwarder.send("", [msg.mail_from], report)
        if delivery.error or delivery.data is None or not delivery.data.ok:
            return Fate.DEFERRED
        log.info(
            "queue_id=%s: sent a DSN to <%s> for refused %s",
            queue_id, msg.mail_from, ",".join(refused),
        )  # fmt: skip
        return Fate.DELIVERED


def _refusal(rcpt_reply: Reply | None, final: Reply) -> Reply:
    """Why one recipient of a refused transaction failed: its own RCPT reply, else DATA's."""
    return rcpt_reply if rcpt_reply is not None and not rcpt_reply.ok else final
