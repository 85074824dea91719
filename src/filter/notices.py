"""Administrator notices about held mail, rate-limited.

This module owns the notice text and the throttle: per category at most
``max_per_hour`` notices in any sliding hour; the ones held back are counted
and mentioned in the next notice that goes out, so a virus outbreak produces
a handful of mails, not thousands.  Notices go out through the re-injection
listener like any other mail; a failure to send one is logged, never a reason
to delay the message it is about.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import time
from collections.abc import Callable, Sequence

from filter.config import NoticesConfig
from filter.delivery import Forwarder
from filter.quarantine import Entry

log = logging.getLogger(__name__)

WINDOW = 3600.0


class Notices:
    """Sends notices for the configured categories within the rate limit."""

    def __init__(
        self,
        cfg: NoticesConfig,
        forwarder: Forwarder,
        hostname: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.forwarder = forwarder
        self.hostname = hostname
        self.clock = clock
        self._sent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._held_back: collections.Counter[str] = collections.Counter()

    def _allowed(self, category: str) -> bool:
        now = self.clock()
        sent = self._sent[category]
        while sent and now - sent[0] >= WINDOW:
            sent.popleft()
        if len(sent) >= self.cfg.max_per_hour:
            return False
        sent.append(now)
        return True

    async def notify(self, entry: Entry, message: bytes) -> None:
        """Tell the administrators about a quarantined message, if due."""
        if not self.cfg.admins or entry.category not in self.cfg.categories:
            return
        if not self._allowed(entry.category):
            self._held_back[entry.category] += 1
            return
        held_back = self._held_back.pop(entry.category, 0)
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
