"""One message through the filter: scan -> verdict -> destiny, then deliver and answer. No sockets.

This module owns the no-loss transaction.  The answer it returns is the one
the SMTP server gives Postfix after DATA, and it is 250 only when the
downstream Postfix accepted the message for every recipient (or when the ones
it refused for good were reported to the sender in a DSN of ours).  Everything
it cannot resolve is a 4xx, so Postfix keeps the message and retries:

- clamd or spamd down, slow, or answering nonsense -> 451 (never unscanned mail);
- the per-message deadline passing -> 451;
- re-injection refused temporarily, unreachable, or broken off -> 451;
- any exception of ours -> 451 (the SMTP layer's exception hook).

The steps are other modules': :mod:`filter.scanning` finds, :mod:`filter.policy`
decides per recipient, :mod:`filter.marks` marks each copy,
:mod:`filter.delivery` hands copies back and says what became of them
(a typed :class:`filter.delivery.Handoff`), :mod:`filter.replies` words
the answer.  This module orders them, holds quarantined mail and writes the
summary line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from filter import replies
from filter.allowcache import ALLOW_DEADLINE, AllowCache
from filter.config import Config
from filter.delivery import Courier, Fate, Forwarder, Handoff
from filter.marks import Marker, dot_lines
from filter.message import Message, Trace, from_addresses, queue_id_of, summary
from filter.metrics import Metrics
from filter.policy import Findings, Lists, Treatment, decide
from filter.qstore import QuarantineStore
from filter.quarantine import Entry, hold_key, subject_of
from filter.quarantine import new_id as new_quarantine_id
from filter.replies import Tempfail
from filter.scanning import Scanner, SpamScanner, VirusScanner
from filter.smtp_out import Reply
from filter.verdicts import DESCRIPTION, RESULT_OF, SEVERITY, Destiny, Result
from mailgate import logs

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """Tells administrators about held mail (rate-limited), or a fake."""

    async def notify(self, entry: Entry, message: bytes) -> None:
        """Send a notice if the category is configured and the rate allows."""
        ...


# After a hold failed, holds answer 451 without trying for this many seconds.
HOLD_RETRY = 5.0


class Filter:
    """The per-message pipeline: the order of the steps and the answer to Postfix."""

    def __init__(
        self,
        cfg: Config,
        clamd: VirusScanner,
        spamd: SpamScanner | None,
        forwarder: Forwarder,
        metrics: Metrics | None = None,
        *,
        lists: Lists | None = None,
        store: QuarantineStore | None = None,
        notifier: Notifier | None = None,
        allow_cache: AllowCache | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.hostname = cfg.server.name
        self.scanner = Scanner(cfg, clamd, spamd, self.metrics)
        self.marker = Marker(cfg.policy, self.hostname)
        self.courier = Courier(forwarder, self.metrics, self.hostname)
        self.lists = lists or Lists()
        self.store = store
        self.notifier = notifier
        self._background: set[asyncio.Future[None]] = set()
        if allow_cache is None and store is not None:
            allow_cache = AllowCache(store)
        self.allow_cache = allow_cache
        # A lookup that takes longer uses this host's copy (and the copy only, for a while).
        self._allow_deadline = min(cfg.quarantine.timeout, ALLOW_DEADLINE)
        self._holds_down_until = -math.inf  # holds answer 451 at once until then

    async def handle(self, msg: Message) -> str:
        """Process one message and return the SMTP reply for Postfix."""
        started = time.monotonic()
        trace = Trace(queue_id=queue_id_of(msg.data), filter_id=secrets.token_hex(6))
        self.metrics.in_flight.inc()
        self.metrics.message_bytes.observe(msg.size)
        try:
            async with asyncio.timeout(self.cfg.server.message_timeout):
                result, reply = await self._process(msg, trace)
        except Tempfail as err:
            result = Result.TEMPFAIL
            reply = replies.TEMPFAIL.format(why=err, filter_id=trace.filter_id)
        except TimeoutError:
            result = Result.TEMPFAIL
            reply = replies.TIMED_OUT.format(limit=self.cfg.server.message_timeout)
        finally:
            self.metrics.in_flight.dec()
        self.metrics.messages.labels(result.value).inc()
        trace.timings["total"] = time.monotonic() - started
        if log.isEnabledFor(logging.INFO):
            # Written by the daemon's handler directly: a LogRecord per message cost more
            # than the rest of the line (mailgate.logs.info_line; same output).
            logs.info_line(log, summary(msg, trace, result, reply))
        return reply

    async def _process(self, msg: Message, trace: Trace) -> tuple[Result, str]:
        """Scan, decide per recipient, hold, deliver: the result label and the reply."""
        findings = await self.scanner.findings(msg, trace)
        senders = [msg.mail_from, *from_addresses(msg.data)]
        policy = self.cfg.policy
        allowed = await self._allowed(findings, msg.rcpt_tos, senders)
        treatments = {
            r: decide(policy, self.lists, findings, senders, r, allowed=r in allowed)
            for r in msg.rcpt_tos
        }
        worst = min((t.category for t in treatments.values()), key=SEVERITY.__getitem__)
        trace.category = worst
        scores = [t.score for t in treatments.values() if t.score is not None]
        trace.score = max(scores) if scores else None
        held = [r for r, t in treatments.items() if t.quarantine]
        if held:
            await self._quarantine(msg, treatments[held[0]], held, trace)
        result = RESULT_OF[worst]
        what = f"{DESCRIPTION[worst]}: {treatments[msg.rcpt_tos[0]].reason}".rstrip(": ")
        if all(t.destiny is Destiny.REJECT for t in treatments.values()):
            reply = replies.REJECTED.format(filter_id=trace.filter_id, what=what)
            return Result.REJECTED if result is Result.CLEAN else result, reply
        handoffs = await self._deliver(msg, treatments, trace)
        await self._bounce_blocked(msg, treatments, trace)
        return result, answer(handoffs, trace, what)

    async def _allowed(
        self, findings: Findings, recipients: Sequence[str], senders: Sequence[str]
    ) -> set[str]:
        """Recipients who allowed one of ``senders`` in the portal (their allow entries).

        Asked only when there is a spam score for it to change.  A store that
        cannot answer in time leaves the answer to this host's copy of the
        entries (:mod:`filter.allowcache`): the message is never passed unscanned.
        """
        cache = self.allow_cache
        if cache is None or findings.report is None:
            return set()
        if cache.known_down():  # decided here: no worker thread needed, none waited for
            return cache.from_copy(recipients, senders)
        try:
            async with asyncio.timeout(self._allow_deadline):
                return await asyncio.to_thread(cache.allowed, recipients, senders)
        except TimeoutError:
            # The thread finishes within the store's own deadline; meanwhile, and for a
            # while after, messages are answered from the copy without waiting.
            cache.failed(f"no answer within {self._allow_deadline:g} s")
            return cache.from_copy(recipients, senders)

    async def _quarantine(
        self, msg: Message, treatment: Treatment, held: list[str], trace: Trace
    ) -> None:
        """Store the message durably before anything is answered; failure is a 451."""
        if self.store is None:
            raise Tempfail(replies.NO_QUARANTINE)
        if time.monotonic() < self._holds_down_until:
            # A hold failed moments ago: 451 now rather than each message waiting out
            # the store's deadline (a hung database) behind the others.
            raise Tempfail(replies.QUARANTINE_FAILED)
        entry = Entry(
            id=new_quarantine_id(),
            category=treatment.category.value,
            reason=treatment.reason,
            mail_from=msg.mail_from,
            recipients=held,
            received_at=time.time(),
            size=msg.size,
            score=treatment.score,
            queue_id=trace.queue_id,
            subject=subject_of(msg.data),  # as the sender wrote it, without our tag
        )
        copy = self._marked(msg, treatment, trace, entry.id)
        try:
            # A spooled message's copy is its marked head, then the rest from the file.
            # In a thread: fsync, and the index's SQLite insert, never block the loop.
            # The files are written first; an index that fails is repaired later and
            # never fails this (QuarantineStore.add).
            tail = msg.tail(self.marker.remove_prefixes)
            key = hold_key(trace.queue_id, msg.mail_from, held, msg.size, msg.data, entry.category)
            held_as = await asyncio.to_thread(
                functools.partial(
                    self.store.add, entry, copy, tail.chunks() if tail else (), key=key
                )
            )
        except OSError as err:
            log.error("quarantine write failed: %s", err)
            self._holds_down_until = time.monotonic() + HOLD_RETRY
            if self.allow_cache is not None:
                self.allow_cache.failed(str(err))  # the next messages need not wait on it
            raise Tempfail(replies.QUARANTINE_FAILED) from err
        trace.quarantine_id = held_as
        if self.allow_cache is not None:
            self.allow_cache.answered()
        if held_as != entry.id:
            # Postfix's retry of a message held before (its 250 lost, or a 451 after the
            # hold): the earlier entry stands, and its recipients were told already.
            log.info("%s: already held as %s (a retry)", trace.queue_id, held_as)
            return
        self.metrics.quarantined.labels(entry.category).inc()
        if self.notifier is not None:
            # In the background: a slow or failing notice must never delay the answer.
            task = asyncio.ensure_future(self.notifier.notify(entry, copy))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _marked(self, msg: Message, treatment: Treatment, trace: Trace, qid: str = "") -> bytes:
        return self.marker.mark(
            msg, trace.filter_id, treatment.headers, treatment.subject_prefix, qid
        )

    async def _deliver(
        self, msg: Message, treatments: Mapping[str, Treatment], trace: Trace
    ) -> list[Handoff]:
        """Re-inject once per group of recipients with the same marks; stop at a deferral.

        Only a transaction carrying every recipient may hand a permanent refusal back
        to Postfix (which then bounces for all of them); a group's refusal is otherwise
        reported by our own DSN, so it never hides behind, or undoes, another's 250.
        """
        groups: dict[Treatment, list[str]] = {}
        for rcpt, treatment in treatments.items():
            if treatment.destiny is Destiny.PASS:
                groups.setdefault(treatment, []).append(rcpt)
        handoffs: list[Handoff] = []
        for treatment, rcpts in groups.items():
            qid = trace.quarantine_id if treatment.quarantine else ""
            data = self._marked(msg, treatment, trace, qid)
            handoff = await self.courier.hand_back(
                msg, rcpts, data, dot_lines=dot_lines(msg, data), queue_id=trace.queue_id,
                tail=msg.tail(self.marker.remove_prefixes),
            )  # fmt: skip
            trace.timings["reinject"] = handoff.seconds
            if handoff.downstream is not None:
                trace.downstream = str(handoff.downstream)
            if handoff.fate is Fate.DEFERRED:
                raise Tempfail(handoff.why)
            handoffs.append(handoff)
        return handoffs

    async def _bounce_blocked(
        self, msg: Message, treatments: Mapping[str, Treatment], trace: Trace
    ) -> None:
        """Recipients whose destiny is bounce (or reject, when others get the mail) get a DSN."""
        failed = {
            r: Reply(replies.BLOCKED_CODE, replies.BLOCKED.format(what=_what(t)))
            for r, t in treatments.items()
            if t.destiny is Destiny.BOUNCE or (t.destiny is Destiny.REJECT and not t.no_dsn)
        }
        if failed:
            fate = await self.courier.report(msg, msg.data, failed, trace.queue_id)
            if fate is Fate.DEFERRED:
                raise Tempfail(replies.DSN_FAILED)


def answer(handoffs: Sequence[Handoff], trace: Trace, what: str) -> str:
    """The answer once every copy is settled: the first delivery's, else the last refusal's."""
    fid = trace.filter_id
    for handoff in handoffs:
        if handoff.fate is Fate.DELIVERED:
            return replies.DELIVERED.format(filter_id=fid, downstream=handoff.downstream)
    if handoffs:
        last = handoffs[-1]
        if last.reported:
            return replies.REFUSED_REPORTED.format(filter_id=fid, downstream=last.downstream)
        return str(last.refusal)
    held = replies.HELD_AS.format(quarantine_id=trace.quarantine_id)
    return replies.DISCARDED.format(
        filter_id=fid, held=held if trace.quarantine_id else "", what=what
    )


def _what(treatment: Treatment) -> str:
    """The category and reason of a recipient's treatment, for replies and DSNs."""
    return f"{DESCRIPTION[treatment.category]}: {treatment.reason}".rstrip(": ")
