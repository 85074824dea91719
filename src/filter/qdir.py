"""The quarantine directory as a :class:`filter.qstore.QuarantineStore`: the files plus an index.

This module owns how the entries' files (:mod:`filter.quarantine`, the truth)
and the SQLite index (:mod:`filter.qindex`, for speed) are kept in step:

- ``add`` writes and fsyncs the files first (mail is never lost), then updates
  the index.  An index that fails (locked for longer than its timeout, broken,
  disk full) neither loses nor refuses the message: the store leaves a marker
  (``.reindex-needed``) and the next search, list or expire picks the entry up
  (:meth:`DirectoryStore.reconcile`: the names in the directory against the ids
  in the index, so only what is missing or gone is read).
- A search takes ids from the index, then reads each listed entry's metadata
  (about 50 small files a page): what is shown comes from the files, a row
  whose files are gone is dropped from the index, one whose files cannot be
  trusted is reported and skipped, and one that no longer matches (its file
  changed) is refreshed and left out.  A user's view therefore rests on the
  metadata file's recipients, not on the index.
- Release, release requests and delete read, check and rewrite the metadata
  under the directory's flock(2): that, with the metadata file as the record,
  is what makes a release happen once across processes, whatever state the
  index is in.  The index then follows with a conditional UPDATE.
- :meth:`DirectoryStore.reindex` rebuilds the index from every file, in short
  batches so the filter's inserts never wait long.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from filter.qindex import (
    ALLOW_NAME,
    INDEX_NAME,
    LEDGER_NAME,
    AllowList,
    Index,
    IndexUnavailable,
    Ledger,
    encode_cursor,
)
from filter.qindex import matches as _matches
from filter.qstore import (
    Actor,
    AllowEntry,
    AlreadyReleased,
    Claim,
    DayCount,
    Page,
    Query,
    Release,
    ReleaseRequest,
    Skip,
    day_spans,
    ignore,
)
from filter.quarantine import Entry, NotFound, QuarantineError, Store, subject_of

log = logging.getLogger(__name__)

MARKER = ".reindex-needed"
# Entries read and written per index transaction while rebuilding: short enough that
# the daemon's insert waits milliseconds, long enough that 100,000 take seconds.
BATCH = 500
MAX_LIMIT = 1000


def release_of(record: dict[str, object]) -> Release:
    """A release as recorded in metadata (older records: ``when``, ``to``, ``reply`` only)."""
    at = record.get("at")
    when = str(record.get("when", ""))
    if not isinstance(at, int | float) or isinstance(at, bool):
        try:
            at = datetime.strptime(when, "%Y-%m-%d %H:%M:%S").timestamp()
        except ValueError:
            at = 0.0
    to = str(record.get("to", ""))
    return Release(
        at=float(at), when=when, by=str(record.get("by", "")), address=str(record.get("from", "")),
        to=tuple(a for a in to.split(", ") if a), reply=str(record.get("reply", "")),
        confirmed=record.get("confirmed", True) is not False,
    )  # fmt: skip


class DirectoryStore:
    """Held mail in one directory: ``<id>.eml`` + ``<id>.json`` each, an index beside them."""

    def __init__(self, directory: Path, busy_timeout: float = 5.0) -> None:
        self.directory = directory
        self.files = Store(directory)
        self.index = Index(directory / INDEX_NAME, busy_timeout)
        self.allow_list = AllowList(directory / ALLOW_NAME, busy_timeout)
        self.ledger = Ledger(directory / LEDGER_NAME, busy_timeout)

    # Holding mail

    def add(
        self, entry: Entry, message: bytes, more: Iterable[bytes] = (), *, key: str | None = None
    ) -> str:
        """Write the files durably (OSError if not), then index the entry (never raises).

        With ``key``, a message held before under it (and still held) is not written
        again: its id is returned.  The key is recorded in the ledger after the files;
        a ledger that fails only costs that dedup (a warning), never the hold.
        """
        if key is not None:
            earlier = self._held_as(key)
            if earlier is not None:
                return earlier
        if not entry.subject:
            entry.subject = subject_of(message)
        self.files.write(entry, message, more)
        self._index([entry])
        if key is not None:
            try:
                self.ledger.record_hold(key, entry.id)
            except (QuarantineError, OSError, sqlite3.Error) as err:
                log.warning("%s: hold not recorded for retries (%s)", entry.id, err)
        return entry.id

    def _held_as(self, key: str) -> str | None:
        """The id of a still-held entry with ``key`` (None if none, or the ledger fails)."""
        if not self.directory.is_dir():
            return None
        try:
            earlier = self.ledger.held_as(key)
            if earlier is not None:
                self.files.get(earlier)
        except NotFound:
            return None  # deleted or expired since: hold it again
        except (QuarantineError, OSError, sqlite3.Error) as err:
            log.warning("hold ledger not read (%s); holding as a new message", err)
            return None
        return earlier

    def _index(self, entries: Sequence[Entry]) -> None:
        try:
            self.index.put(entries)
        except (QuarantineError, OSError, sqlite3.Error, ValueError) as err:  # never raises
            log.warning(
                "quarantine index not updated for %s (%s); picked up by the next list",
                ", ".join(e.id for e in entries[:3]), err,
            )  # fmt: skip
            self._mark_stale()

    def _mark_stale(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            os.close(os.open(self.directory / MARKER, flags, 0o640))
        except OSError as err:
            log.warning("quarantine index marker not written (%s)", err.strerror)

    # Reading

    def get(self, entry_id: str) -> Entry:
        """An entry's metadata from its file, its subject from the index for older entries."""
        entry = self.files.get(entry_id)
        if not entry.subject:
            entry.subject = self._indexed_subject(entry_id)
        return entry

    def _indexed_subject(self, entry_id: str) -> str:
        try:
            return self.index.subject(entry_id)
        except QuarantineError:
            return ""

    def message(self, entry_id: str) -> bytes:
        """An entry's message bytes, read as :meth:`filter.quarantine.Store.message` reads them."""
        return self.files.message(entry_id)

    def _checked(self, entry_id: str) -> Entry:
        entry = self.files.get(entry_id)
        self.files.check_message_file(entry_id)
        return entry

    def search(
        self, query: Query, limit: int = 50, cursor: str | None = None, on_skip: Skip = ignore
    ) -> Page:
        """A page from the index, each entry then read and checked from its files."""
        limit = max(1, min(limit, MAX_LIMIT))
        if not self.directory.is_dir():
            return Page([], None)  # nothing held yet (the filter makes it on its first hold)
        if os.path.lexists(self.directory / MARKER):
            self.reconcile(on_skip)
        rows = self.index.search(query, limit, cursor)
        found: list[Entry] = []
        gone: list[str] = []
        stale: list[Entry] = []
        for row in rows:
            try:
                entry = self._checked(row.id)
            except NotFound:
                gone.append(row.id)
                continue
            except QuarantineError as err:
                on_skip(err)
                continue
            if not entry.subject:
                entry.subject = row.subject
            if not _matches(query, entry):
                stale.append(entry)  # its file changed since it was indexed
                continue
            found.append(entry)
        if gone:
            self._forget(gone)
        if stale:
            self._index(stale)
        next_cursor = encode_cursor(rows[-1]) if len(rows) == limit else None
        return Page(found, next_cursor)

    def entries(self, query: Query, on_skip: Skip = ignore) -> Iterator[Entry]:
        """Every entry matching ``query``, page by page (for the CLI's list)."""
        cursor: str | None = None
        while True:
            page = self.search(query, MAX_LIMIT, cursor, on_skip)
            yield from page.entries
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def count(self, query: Query, limit: int | None = None) -> int:
        """How many indexed entries match, at most ``limit`` (the index's word: no file read)."""
        if not self.directory.is_dir():
            return 0
        return self.index.count(query, limit)

    def daily_counts(self, days: int, now: float | None = None) -> list[DayCount]:
        """Entries per local day and category, from local midnight ``days - 1`` days ago."""
        if not self.directory.is_dir():
            return []
        spans = day_spans(days, now)
        return self.index.daily_counts(spans)

    def _forget(self, entry_ids: Sequence[str]) -> None:
        try:
            self.index.remove(entry_ids)
        except QuarantineError as err:
            log.warning("quarantine index: %s", err)
            self._mark_stale()

    # Release once

    def claim_release(
        self,
        entry_id: str,
        actor: Actor,
        to: Sequence[str] | None = None,
        *,
        retry_unconfirmed: bool = False,
    ) -> Claim:
        """Claim under the directory lock: check the metadata, record the claim in it, fsync."""
        with self.files.locked():
            entry = self._checked(entry_id)
            if entry.releases:
                first = release_of(entry.releases[0])
                if first.confirmed or not retry_unconfirmed:
                    raise AlreadyReleased(entry.id, first)
            now = time.time()
            token = secrets.token_hex(8)
            recipients = list(to) if to else list(entry.recipients)
            record: dict[str, object] = {
                "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
                "at": now, "to": ", ".join(recipients), "reply": "", "by": actor.name,
                "from": actor.address, "confirmed": False, "token": token,
            }  # fmt: skip
            entry.releases = [record]
            self.files.rewrite(entry)
        try:
            if not self.index.mark_released(entry, retry_unconfirmed):
                log.warning("quarantine index was behind on %s's release; refreshed", entry.id)
        except QuarantineError as err:
            log.warning("quarantine index: %s", err)
        return Claim(entry, token, release_of(record))

    def _claimed(self, claim: Claim) -> Entry:
        entry = self._checked(claim.entry.id)
        if not entry.releases or entry.releases[0].get("token") != claim.token:
            raise QuarantineError(f"{claim.entry.id}: the release claim was taken over")
        return entry

    def confirm_release(self, claim: Claim, delivered_to: Sequence[str], reply: str) -> Release:
        """Record what was delivered, final: ``to`` becomes the recipients the server accepted."""
        with self.files.locked():
            entry = self._claimed(claim)
            record = dict(entry.releases[0])
            record.update(to=", ".join(delivered_to), reply=reply, confirmed=True)
            entry.releases = [record]
            try:
                self.files.rewrite(entry)
            except OSError as err:
                raise QuarantineError(
                    f"{entry.id}: delivered, but the release could not be confirmed"
                    f" ({err.strerror}); it stays claimed, so it is not delivered twice"
                ) from err
        self._index([entry])
        return release_of(record)

    def abandon_release(self, claim: Claim) -> None:
        """Drop the claim: nothing was delivered."""
        with self.files.locked():
            entry = self._claimed(claim)
            entry.releases = []
            self.files.rewrite(entry)
        try:
            self.index.unmark_released(entry)
        except QuarantineError as err:
            log.warning("quarantine index: %s", err)
            self._mark_stale()

    # Deleting

    def delete(self, entry_id: str) -> None:
        """Remove an entry's files (under the lock, so no claim rewrites it), then its row."""
        with self.files.locked():
            self.files.delete(entry_id)
        self._forget([entry_id])

    def delete_many(self, entry_ids: Sequence[str], on_skip: Skip = ignore) -> int:
        """Delete each; refusals go to ``on_skip``."""
        deleted: list[str] = []
        with self.files.locked():
            for entry_id in entry_ids:
                try:
                    self.files.delete(entry_id)
                except QuarantineError as err:
                    on_skip(err)
                    continue
                deleted.append(entry_id)
        if deleted:
            self._forget(deleted)
        return len(deleted)

    def expire(self, max_age_days: float, now: float | None = None, on_skip: Skip = ignore) -> int:
        """Reconcile (so unindexed files count too), then delete what the index says is old."""
        if not self.directory.is_dir():
            return 0
        self.reconcile(on_skip)
        cutoff = (time.time() if now is None else now) - max_age_days * 86400
        return self.delete_many(self.index.older_than(cutoff), on_skip)

    # Keeping the index in step

    def reconcile(self, on_skip: Skip = ignore) -> None:
        """Index files the index lacks, drop rows whose files are gone; read nothing else."""
        if not self.directory.is_dir():
            return
        # The marker goes first: an add failing during the scan leaves a new one.
        try:
            (self.directory / MARKER).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("quarantine index marker not removed (%s)", err.strerror)
        names = self.files.names()
        indexed = self.index.ids()
        self._put_checked([n for n in names if n not in indexed], on_skip)
        present = set(names)
        self._drop_gone([i for i in indexed if i not in present])

    def reindex(self, on_skip: Skip = ignore) -> tuple[int, int]:
        """Rebuild the index from every file: (entries indexed, rows dropped).

        A database that is not ours (or broken) is moved aside first, as
        ``index.sqlite3.broken-<time>``, and a new one built.
        """
        try:
            indexed = self.index.ids()
        except IndexUnavailable as err:
            log.warning("quarantine index %s; moving it aside and rebuilding", err)
            self.index.close()
            self._move_aside()
            indexed = self.index.ids()
        (self.directory / MARKER).unlink(missing_ok=True)
        names = self.files.names()
        count = self._put_checked(names, on_skip)
        present = set(names)
        gone = [i for i in indexed if i not in present]
        # Refused entries stay out of the index, as the list never showed them.
        refused = [i for i in indexed if i in present and not self._trusted(i)]
        self._drop_gone(gone)
        if refused:
            self.index.remove(refused)
        return count, len(gone) + len(refused)

    def _trusted(self, entry_id: str) -> bool:
        try:
            self._checked(entry_id)
        except QuarantineError:
            return False
        return True

    def _move_aside(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            path = self.directory / (INDEX_NAME + suffix)
            if os.path.lexists(path):
                path.rename(path.with_name(f"{INDEX_NAME}.broken-{stamp}{suffix}"))

    def _put_checked(self, names: Sequence[str], on_skip: Skip) -> int:
        """Read, check and index entries in batches; refusals go to ``on_skip``; how many."""
        count = 0
        for start in range(0, len(names), BATCH):
            batch: list[Entry] = []
            for name in names[start : start + BATCH]:
                try:
                    entry = self._checked(name)
                    if not entry.subject:
                        entry.subject = subject_of(self.files.message_head(entry.id))
                except NotFound:
                    continue  # deleted since the directory was read
                except QuarantineError as err:
                    on_skip(err)
                    continue
                batch.append(entry)
            if batch:
                count += self.index.put(batch)
        return count

    def _drop_gone(self, entry_ids: Sequence[str]) -> None:
        # A row whose file appeared after the directory was read is not gone.
        gone = [i for i in entry_ids if not os.path.lexists(self.directory / f"{i}.json")]
        if gone:
            self.index.remove(gone)

    # Release requests

    def request_release(self, entry_id: str, actor: Actor, note: str = "") -> ReleaseRequest:
        """Append the request to the entry's metadata (under the lock), then to the index."""
        with self.files.locked():
            entry = self._checked(entry_id)
            if entry.releases:
                raise AlreadyReleased(entry.id, release_of(entry.releases[0]))
            now = time.time()
            record: dict[str, object] = {
                "at": now, "by": actor.name, "from": actor.address, "note": note[:1000],
            }  # fmt: skip
            entry.requests.append(record)
            self.files.rewrite(entry)
        self._index([entry])
        return ReleaseRequest(entry, now, actor.name, actor.address, note[:1000])

    def release_requests(self, limit: int = 100) -> list[ReleaseRequest]:
        """Open requests, newest first, each from its entry's file (one per entry: its latest)."""
        found: list[ReleaseRequest] = []
        for entry_id in self.index.request_ids(limit):
            try:
                entry = self.get(entry_id)
            except QuarantineError:
                continue
            if entry.releases or not entry.requests:
                continue
            last = entry.requests[-1]
            at = last.get("at")
            found.append(
                ReleaseRequest(
                    entry,
                    float(at) if isinstance(at, int | float) else 0.0,
                    str(last.get("by", "")),
                    str(last.get("from", "")),
                    str(last.get("note", "")),
                )
            )
        return found

    # Allow entries

    def allow(self, recipient: str, sender: str, actor: Actor) -> AllowEntry:
        """Always accept mail from ``sender`` for ``recipient``."""
        return self.allow_list.add(recipient, sender, actor.name)

    def disallow(self, recipient: str, sender: str) -> bool:
        """Remove an allow entry; False if there was none."""
        return self.allow_list.remove(recipient, sender)

    def allowed_senders(self, recipient: str) -> list[AllowEntry]:
        """A recipient's allow entries."""
        return self.allow_list.of(recipient)

    def is_allowed(self, recipient: str, senders: Sequence[str]) -> bool:
        """Whether ``recipient`` allowed any of ``senders``."""
        if not self.directory.is_dir():
            return False  # no entry yet (the portal makes the directory with the first)
        return self.allow_list.any_of(recipient, senders)

    def allowed_among(self, recipients: Sequence[str], senders: Sequence[str]) -> set[str]:
        """Each recipient's primary-key lookups in the local allow file (no round trips)."""
        return {r for r in recipients if self.is_allowed(r, senders)}

    def allow_pairs(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (recipient, sender) pairs from the allow list's file."""
        if not self.directory.is_dir():
            return []
        return self.allow_list.pairs(limit)

    # Release links and the digest (digest.sqlite3: not derived, never rebuilt)

    def spend_link(self, nonce: bytes, expires_at: float, now: float | None = None) -> bool:
        """Record a link's nonce once (an INSERT on its primary key); False if it was there."""
        return self.ledger.spend(nonce, expires_at, now)

    def unspend_link(self, nonce: bytes) -> None:
        """Forget a link's nonce: it may be used again."""
        self.ledger.unspend(nonce)

    def digest_marks(self, recipient: str, entry_ids: Sequence[str]) -> set[str]:
        """Which of ``entry_ids`` a digest to ``recipient`` listed already."""
        if not self.directory.is_dir():
            return set()
        return self.ledger.marked(recipient, entry_ids)

    def mark_digested(
        self, recipient: str, entries: Sequence[tuple[str, float]], at: float
    ) -> None:
        """Record what a digest to ``recipient`` listed."""
        self.ledger.mark(recipient, entries, at)

    def digest_start(self) -> float | None:
        """Where the next digest run scans from (None before the first run)."""
        if not self.directory.is_dir():
            return None  # nothing held yet; the filter makes the directory, with its owner
        return self.ledger.start()

    def finish_digest(self, next_start: float, forget_before: float) -> None:
        """Record the next run's start and forget old marks."""
        if self.directory.is_dir():
            self.ledger.finish(next_start, forget_before)

    def close(self) -> None:
        """Close every database."""
        self.index.close()
        self.allow_list.close()
        self.ledger.close()
