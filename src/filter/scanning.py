"""The scan step: clamd and spamd side by side, then the banned-part and header checks.

This module owns what the pipeline learns about a message before any
decision: a virus name, a banned part, what could not be inspected (the
"unchecked" category: inspection limits, encrypted or unreadable archives, MIME
it cannot parse, and clamd's own limit and encryption heuristics), spamd's
report (or why spamd was skipped), a malformed header.  A scanner that gives no verdict (down, slow,
answering nonsense) raises :class:`filter.replies.Tempfail`, so the message
waits in Postfix's queue: it is never passed unscanned.  The scanners are
small protocols, so tests use fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from filter import headers, replies
from filter.banned import ArchiveInside, Inspection, inspect, may_nest
from filter.clamd import ClamdError, Outcome, ScanResult
from filter.config import Config
from filter.inspect_child import CHILDREN, inspect_spooled
from filter.message import Message, Trace
from filter.metrics import Metrics
from filter.policy import Findings
from filter.replies import Tempfail
from filter.spamd import SpamdError, SpamReport
from filter.spool import HEAD_LIMIT, Spool

log = logging.getLogger(__name__)
T = TypeVar("T")

BANNED_INLINE_LIMITS = (128 * 1024, 2048, 16)
"""Bytes, lines and MIME boundary lines up to which a message is checked for banned parts
on the event loop: a few milliseconds at most, archives excepted.  A thread costs more
CPU than that in hand-offs and, holding the GIL, can stall the loop for the interpreter's
switch interval (5 ms) anyway; it is kept for what can take longer.  A single-part
message (:func:`filter.banned.may_nest` is false) is not held to the line and boundary
counts: only its header section is parsed."""


CLAMD_UNCHECKED = ("Heuristics.Limits.Exceeded", "Heuristics.Encrypted.")
"""Prefixes of names clamd reports as FOUND when it stopped short (AlertExceedsMax,
AlertEncrypted*): the message was not fully scanned, which is no virus but no clean."""


def clamd_unchecked(name: str) -> bool:
    """Whether a clamd FOUND name says "could not scan" rather than "virus"."""
    return name.startswith(CLAMD_UNCHECKED)


class VirusScanner(Protocol):
    """clamd, or a fake."""

    async def scan(self, data: bytes | Spool) -> ScanResult:
        """Scan (bytes, or a spooled message's file); raise ClamdError when there is no verdict."""
        ...


class SpamScanner(Protocol):
    """spamd, or a fake."""

    async def check(self, message: bytes) -> SpamReport:
        """Score; raise SpamdError when there is no verdict."""
        ...


class Scanner:
    """Finds what is in a message, with the configured scanners and checks."""

    def __init__(
        self, cfg: Config, clamd: VirusScanner, spamd: SpamScanner | None, metrics: Metrics
    ) -> None:
        self.cfg = cfg
        self.clamd = clamd
        self.spamd = spamd if cfg.spamd.enabled else None
        self.metrics = metrics
        self._children = asyncio.Semaphore(CHILDREN)  # large messages inspected at once
        self._threaded = asyncio.Semaphore(1)  # messages with archives inspected at once

    async def findings(self, msg: Message, trace: Trace) -> Findings:
        """Everything the checks found; a virus ends the search (nothing else matters)."""
        virus, report, unchecked = await self._scan(msg, trace)
        if virus is not None:
            trace.virus = virus
            return Findings(virus=virus)
        found = Inspection()
        if self.cfg.banned.enabled:
            started = time.monotonic()
            found = await self._inspect(msg, trace)
            trace.timings["banned"] = time.monotonic() - started
        unchecked = found.unchecked or unchecked
        if msg.head_cut and not unchecked:
            # The header checks below read only the head: the fields past it went unread.
            unchecked = f"header section longer than {HEAD_LIMIT} bytes"
        trace.unchecked = "" if found.banned else unchecked
        return Findings(
            banned=found.banned,
            unchecked=unchecked,
            report=report,
            spam_note=trace.spam_note,
            bad_header=bad_header(msg.data, allow_8bit=msg.smtputf8),
        )

    async def _inspect(self, msg: Message, trace: Trace) -> Inspection:
        """inspect(), on the event loop for small messages without archives.

        Whatever the input, the answer is a verdict: an exception here would be a
        451 on every retry of the same bytes, so one is "unchecked" (held), logged.
        """
        banned = self.cfg.banned
        names, types, limits = banned.names, banned.types, banned.limits
        max_bytes, max_lines, max_parts = BANNED_INLINE_LIMITS
        data = msg.data
        try:
            if msg.spool is not None:  # read whole, but in a child process (filter.inspect_child)
                return await inspect_spooled(msg.spool, names, types, limits, self._children)
            if len(data) <= max_bytes and (
                # One part: its parse reads the header section only, however long the body.
                not may_nest(data)
                or (data.count(b"\n") <= max_lines and data.count(b"\n--") <= max_parts)
            ):
                with contextlib.suppress(ArchiveInside):
                    return inspect(data, names, types, open_archives=False, limits=limits)
            # Big or many-part messages and archives (up to banned.max_unpacked bytes to
            # inflate) are CPU work: keep the event loop free for other messages.
            # One at a time: an archive may unpack up to banned.max_unpacked bytes in
            # memory (a 68 KB zip of zeros holds 50 MB), and the GIL runs one anyway.
            async with self._threaded:
                return await asyncio.to_thread(inspect, data, names, types, limits=limits)
        except Exception as err:  # any parser failure must still give a verdict
            log.warning("inspection failed queue_id=%s: %s", trace.queue_id, err, exc_info=True)
            return Inspection(unchecked=f"could not be parsed ({type(err).__name__})")

    async def _scan(self, msg: Message, trace: Trace) -> tuple[str | None, SpamReport | None, str]:
        """Run clamd and spamd side by side; a virus cancels the spam scan.

        Returns the virus name, spamd's report and what clamd said it could not scan.
        """
        clam = asyncio.ensure_future(self._timed("clamd", self.clamd.scan(msg.source), trace))
        spam: asyncio.Future[SpamReport] | None = None
        if self.spamd is None:
            trace.spam_note = "spamd disabled"
        elif msg.size > self.cfg.spamd.max_size:
            trace.spam_note = (
                f"message of {msg.size} bytes exceeds the {self.cfg.spamd.max_size}-byte limit"
            )
        else:
            spam = asyncio.ensure_future(self._timed("spamd", self.spamd.check(msg.whole()), trace))
        try:
            try:
                result = await clam
            except ClamdError as err:
                self.metrics.scanner_errors.labels("clamd", err.kind).inc()
                raise Tempfail(replies.VIRUS_SCANNER_DOWN.format(kind=err.kind)) from err
            unchecked = ""
            if result.outcome is Outcome.VIRUS and clamd_unchecked(result.name):
                unchecked = f"clamd: {result.name}"
            elif result.outcome is Outcome.VIRUS:
                return result.name, None, ""
            if result.outcome is Outcome.ERROR:
                self.metrics.scanner_errors.labels("clamd", "error").inc()
                log.warning("clamd could not scan queue_id=%s: %s", trace.queue_id, result.name)
                raise Tempfail(replies.VIRUS_SCANNER_FAILED)
            if spam is None:
                return None, None, unchecked
            try:
                return None, await spam, unchecked
            except SpamdError as err:
                self.metrics.scanner_errors.labels("spamd", err.kind).inc()
                raise Tempfail(replies.SPAM_SCANNER_DOWN.format(kind=err.kind)) from err
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
