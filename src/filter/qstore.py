"""The quarantine store interface: what the CLI, the portal and the filter ask of held mail.

This module owns the contract (:class:`QuarantineStore`) and the values that
cross it.  :mod:`filter.qdir` implements it on the quarantine directory with
an SQLite index; issue 18 adds PostgreSQL behind the same interface, so nothing
here names a file, a path or SQL.  :mod:`filter.qactions` is what front ends
call: it adds re-injection and the audit line on top.

The interface is blocking, like :mod:`sqlite3`, the files and a PostgreSQL
driver's plain API.  Asyncio code calls it through ``asyncio.to_thread`` (the
filter's hold, :mod:`filter.qactions`), the portal's synchronous handlers run in
its server's thread pool, the CLI calls it directly.  Implementations are
therefore safe to call from several threads.

Release links (the daily digest's) are single-use: the store records each
link's nonce once (:meth:`QuarantineStore.spend_link`), and remembers which
entries a digest told each recipient about, so the next run lists only new ones.

Release happens once: :meth:`QuarantineStore.claim_release` is atomic across
processes and hosts; the claim is recorded before anything is delivered, then
confirmed with what the downstream server accepted, or abandoned when nothing
was delivered.  A claim neither confirmed nor abandoned (the releasing process
died mid-way) keeps refusing, since the message may have gone out; only an
explicit ``retry_unconfirmed`` takes it over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

# Re-exported: they are the interface's types too.
from filter.quarantine import Entry as Entry
from filter.quarantine import NotFound as NotFound
from filter.quarantine import QuarantineError as QuarantineError


@dataclass(frozen=True)
class Actor:
    """Who acts and from where: recorded with releases and requests, and in the audit line.

    ``name``: a portal user's login, ``unix:root`` for the CLI, ``digest`` for a
    digest link; ``address``: the client's IP address, ``local``, or ``ssh:ADDR``.
    """

    name: str
    address: str


# Who the filter daemon itself is, e.g. when it holds a message.
FILTER = Actor("mail-filter", "local")


@dataclass(frozen=True)
class Query:
    """Which entries: every field set narrows the result; None means "any".

    ``recipient`` is exact (case-insensitive) and is what a user's own view
    uses: only entries they were an envelope recipient of.  ``recipient_contains``,
    ``sender`` and ``subject`` are case-insensitive substrings, for the admin's search.
    ``since`` and ``until`` are Unix times (``since <= received_at < until``).
    """

    recipient: str | None = None
    recipient_contains: str | None = None
    sender: str | None = None
    subject: str | None = None
    category: str | None = None
    since: float | None = None
    until: float | None = None
    id: str | None = None
    oldest_first: bool = False


@dataclass(frozen=True)
class Page:
    """One page of a search: its entries and the cursor of the next page (None: the last)."""

    entries: list[Entry]
    next_cursor: str | None


@dataclass(frozen=True)
class Release:
    """A recorded release: when, by whom, from where, to whom, the server's reply.

    ``at`` is a Unix time, ``when`` the local time as recorded (and shown);
    ``confirmed`` is False while the release is under way, or if its process died.
    """

    at: float
    when: str
    by: str
    address: str
    to: tuple[str, ...]
    reply: str
    confirmed: bool

    def describe(self) -> str:
        """``2026-12-01 10:00:00, to a@example.com``, as a refusal names the first release."""
        return f"{self.when}, to {', '.join(self.to)}"


@dataclass(frozen=True)
class Claim:
    """The right to deliver one entry once, returned by ``claim_release``."""

    entry: Entry
    token: str
    release: Release


class AlreadyReleased(QuarantineError):
    """A second release: the first one's record says when and to whom."""

    def __init__(self, entry_id: str, first: Release) -> None:
        by = f" by {first.by}" if first.by else ""
        state = (
            "" if first.confirmed
            else " and not confirmed (under way, or interrupted: it may have been delivered)"
        )  # fmt: skip
        super().__init__(
            f"{entry_id} was already released ({first.describe()}){by}{state};"
            " refusing to deliver it twice"
        )
        self.entry_id = entry_id
        self.first = first


@dataclass(frozen=True)
class ReleaseRequest:
    """A user asking an administrator to release an entry they may not release themselves."""

    entry: Entry
    at: float
    by: str
    address: str
    note: str


@dataclass(frozen=True)
class AllowEntry:
    """ "Always accept mail from this sender" for one recipient (both lower case)."""

    recipient: str
    sender: str
    added_at: float
    added_by: str


@dataclass(frozen=True)
class DayCount:
    """How many entries of one category were held on one (local) day."""

    day: date
    category: str
    count: int


def day_spans(days: int, now: float | None = None) -> list[tuple[date, float, float]]:
    """The last ``days`` local days up to ``now``'s, oldest first: (day, start, end) in Unix time.

    Local midnights, so a day across a DST change is 23 or 25 hours, as it was
    (what :meth:`QuarantineStore.daily_counts` counts over).
    """
    today = datetime.fromtimestamp(time.time() if now is None else now).date()
    spans = []
    for back in range(max(1, days) - 1, -1, -1):
        day = today - timedelta(days=back)
        after = day + timedelta(days=1)
        start = datetime(day.year, day.month, day.day).timestamp()
        spans.append((day, start, datetime(after.year, after.month, after.day).timestamp()))
    return spans


def ignore(_err: QuarantineError) -> None:
    """The default ``on_skip``: entries that cannot be trusted are skipped silently."""


Skip = Callable[[QuarantineError], None]


class QuarantineStore(Protocol):
    """Held mail: add, look, search, release once, delete; release requests; allow entries.

    Every method raises :class:`QuarantineError` (or a subclass) for what the
    caller should report, never a backend's own exception.  Ids are checked
    (``[0-9a-f-]``) before anything is looked up.
    """

    def add(
        self, entry: Entry, message: bytes, more: Iterable[bytes] = (), *, key: str | None = None
    ) -> str:
        """Hold a message durably: when this returns, it survives a crash.

        ``more``: the rest of the message in pieces (a spooled message's tail).
        Only a failure to store the message itself raises (OSError): anything
        the store keeps beside it for speed (an index) is repaired later instead.
        ``key`` (:func:`filter.quarantine.hold_key`): a message held before under
        the same key is not held again.  Returns the id the message is held
        under: ``entry.id``, or the earlier entry's.
        """
        ...

    def get(self, entry_id: str) -> Entry:
        """An entry's metadata; NotFound, or QuarantineError if it cannot be trusted."""
        ...

    def message(self, entry_id: str) -> bytes:
        """An entry's message exactly as held."""
        ...

    def search(
        self, query: Query, limit: int = 50, cursor: str | None = None, on_skip: Skip = ignore
    ) -> Page:
        """Up to ``limit`` entries matching ``query``, newest first (or oldest), from ``cursor``.

        The cursor is opaque and stable: entries added or deleted meanwhile do
        not shift the next page.  A cursor that is not one of ours is refused.
        """
        ...

    def count(self, query: Query, limit: int | None = None) -> int:
        """How many entries match ``query``; with ``limit``, counting stops there (a
        page that says "more than 10,000" need not count a million rows)."""
        ...

    def daily_counts(self, days: int, now: float | None = None) -> list[DayCount]:
        """Entries held per local day and category over the last ``days`` days (for a chart)."""
        ...

    def claim_release(
        self,
        entry_id: str,
        actor: Actor,
        to: Sequence[str] | None = None,
        *,
        retry_unconfirmed: bool = False,
    ) -> Claim:
        """Atomically claim an entry's one release, to ``to`` or its own recipients.

        AlreadyReleased if it was released or claimed before (an unconfirmed
        claim too, unless ``retry_unconfirmed``).
        """
        ...

    def confirm_release(self, claim: Claim, delivered_to: Sequence[str], reply: str) -> Release:
        """Record what the claimed release delivered: it is final."""
        ...

    def abandon_release(self, claim: Claim) -> None:
        """Nothing was delivered: the entry may be released again."""
        ...

    def delete(self, entry_id: str) -> None:
        """Remove an entry (and its release requests)."""
        ...

    def delete_many(self, entry_ids: Sequence[str], on_skip: Skip = ignore) -> int:
        """Remove several entries; those that cannot be go to ``on_skip``. Returns how many went."""
        ...

    def expire(self, max_age_days: float, now: float | None = None, on_skip: Skip = ignore) -> int:
        """Remove entries held longer than ``max_age_days``; returns how many."""
        ...

    def reconcile(self, on_skip: Skip = ignore) -> None:
        """Make searches match what is held (an index's repair); a no-op where nothing can drift.

        Entries found that cannot be trusted go to ``on_skip``.
        """
        ...

    def request_release(self, entry_id: str, actor: Actor, note: str = "") -> ReleaseRequest:
        """Record that ``actor`` asks an administrator to release an entry."""
        ...

    def release_requests(self, limit: int = 100) -> list[ReleaseRequest]:
        """Open requests (their entry not released yet), newest first."""
        ...

    def allow(self, recipient: str, sender: str, actor: Actor) -> AllowEntry:
        """Always accept mail from ``sender`` for ``recipient`` (addresses, case-insensitive)."""
        ...

    def disallow(self, recipient: str, sender: str) -> bool:
        """Remove an allow entry; False if there was none."""
        ...

    def allowed_senders(self, recipient: str) -> list[AllowEntry]:
        """A recipient's allow entries, by sender."""
        ...

    def is_allowed(self, recipient: str, senders: Sequence[str]) -> bool:
        """Whether ``recipient`` allowed any of ``senders`` (for the filter's policy)."""
        ...

    def allowed_among(self, recipients: Sequence[str], senders: Sequence[str]) -> set[str]:
        """Which of ``recipients`` (as given) allowed any of ``senders``: one question for
        a message with many recipients, rather than one per recipient."""
        ...

    def allow_pairs(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` allow entries as (recipient, sender), lower case, in key order
        (each host's copy for when the store is down: :mod:`filter.allowcache`)."""
        ...

    # Release links and the daily digest (filter.release_links, filter.digest): state
    # that is not derived from the entries, so a rebuilt index never loses it.

    def spend_link(self, nonce: bytes, expires_at: float, now: float | None = None) -> bool:
        """Record a release link's nonce as used; False if it was used before.

        Atomic across processes and hosts: of two uses at once, one gets True.
        Nonces whose links expired more than a day before ``now`` are forgotten
        (their tokens are refused as expired before they get here).
        """
        ...

    def unspend_link(self, nonce: bytes) -> None:
        """Give a link back: its release delivered nothing, so it may be tried again."""
        ...

    def digest_marks(self, recipient: str, entry_ids: Sequence[str]) -> set[str]:
        """Which of ``entry_ids`` a digest to ``recipient`` (case-insensitive) listed already."""
        ...

    def mark_digested(
        self, recipient: str, entries: Sequence[tuple[str, float]], at: float
    ) -> None:
        """Record that a digest sent at ``at`` told ``recipient`` of these (id, received_at)."""
        ...

    def digest_start(self) -> float | None:
        """The receipt time the next digest run scans from (None: no run yet)."""
        ...

    def finish_digest(self, next_start: float, forget_before: float) -> None:
        """Record where the next run scans from; forget marks of mail received before
        ``forget_before`` (expired from the quarantine by then)."""
        ...

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...
