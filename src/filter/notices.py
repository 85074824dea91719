"""Administrator notices about held mail, rate-limited.

This module owns the notice text and the throttle: per category at most
``max_per_hour`` notices in any sliding hour; the ones held back are counted
and mentioned in the next notice that goes out, so a virus outbreak produces
a handful of mails, not thousands.  Notices go out through the re-injection
listener like any other mail; a failure to send one is logged, never a reason
to delay the message it is about.

With a shared store (``[state]``) the hour and the held-back counts are every
gateway host's together (:class:`filter.shared.SharedNotices`), so N hosts do
not send N times ``max_per_hour``.  The store is asked under its deadline;
when it does not answer, this host's own memory decides as with one host.
This host records what it sent either way, so an outage does not give it a
fresh hour.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from filter.config import NoticesConfig
from filter.delivery import Forwarder
from filter.quarantine import Entry

log = logging.getLogger(__name__)

WINDOW = 3600.0


class Throttle(Protocol):
    """The throttle the gateway hosts share (:class:`filter.shared.SharedNotices`), or a fake."""

    async def admit(self, category: str, per_hour: int) -> tuple[bool, int] | None:
        """(send it?, held back by every host since the last one sent); None: no answer."""
        ...


class Notices:
    """Sends notices for the configured categories within the rate limit."""

    def __init__(
        self,
        cfg: NoticesConfig,
        forwarder: Forwarder,
        hostname: str,
        clock: Callable[[], float] = time.monotonic,
        shared: Throttle | None = None,
    ) -> None:
        self.cfg = cfg
        self.forwarder = forwarder
        self.hostname = hostname
        self.clock = clock
        self.shared = shared
        self._sent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._held_back: collections.Counter[str] = collections.Counter()

    def _recent(self, category: str) -> collections.deque[float]:
        """This host's notices of ``category`` in the last hour."""
        now = self.clock()
        sent = self._sent[category]
        while sent and now - sent[0] >= WINDOW:
            sent.popleft()
        return sent

    def _allowed(self, category: str) -> bool:
        sent = self._recent(category)
        if len(sent) >= self.cfg.max_per_hour:
            return False
        sent.append(self.clock())
        return True

    async def _admit(self, category: str) -> tuple[bool, int]:
        """(send it?, notices of ``category`` held back since the last one sent).

        Every host's hour and count when the store answers; else this host's.
        """
        if self.shared is not None:
            answer = await self.shared.admit(category, self.cfg.max_per_hour)
            if answer is not None:  # the store counted a held-back notice itself
                send, held = answer
                if send:
                    self._recent(category).append(self.clock())  # for a later outage
                    held += self._held_back.pop(category, 0)  # held here during one
                return send, held
        if not self._allowed(category):
            self._held_back[category] += 1
            return False, 0
        return True, self._held_back.pop(category, 0)

    async def notify(self, entry: Entry, message: bytes) -> None:
        """Tell the administrators about a quarantined message, if due."""
        if not self.cfg.admins or entry.category not in self.cfg.categories:
            return
        send, held_back = await self._admit(entry.category)
        if not send:
            return
        sender = self.cfg.sender or f"mail-filter@{self.hostname}"
        text = notice_text(entry, sender, self.cfg.admins, self.hostname, held_back)
        delivery = await self.forwarder.send(sender, list(self.cfg.admins), text)
        if delivery.error or delivery.data is None or not delivery.data.ok:
            log.warning("notice about %s not sent: %s", entry.id, delivery.error or delivery.data)


def notice_text(
    entry: Entry, sender: str, admins: Sequence[str], hostname: str, held_back: int
) -> bytes:
    """The notice mail (plain text, ASCII-safe)."""
    more = (
        f"\r\n{held_back} more {entry.category} notice(s) were held back by the rate limit.\r\n"
        if held_back
        else ""
    )
    body = (
        f"A message was quarantined by mail-filter on {hostname}.\r\n\r\n"
        f"Verdict:    {entry.category.upper()} {entry.reason}\r\n"
        f"Sender:     <{entry.mail_from}>\r\n"
        f"Recipients: {', '.join(f'<{r}>' for r in entry.recipients)}\r\n"
        f"Size:       {entry.size} bytes\r\n"
        f"Queue ID:   {entry.queue_id}\r\n"
        f"Quarantine: {entry.id}\r\n\r\n"
        f"To deliver it to its recipients after all:\r\n"
        f"    mail-filter quarantine release {entry.id}\r\n"
        f"To look at it first:\r\n"
        f"    mail-filter quarantine show {entry.id}\r\n" + more
    )
    head = (
        f"From: mail-filter <{sender}>\r\n"
        f"To: {', '.join(admins)}\r\n"
        f"Subject: [mail-filter] {entry.category.upper()} quarantined: {entry.id}\r\n"
        f"Date: {email.utils.formatdate(localtime=True)}\r\n"
        f"Message-ID: <notice.{entry.id}@{hostname}>\r\n"
        f"Auto-Submitted: auto-generated\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return (head + body).encode("utf-8", "replace")


def _one_line(text: str, limit: int = 500) -> str:
    """User-typed text for a notice body: controls and line breaks out, cut to ``limit``."""
    return "".join(c if c.isprintable() else " " for c in text)[:limit]


def request_text(
    entry: Entry,
    who: str,
    where: str,
    note: str,
    sender: str,
    admins: Sequence[str],
    hostname: str,
) -> bytes:
    """The notice that a user asks an administrator to release a held message (portal).

    Not rate-limited like quarantine notices: a user can ask once per held
    message of theirs, which the portal enforces.
    """
    asked = f"Their note: {_one_line(note)}\r\n\r\n" if note.strip() else ""
    body = (
        f"{_one_line(who)} (from {_one_line(where)}) asks for a held message"
        " to be released.\r\n\r\n"
        f"Verdict:    {entry.category.upper()} {_one_line(entry.reason)}\r\n"
        f"Sender:     <{_one_line(entry.mail_from)}>\r\n"
        f"Recipients: {', '.join(f'<{_one_line(r)}>' for r in entry.recipients)}\r\n"
        f"Quarantine: {entry.id}\r\n\r\n" + asked +
        f"Release it from the portal's release requests page, or:\r\n"
        f"    mail-filter quarantine show {entry.id}\r\n"
        f"    mail-filter quarantine release {entry.id}\r\n"
    )  # fmt: skip
    head = (
        f"From: mail-filter <{sender}>\r\n"
        f"To: {', '.join(admins)}\r\n"
        f"Subject: [mail-filter] release requested: {entry.id}\r\n"
        f"Date: {email.utils.formatdate(localtime=True)}\r\n"
        f"Message-ID: <request.{entry.id}.{int(time.time())}@{hostname}>\r\n"
        f"Auto-Submitted: auto-generated\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return (head + body).encode("utf-8", "replace")
