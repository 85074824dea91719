"""One message through the filter: scan, decide, mark, re-inject, answer. No sockets.

This module owns the no-loss transaction.  The answer it returns is the one
the SMTP server gives Postfix after DATA, and it is 250 only when the
downstream Postfix accepted the message for every recipient (or when the ones
it refused for good were reported to the sender in a DSN of ours).  Everything
it cannot resolve is a 4xx, so Postfix keeps the message and retries:

- clamd or spamd down, slow, or answering nonsense -> 451 (never unscanned mail);
- the per-message deadline passing -> 451;
- re-injection refused temporarily, unreachable, or broken off -> 451;
- any exception of ours -> 451 (the SMTP layer's exception hook).

The scanners and the re-injector are small protocols, so tests use fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from filter import dsn, headers
from filter.banned import ArchiveInside, find_banned, may_nest
from filter.clamd import ClamdError, Outcome, ScanResult
from filter.config import Config
from filter.metrics import Metrics
from filter.policy import Category, Findings, Lists, Treatment, decide
from filter.quarantine import Entry, Store
from filter.quarantine import new_id as new_quarantine_id
from filter.smtp_out import Delivery, Reply
from filter.spamd import SpamdError, SpamReport
from mailgate import logs

log = logging.getLogger(__name__)
T = TypeVar("T")

SPAM_HEADERS = (
    b"x-spam-flag",
    b"x-spam-score",
    b"x-spam-level",
    b"x-spam-status",
    b"x-spam-skipped",
)
_QUEUE_ID = re.compile(rb"\bid\s+([0-9A-Za-z]{6,})\b")
BANNED_INLINE_LIMITS = (128 * 1024, 2048, 16)
"""Bytes, lines and MIME boundary lines up to which a message is checked for banned parts
on the event loop: a few milliseconds at most, archives excepted.  A thread costs more
CPU than that in hand-offs and, holding the GIL, can stall the loop for the interpreter's
switch interval (5 ms) anyway; it is kept for what can take longer.  A single-part
message (:func:`filter.banned.may_nest` is false) is not held to the line and boundary
counts: only its header section is parsed."""


class VirusScanner(Protocol):
    """clamd, or a fake."""

    async def scan(self, data: bytes) -> ScanResult:
        """Scan; raise ClamdError when there is no verdict."""
        ...


class SpamScanner(Protocol):
    """spamd, or a fake."""

    async def check(self, message: bytes) -> SpamReport:
        """Score; raise SpamdError when there is no verdict."""
        ...


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
    ) -> Delivery:
        """Deliver; never raise for SMTP trouble (``dot_lines``: see smtp_out.dot_stuff)."""
        ...


class Label(enum.Enum):
    """The outcome label of a message (metrics, logs): a small fixed set."""

    CLEAN = "clean"
    SPAM = "spam"
    VIRUS = "virus"
    BANNED = "banned"
    TEMPFAIL = "tempfail"
    REJECTED = "rejected"


_LABELS = {
    Category.VIRUS: Label.VIRUS,
    Category.BANNED: Label.BANNED,
    Category.SPAM: Label.SPAM,
    Category.SPAMMY: Label.SPAM,
    Category.BAD_HEADER: Label.CLEAN,
    Category.CLEAN: Label.CLEAN,
}
_DESCRIBE = {
    Category.VIRUS: "INFECTED",
    Category.BANNED: "BANNED",
    Category.SPAM: "SPAM",
    Category.SPAMMY: "SPAMMY",
    Category.BAD_HEADER: "BAD-HEADER",
    Category.CLEAN: "CLEAN",
}


class Notifier(Protocol):
    """Tells administrators about held mail (rate-limited), or a fake."""

    async def notify(self, entry: Entry, message: bytes) -> None:
        """Send a notice if the category is configured and the rate allows."""
        ...


@dataclass(frozen=True)
class Message:
    """One message as Postfix handed it to us."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    smtputf8: bool = False
    helo: str = ""
    peer: str = ""
    xforward: Mapping[str, str] = field(default_factory=dict)
    dot_lines: bool = field(default=True, compare=False)  # a hint, not the message
    """False when no line of ``data`` starts with a dot (as the DATA decoder saw it); our
    marks never start one, so the re-injection need not look for them."""


@dataclass
class Trace:
    """What happened to one message, for the summary log line."""

    queue_id: str = "-"
    filter_id: str = ""
    virus: str = ""
    score: float | None = None
    spam_note: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    downstream: str = ""
    quarantine_id: str = ""
    category: Category = Category.CLEAN


class _Tempfail(Exception):
    """Stop processing this message and answer 451 with this text."""


def queue_id_of(data: bytes) -> str:
    """The front Postfix's queue id, from the topmost Received field (``... id 4Xyz...``)."""
    received = headers.first_field(data, b"received")
    if received:
        match = _QUEUE_ID.search(received)
        if match:
            return match.group(1).decode("ascii")
    return "-"


class Filter:
    """The per-message pipeline."""

    def __init__(
        self,
        cfg: Config,
        clamd: VirusScanner,
        spamd: SpamScanner | None,
        forwarder: Forwarder,
        metrics: Metrics | None = None,
        *,
        lists: Lists | None = None,
        store: Store | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.clamd = clamd
        self.spamd = spamd if cfg.spamd.enabled else None
        self.forwarder = forwarder
        self.metrics = metrics or Metrics()
        self.hostname = cfg.server.name
        self.lists = lists or Lists()
        self.store = store
        self.notifier = notifier
        self._background: set[asyncio.Future[None]] = set()

    async def handle(self, msg: Message) -> str:
        """Process one message and return the SMTP reply for Postfix."""
        started = time.monotonic()
        trace = Trace(queue_id=queue_id_of(msg.data), filter_id=secrets.token_hex(6))
        self.metrics.in_flight.inc()
        self.metrics.message_bytes.observe(len(msg.data))
        try:
            async with asyncio.timeout(self.cfg.server.message_timeout):
                category, reply = await self._process(msg, trace)
        except _Tempfail as err:
            category, reply = Label.TEMPFAIL, f"451 4.3.0 {err} (id={trace.filter_id})"
        except TimeoutError:
            category = Label.TEMPFAIL
            limit = self.cfg.server.message_timeout
            reply = f"451 4.4.7 Filtering took over {limit:g} s, try again later"
        finally:
            self.metrics.in_flight.dec()
        self.metrics.messages.labels(category.value).inc()
        trace.timings["total"] = time.monotonic() - started
        self._log(msg, trace, category, reply)
        return reply

    async def _process(self, msg: Message, trace: Trace) -> tuple[Label, str]:
        findings = await self._findings(msg, trace)
        senders = [msg.mail_from, *from_addresses(msg.data)]
        policy = self.cfg.policy
        treatments = {r: decide(policy, self.lists, findings, senders, r) for r in msg.rcpt_tos}
        worst = min((t.category for t in treatments.values()), key=list(Category).index)
        trace.category = worst
        scores = [t.score for t in treatments.values() if t.score is not None]
        trace.score = max(scores) if scores else None
        held = [r for r, t in treatments.items() if t.quarantine]
        if held:
            await self._quarantine(msg, treatments[held[0]], held, trace)
        label = _LABELS[worst]
        destinies = {t.destiny for t in treatments.values()}
        what = f"{_DESCRIBE[worst]}: {treatments[msg.rcpt_tos[0]].reason}".rstrip(": ")
        if destinies == {"reject"}:
            return Label.REJECTED if label is Label.CLEAN else label, (
                f"554 5.7.1 Rejected, id={trace.filter_id} - {what}"
            )
        delivered = await self._deliver(msg, treatments, trace)
        await self._bounce_blocked(msg, treatments, trace)
        if delivered:
            return label, delivered
        qid = f", quarantined as {trace.quarantine_id}" if trace.quarantine_id else ""
        return label, f"250 2.7.0 Ok, discarded, id={trace.filter_id}{qid} - {what}"

    async def _findings(self, msg: Message, trace: Trace) -> Findings:
        virus, report = await self._scan(msg, trace)
        if virus is not None:
            trace.virus = virus
            return Findings(virus=virus)
        banned = ""
        if self.cfg.banned.enabled:
            started = time.monotonic()
            found = await self._find_banned(msg.data)
            trace.timings["banned"] = time.monotonic() - started
            banned = found or ""
        return Findings(
            banned=banned,
            report=report,
            spam_note=trace.spam_note,
            bad_header=bad_header(msg.data, allow_8bit=msg.smtputf8),
        )

    async def _find_banned(self, data: bytes) -> str | None:
        """find_banned(), on the event loop for small messages without archives."""
        names, types = self.cfg.banned.names, self.cfg.banned.types
        max_bytes, max_lines, max_parts = BANNED_INLINE_LIMITS
        if len(data) <= max_bytes and (
            # One part: its parse reads the header section only, however long the body.
            not may_nest(data)
            or (data.count(b"\n") <= max_lines and data.count(b"\n--") <= max_parts)
        ):
            with contextlib.suppress(ArchiveInside):
                return find_banned(data, names, types, open_archives=False)
        # Big or many-part messages and archives (up to banned.MAX_UNPACKED bytes to
        # inflate) are CPU work: keep the event loop free for other messages.
        return await asyncio.to_thread(find_banned, data, names, types)

    async def _quarantine(
        self, msg: Message, treatment: Treatment, held: list[str], trace: Trace
    ) -> None:
        """Store the message durably before anything is answered; failure is a 451."""
        if self.store is None:
            raise _Tempfail("Quarantine is not configured")
        entry = Entry(
            id=new_quarantine_id(),
            category=treatment.category.value,
            reason=treatment.reason,
            mail_from=msg.mail_from,
            recipients=held,
            received_at=time.time(),
            size=len(msg.data),
            score=treatment.score,
            queue_id=trace.queue_id,
        )
        copy = self._marked(msg, treatment, trace, entry.id)
        try:
            await asyncio.to_thread(self.store.write, entry, copy)
        except OSError as err:
            log.error("quarantine write failed: %s", err)
            raise _Tempfail("Could not quarantine the message") from err
        trace.quarantine_id = entry.id
        if self.notifier is not None:
            # In the background: a slow or failing notice must never delay the answer.
            task = asyncio.ensure_future(self.notifier.notify(entry, copy))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _marked(self, msg: Message, treatment: Treatment, trace: Trace, qid: str = "") -> bytes:
        policy = self.cfg.policy
        prepend = [
            ("Received", self._received(msg, trace)),
            ("X-Virus-Scanned", f"by {policy.scanner_name} at {self.hostname}"),
        ]
        if qid:
            prepend.append(("X-Quarantine-ID", f"<{qid}>"))
        prepend += list(treatment.headers)
        remove = SPAM_HEADERS if policy.remove_existing_spam_headers else ()
        return headers.edit(msg.data, prepend, remove, treatment.subject_prefix)

    async def _deliver(self, msg: Message, treatments: dict[str, Treatment], trace: Trace) -> str:
        """Re-inject once per group of recipients with the same marks; "" if nobody gets it.

        Only a transaction carrying every recipient may hand a permanent refusal back
        to Postfix (which then bounces for all of them); a group's refusal is otherwise
        reported by our own DSN, so it never hides behind, or undoes, another's 250.
        """
        groups: dict[Treatment, list[str]] = {}
        for rcpt, treatment in treatments.items():
            if treatment.destiny == "pass":
                groups.setdefault(treatment, []).append(rcpt)
        answers: list[str] = []
        for treatment, rcpts in groups.items():
            qid = trace.quarantine_id if treatment.quarantine else ""
            data = self._marked(msg, treatment, trace, qid)
            whole = len(rcpts) == len(msg.rcpt_tos)
            answers.append(await self._reinject(msg, rcpts, data, trace, whole))
        accepted = [a for a in answers if "from downstream" in a]
        return accepted[0] if accepted else (answers[-1] if answers else "")

    async def _bounce_blocked(
        self, msg: Message, treatments: dict[str, Treatment], trace: Trace
    ) -> None:
        """Recipients whose destiny is bounce (or reject, when others get the mail) get a DSN."""
        failed = {
            r: Reply(554, f"5.7.1 {_DESCRIBE[t.category]}: {t.reason}".rstrip(": "))
            for r, t in treatments.items()
            if t.destiny == "bounce" or (t.destiny == "reject" and not t.no_dsn)
        }
        if failed:
            await self._bounce(msg, msg.data, failed, trace)

    async def _scan(self, msg: Message, trace: Trace) -> tuple[str | None, SpamReport | None]:
        """Run clamd and spamd side by side; a virus cancels the spam scan."""
        clam = asyncio.ensure_future(self._timed("clamd", self.clamd.scan(msg.data), trace))
        spam: asyncio.Future[SpamReport] | None = None
        if self.spamd is None:
            trace.spam_note = "spamd disabled"
        elif len(msg.data) > self.cfg.spamd.max_size:
            trace.spam_note = (
                f"message of {len(msg.data)} bytes exceeds the {self.cfg.spamd.max_size}-byte limit"
            )
        else:
            spam = asyncio.ensure_future(self._timed("spamd", self.spamd.check(msg.data), trace))
        try:
            try:
                result = await clam
            except ClamdError as err:
                self.metrics.scanner_errors.labels("clamd", err.kind).inc()
                raise _Tempfail(f"Virus scanner unavailable ({err.kind}), try again later") from err
            if result.outcome is Outcome.VIRUS:
                return result.name, None
            if result.outcome is Outcome.ERROR:
                self.metrics.scanner_errors.labels("clamd", "error").inc()
                log.warning("clamd could not scan queue_id=%s: %s", trace.queue_id, result.name)
                raise _Tempfail("Virus scanner could not scan this message, try again later")
            if spam is None:
                return None, None
            try:
                return None, await spam
            except SpamdError as err:
                self.metrics.scanner_errors.labels("spamd", err.kind).inc()
                raise _Tempfail(f"Spam scanner unavailable ({err.kind}), try again later") from err
        finally:
            for task in (clam, spam):
                if task is not None and not task.done():
                    task.cancel()

    async def _timed(self, name: str, coro: Awaitable[T], trace: Trace) -> T:
        started = time.monotonic()
        try:
            return await coro
        finally:
            elapsed = time.monotonic() - started
            trace.timings[name] = elapsed
            self.metrics.scan_seconds.labels(name).observe(elapsed)

    def _received(self, msg: Message, trace: Trace) -> str:
        peer_ip = msg.peer.strip("[]")
        helo = msg.helo or "unknown"
        rcpt = f" for <{msg.rcpt_tos[0]}>" if len(msg.rcpt_tos) == 1 else ""
        date = _date_now()
        return (
            f"from {helo} ([{peer_ip}]) by {self.hostname} ({self.cfg.policy.scanner_name})"
            f" with ESMTP id {trace.filter_id}{rcpt}; {date}"
        )

    async def _reinject(
        self, msg: Message, rcpts: list[str], data: bytes, trace: Trace, whole: bool = True
    ) -> str:
        params = [p for p in msg.mail_options if p.upper().startswith(("BODY=", "SMTPUTF8"))]
        params.insert(0, f"SIZE={len(data)}")
        if msg.smtputf8 and not any(p.upper() == "SMTPUTF8" for p in params):
            params.append("SMTPUTF8")
        started = time.monotonic()
        delivery = await self.forwarder.send(
            msg.mail_from, rcpts, data, mail_params=params, xforward=msg.xforward,
            dot_lines=_dot_lines(msg, data),
        )  # fmt: skip
        trace.timings["reinject"] = time.monotonic() - started
        return await self._answer(msg, rcpts, data, delivery, trace, whole)

    async def _answer(
        self,
        msg: Message,
        rcpts: list[str],
        data: bytes,
        delivery: Delivery,
        trace: Trace,
        whole: bool,
    ) -> str:
        if delivery.error:
            self.metrics.reinject_failures.labels("connection").inc()
            raise _Tempfail(f"Could not hand the message back to Postfix ({delivery.error})")
        final = delivery.data
        assert final is not None
        trace.downstream = str(final)
        if not final.ok:
            if final.temporary or any(r.temporary for r in delivery.recipients.values()):
                self.metrics.reinject_failures.labels("temporary").inc()
                raise _Tempfail(f"Downstream: {final}")
            self.metrics.reinject_failures.labels("permanent").inc()
            if not whole:  # other recipients of the message may have it: our own DSN
                refused_all = {r: _refusal(delivery.recipients.get(r), final) for r in rcpts}
                await self._bounce(msg, data, refused_all, trace)
                # 250: a 5xx now would make Postfix bounce a second time, for all.
                return f"250 2.0.0 Ok, id={trace.filter_id}, refused downstream, DSN sent: {final}"
            firsts = [r for r in delivery.recipients.values() if not r.ok]
            return str(firsts[0] if firsts and firsts[0].code >= 500 else final)
        refused = {r: reply for r, reply in delivery.recipients.items() if not reply.ok}
        if any(reply.temporary for reply in refused.values()):
            # The accepted recipients will get a duplicate on retry; better than a loss.
            self.metrics.reinject_failures.labels("partial").inc()
            raise _Tempfail(f"Downstream deferred some recipients: {next(iter(refused.values()))}")
        if refused:
            self.metrics.reinject_failures.labels("partial").inc()
            await self._bounce(msg, data, refused, trace)
        return f"250 2.0.0 Ok, id={trace.filter_id}, from downstream: {final}"

    async def _bounce(
        self, msg: Message, data: bytes, refused: dict[str, Reply], trace: Trace
    ) -> None:
        """Report recipients refused for good to the sender; a failure to do so is a 451."""
        if not msg.mail_from:
            log.warning(
                "queue_id=%s: downstream refused %s for a message with the null sender;"
                " not bouncing a bounce",
                trace.queue_id, ",".join(refused),
            )  # fmt: skip
            return
        report = dsn.build(
            reporting_mta=self.hostname,
            sender=msg.mail_from,
            failed=refused,
            original=data,
            queue_id=trace.queue_id,
        )
        delivery = await self.forwarder.send("", [msg.mail_from], report)
        if delivery.error or delivery.data is None or not delivery.data.ok:
            raise _Tempfail("Could not report refused recipients to the sender")
        log.info(
            "queue_id=%s: sent a DSN to <%s> for refused %s",
            trace.queue_id, msg.mail_from, ",".join(refused),
        )  # fmt: skip

    def _log(self, msg: Message, trace: Trace, category: Label, reply: str) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        ms = {k: f"{v * 1000:.1f}" for k, v in trace.timings.items()}
        rcpts = ",".join(f"<{_clean(r)}>" for r in msg.rcpt_tos)
        virus = f' virus="{_clean(trace.virus)}"' if trace.virus else ""
        held = f" quarantine={trace.quarantine_id}" if trace.quarantine_id else ""
        score = f" score={trace.score:.3f}" if trace.score is not None else ""
        spam = f' spam="{trace.spam_note}"' if trace.spam_note else ""
        # Written by the daemon's handler directly: a LogRecord per message cost more
        # than the rest of the line (saslimap.logs.info_line; same output).
        logs.info_line(
            log,
            f"queue_id={trace.queue_id} id={trace.filter_id} from=<{_clean(msg.mail_from)}>"
            f" to={rcpts} size={len(msg.data)} result={category.value}{virus}{held}{score}{spam}"
            f" clamd_ms={ms.get('clamd', '-')} spamd_ms={ms.get('spamd', '-')}"
            f" reinject_ms={ms.get('reinject', '-')} total_ms={ms.get('total', '-')}"
            f' reply="{_clean(reply)}"',
        )


def _dot_lines(msg: Message, marked: bytes) -> bool:
    """Whether a line of the marked message may start with a dot (see smtp_out.dot_stuff).

    Marking rewrites only the header section and keeps the rest byte for byte, so
    a new line start can only appear there: where a removed field had ended in a
    lone CR, say, which joins ``\r`` and a following ``.`` line into CRLF-dot.
    """
    if msg.dot_lines:
        return True
    rest = headers.split(msg.data)[1]
    return marked.find(b"\r\n.", 0, len(marked) - len(rest) + 2) >= 0


def _refusal(rcpt_reply: Reply | None, final: Reply) -> Reply:
    """Why one recipient of a refused transaction failed: its own RCPT reply, else DATA's."""
    return rcpt_reply if rcpt_reply is not None and not rcpt_reply.ok else final


def _clean(text: str) -> str:
    if text.isprintable() and '"' not in text:
        return text  # the usual case, without a loop over the characters
    return "".join(c if c.isprintable() and c != '"' else "?" for c in text)


_date_cache: tuple[int, str] = (-1, "")


def _date_now() -> str:
    """``email.utils.formatdate(localtime=True)``, computed once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]


def from_addresses(data: bytes) -> list[str]:
    """Addresses in the From field(s), for list lookups (never raises)."""
    field = headers.first_field(data, b"from")
    if field is None:
        return []
    value = field.split(b":", 1)[1].decode("latin-1")
    return [addr for _, addr in email.utils.getaddresses([value]) if "@" in addr]


def bad_header(data: bytes, *, allow_8bit: bool) -> str:
    """Why the header section is malformed, or "" (amavisd-new's BAD HEADER category)."""
    head = headers.split(data)[0]
    if b"\0" in head:
        return "NUL character in header"
    # Whole-header checks in C: a byte-by-byte generator cost over 20 ns a byte (58 us
    # for a 2.5 KB header), and real header sections (Received, DKIM, ARC) are that long.
    if not allow_8bit and not head.isascii():
        return "non-encoded 8-bit data in header"
    if len(head) > 998 and max(map(len, head.splitlines())) > 998:
        return "header line longer than 998 characters"
    return ""
