"""The quarantine directory's SQLite index: fast listing, search and counts over the files.

This module owns the index database (``index.sqlite3`` in the quarantine
directory), its schema and its queries, and the allow list's database
(``allow.sqlite3``, beside it), and the digest's ledger (``digest.sqlite3``:
spent release links, which entries each recipient's digest listed, where the
next digest run starts).  The index is derived from the entries' metadata
files and can be dropped and rebuilt at any time
(:meth:`filter.qdir.DirectoryStore.reindex`); the allow list and the ledger are
not derived from anything, which is why each has its own file: deleting a
broken index never loses them.

Concurrency: the filter daemon inserts while the CLI and the portal read,
release and delete, in other processes.  WAL mode lets readers go on while one
writer writes; ``busy_timeout`` makes a writer wait for another instead of
failing at once; every write transaction is short (one entry, or a batch of a
few hundred during a rebuild).  Within one process, a lock serialises the one
connection (the store is called from several threads).

The directory may be writable by others than the filter, so the database files
are checked like the entries are (plain regular files with one link, never
followed: ``nofollow=1``), and ``trusted_schema`` is off, so a planted database's
triggers or views cannot run our functions.  A database that is not ours fails
with :class:`IndexUnavailable`; a rebuild moves it aside.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

from filter.qstore import AllowEntry, DayCount, Query
from filter.quarantine import Entry, QuarantineError

INDEX_NAME = "index.sqlite3"
ALLOW_NAME = "allow.sqlite3"
LEDGER_NAME = "digest.sqlite3"
SCHEMA_VERSION = "2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Clustered by time (WITHOUT ROWID, keyed by received_at, id): a page, and a search
-- that has to read every row, walk the table in order instead of hopping from an
-- index to scattered rows.
CREATE TABLE IF NOT EXISTS entries (
    received_at REAL NOT NULL,
    id TEXT NOT NULL UNIQUE,
    category TEXT NOT NULL,
    sender_lc TEXT NOT NULL,
    recipients_lc TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_lc TEXT NOT NULL,
    released_at REAL,
    released_by TEXT,
    released_to TEXT,
    PRIMARY KEY (received_at, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_category ON entries (category, received_at, id);
-- One row per envelope recipient, ordered like the list page: a user's own page
-- is a range scan of this table alone.
CREATE TABLE IF NOT EXISTS recipients (
    address TEXT NOT NULL,
    received_at REAL NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (address, received_at, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_by_id ON recipients (id);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT NOT NULL,
    at REAL NOT NULL,
    by TEXT NOT NULL,
    address TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_id ON requests (id);
CREATE INDEX IF NOT EXISTS requests_by_time ON requests (at);
"""

_ALLOW_SCHEMA = """
CREATE TABLE IF NOT EXISTS allow (
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    added_at REAL NOT NULL,
    added_by TEXT NOT NULL,
    PRIMARY KEY (recipient, sender)
) WITHOUT ROWID;
"""

_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS spent_links (
    nonce BLOB PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS spent_links_by_expiry ON spent_links (expires_at);
CREATE TABLE IF NOT EXISTS digested (
    recipient TEXT NOT NULL,
    id TEXT NOT NULL,
    received_at REAL NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (recipient, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS digested_by_time ON digested (received_at);
CREATE TABLE IF NOT EXISTS digest_runs (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holds_by_time ON holds (at);
"""

# How long a hold's key is remembered: longer than Postfix keeps retrying a
# message (maximal_queue_lifetime, 5 days by default).
HOLD_KEY_TTL = 6 * 86400.0

# A spent nonce is kept this long past its link's expiry: a token checked just
# before it expired may still be on its way to spend_link.
SPENT_GRACE = 86400.0

_CURSOR = re.compile(r"([0-9.e+-]{1,40}):([0-9a-f-]{1,64})")


class IndexUnavailable(QuarantineError):
    """The index cannot be opened or used (locked too long, not our database, disk trouble)."""


@dataclass(frozen=True)
class Row:
    """What a search takes from the index: enough to order, page and fill in a subject."""

    id: str
    received_at: float
    subject: str


def encode_cursor(row: Row) -> str:
    """The position after ``row``: its time (exact, ``repr``) and its id."""
    return f"{row.received_at!r}:{row.id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(received_at, id) from a cursor of ours; QuarantineError for anything else."""
    match = _CURSOR.fullmatch(cursor)
    try:
        when = float(match.group(1)) if match else math.nan
    except ValueError:
        when = math.nan
    if match is None or not math.isfinite(when):
        raise QuarantineError("not a page cursor of ours")
    return when, match.group(2)


def _check_plain(path: Path) -> None:
    """Refuse a database file (or its -wal, -shm) that is a link or not a plain file."""
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise IndexUnavailable(f"{candidate.name} is not a plain file; refused")


def _own_like_directory(path: Path) -> None:
    """Run as root (the CLI), give files SQLite created to the directory's owner.

    Otherwise the daemon, running as its own user, could no longer write the
    index (or its -wal and -shm files) after an administrator's first command.
    """
    if os.geteuid() != 0:
        return
    owner = os.stat(path.parent)
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = os.lstat(candidate)
            if stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.chown(candidate, owner.st_uid, owner.st_gid, follow_symlinks=False)
        except FileNotFoundError:
            continue


def connect(path: Path, schema: str, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) one of our databases in WAL mode, checked as described above."""
    _check_plain(path)
    if not path.exists():
        # Created by us with the entries' mode, exclusively and never through a link.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            with suppress(FileExistsError):  # another process was first
                os.close(os.open(path, flags, 0o640))
        except OSError as err:
            raise IndexUnavailable(f"{path}: cannot create ({err.strerror})") from err
    try:
        db = sqlite3.connect(
            f"{path.absolute().as_uri()}?nofollow=1",
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,  # transactions are ours: BEGIN IMMEDIATE where we write
            check_same_thread=False,  # serialised by the owner's lock
        )
    except sqlite3.Error as err:
        raise IndexUnavailable(f"{path.name}: cannot open ({err})") from err
    try:
        db.execute("PRAGMA trusted_schema = OFF")
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against a process crash in WAL mode; a power loss may lose
        # the last transactions, which a rebuild restores from the files.
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(schema)
    except sqlite3.Error as err:
        db.close()
        raise IndexUnavailable(f"{path.name}: unusable ({err})") from err
    _own_like_directory(path)
    return db


def _safe(text: str) -> str:
    """``text`` as SQLite can bind it: a lone surrogate (an undecodable byte of a
    header or a command-line argument) becomes U+FFFD, the same way for what is
    stored and what is searched; the files keep the original, and every row is
    checked against them (:func:`matches`)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _lower(text: str) -> str:
    return _safe(text).lower()


def _fields(entry: Entry) -> tuple[object, ...]:
    first = entry.releases[0] if entry.releases else None
    return (
        entry.received_at,
        entry.id,
        entry.category,
        _lower(entry.mail_from),
        "\n".join(_lower(r) for r in entry.recipients),
        _safe(entry.subject),
        _lower(entry.subject),
        _number(first.get("at")) if first is not None else None,
        _safe(str(first.get("by", ""))) if first is not None else None,
        _safe(str(first.get("to", ""))) if first is not None else None,
    )


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _where(query: Query, alias: str) -> tuple[list[str], list[object]]:
    """SQL conditions and their parameters for ``query`` on table ``alias`` (entries)."""
    conditions: list[str] = []
    params: list[object] = []
    if query.category is not None:
        conditions.append(f"{alias}.category = ?")
        params.append(_safe(query.category))
    if query.since is not None:
        conditions.append(f"{alias}.received_at >= ?")
        params.append(query.since)
    if query.until is not None:
        conditions.append(f"{alias}.received_at < ?")
        params.append(query.until)
    if query.id is not None:
        conditions.append(f"{alias}.id = ?")
        params.append(_safe(query.id))
    # instr() rather than LIKE: no wildcard escaping, and lower() in Python covers
    # more than SQLite's ASCII-only case folding.
    for column, needle in (
        ("sender_lc", query.sender),
        ("subject_lc", query.subject),
        ("recipients_lc", query.recipient_contains),
    ):
        if needle:
            conditions.append(f"instr({alias}.{column}, ?) > 0")
            params.append(_lower(needle))
    return conditions, params


def matches(query: Query, entry: Entry) -> bool:
    """Whether an entry (as its files say) matches ``query``: the final check of every row."""
    rcpts = [_lower(r) for r in entry.recipients]
    checks = (
        query.recipient is None or _lower(query.recipient) in rcpts,
        query.recipient_contains is None
        or any(_lower(query.recipient_contains) in r for r in rcpts),
        query.sender is None or _lower(query.sender) in _lower(entry.mail_from),
        query.subject is None or _lower(query.subject) in _lower(entry.subject),
        query.category is None or query.category == entry.category,
        query.since is None or entry.received_at >= query.since,
        query.until is None or entry.received_at < query.until,
        query.id is None or query.id == entry.id,
    )
    return all(checks)


class _Database:
    """One SQLite file of ours on one connection: opened on first use, used under a lock.

    sqlite3 errors while it is in use come out as IndexUnavailable.
    """

    _schema: ClassVar[str]

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _opened(self, db: sqlite3.Connection) -> None:
        """Runs once on each new connection, under the lock (nothing by default)."""

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                self._db = connect(self.path, self._schema, self.busy_timeout)
                self._opened(self._db)
            try:
                yield self._db
            except sqlite3.Error as err:
                raise IndexUnavailable(f"{self.path.name}: {err}") from err

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (BEGIN IMMEDIATE) so it never deadlocks on upgrade."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _every(self, sql: str, key: Sequence[str], batch: int) -> Iterator[tuple[Any, ...]]:
        """Every row of ``sql``, ordered by ``key`` (its table's primary key, the first
        columns it selects), ``batch`` rows per lock hold: a long walk (a migration of
        the whole file) never keeps the store's other callers waiting for long.

        ``sql`` has ``{after}`` where the condition on the last key read goes.
        """
        after = f"WHERE ({', '.join(key)}) > ({', '.join('?' * len(key))})"
        last: tuple[Any, ...] | None = None
        while True:
            with self._connection() as db:
                if last is None:
                    rows = db.execute(sql.format(after=""), (batch,)).fetchall()
                else:
                    params = (*last[: len(key)], batch)
                    rows = db.execute(sql.format(after=after), params).fetchall()
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1]

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class Index(_Database):
    """The entries' index in one SQLite file; opened on first use."""

    _schema = _SCHEMA

    def _opened(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def put(self, entries: Iterable[Entry]) -> int:
        """Insert or refresh entries in one transaction; returns how many."""
        count = 0
        with self._writing() as db:
            for entry in entries:
                self._put(db, entry)
                count += 1
        return count

    @staticmethod
    def _put(db: sqlite3.Connection, entry: Entry) -> None:
        db.execute("INSERT OR REPLACE INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)", _fields(entry))
        db.execute("DELETE FROM recipients WHERE id = ?", (entry.id,))
        db.executemany(
            "INSERT OR IGNORE INTO recipients VALUES (?,?,?)",
            [(_lower(r), entry.received_at, entry.id) for r in entry.recipients],
        )
        db.execute("DELETE FROM requests WHERE id = ?", (entry.id,))
        db.executemany(
            "INSERT INTO requests VALUES (?,?,?,?,?)",
            [
                (
                    entry.id,
                    _number(r.get("at")),
                    _safe(str(r.get("by", ""))),
                    _safe(str(r.get("from", ""))),
                    _safe(str(r.get("note", ""))),
                )
                for r in entry.requests
            ],
        )

    def remove(self, entry_ids: Sequence[str]) -> None:
        """Forget entries (deleted, or their files are gone)."""
        with self._writing() as db:
            for entry_id in entry_ids:
                for table in ("entries", "recipients", "requests"):
                    db.execute(f"DELETE FROM {table} WHERE id = ?", (entry_id,))  # noqa: S608 - fixed names

    def ids(self) -> set[str]:
        """Every indexed id."""
        with self._connection() as db:
            return {row[0] for row in db.execute("SELECT id FROM entries")}

    def older_than(self, cutoff: float) -> list[str]:
        """Ids of entries received before ``cutoff``, oldest first."""
        with self._connection() as db:
            sql = "SELECT id FROM entries WHERE received_at < ? ORDER BY received_at, id"
            return [row[0] for row in db.execute(sql, (cutoff,))]

    def subject(self, entry_id: str) -> str:
        """The indexed subject of an entry ("" if not indexed)."""
        with self._connection() as db:
            row = db.execute("SELECT subject FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return str(row[0]) if row else ""

    def search(self, query: Query, limit: int, cursor: str | None) -> list[Row]:
        """Rows matching ``query`` in page order, from after ``cursor``."""
        after = decode_cursor(cursor) if cursor is not None else None
        order = "ASC" if query.oldest_first else "DESC"
        compare = ">" if query.oldest_first else "<"
        if query.recipient is not None:
            # A user's own page: ranged over their rows of ``recipients``, in its key's order.
            conditions, params = _where(query, "e")
            conditions.insert(0, "r.address = ?")
            params.insert(0, _lower(query.recipient))
            if after is not None:
                conditions.append(f"(r.received_at, r.id) {compare} (?, ?)")
                params.extend(after)
            sql = (
                "SELECT r.id, r.received_at, e.subject FROM recipients r"  # noqa: S608 - ours
                " JOIN entries e ON e.id = r.id WHERE " + " AND ".join(conditions) +
                f" ORDER BY r.received_at {order}, r.id {order} LIMIT ?"
            )  # fmt: skip
        else:
            conditions, params = _where(query, "e")
            if after is not None:
                conditions.append(f"(e.received_at, e.id) {compare} (?, ?)")
                params.extend(after)
            where = " WHERE " + " AND ".join(conditions) if conditions else ""
            sql = (
                f"SELECT e.id, e.received_at, e.subject FROM entries e{where}"  # noqa: S608 - ours
                f" ORDER BY e.received_at {order}, e.id {order} LIMIT ?"
            )
        params.append(limit)
        with self._connection() as db:
            return [Row(*row) for row in db.execute(sql, params)]

    def count(self, query: Query, limit: int | None = None) -> int:
        """How many indexed entries match ``query`` (at most ``limit``)."""
        conditions, params = _where(query, "e")
        if query.recipient is not None:
            conditions.insert(0, "r.address = ?")
            params.insert(0, _lower(query.recipient))
            source = "recipients r JOIN entries e ON e.id = r.id"
        else:
            source = "entries e"
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        sql = f"SELECT 1 FROM {source}{where}"  # noqa: S608 - fixed fragments
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))
        with self._connection() as db:
            row = db.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()  # noqa: S608
        return int(row[0])

    def daily_counts(self, days: Sequence[tuple[date, float, float]]) -> list[DayCount]:
        """Entries per category in each (day, start, end): range counts on the category index.

        One count per day and category, each a walk of that range of the index
        alone: far less than reading every row and converting its time to a date.
        """
        categories_sql = (  # the distinct categories, one index seek each
            "WITH RECURSIVE c(category) AS (SELECT min(category) FROM entries UNION ALL"
            " SELECT (SELECT min(category) FROM entries WHERE category > c.category)"
            " FROM c WHERE c.category IS NOT NULL) SELECT category FROM c"
            " WHERE category IS NOT NULL"
        )
        count_sql = (
            "SELECT count(*) FROM entries"
            " WHERE category = ? AND received_at >= ? AND received_at < ?"
        )
        found: list[DayCount] = []
        with self._connection() as db:
            categories = [row[0] for row in db.execute(categories_sql)]
            for day, start, end in days:
                for category in categories:
                    (n,) = db.execute(count_sql, (category, start, end)).fetchone()
                    if n:
                        found.append(DayCount(day, category, n))
        return found

    def request_ids(self, limit: int) -> list[str]:
        """Ids with release requests whose entry is not released, newest request first."""
        sql = (
            "SELECT q.id, max(q.at) AS latest FROM requests q JOIN entries e ON e.id = q.id"
            " WHERE e.released_at IS NULL GROUP BY q.id ORDER BY latest DESC LIMIT ?"
        )
        with self._connection() as db:
            return [row[0] for row in db.execute(sql, (limit,))]

    def mark_released(self, entry: Entry, retry_unconfirmed: bool) -> bool:
        """The index's side of a claim: a conditional UPDATE, False if it says released already.

        The files are the truth and the directory lock the guard (see
        :mod:`filter.qdir`); this keeps the index in step, in the form a SQL store
        uses on its own (issue 18).
        """
        first = entry.releases[0]
        # A retry takes over an unconfirmed claim, which the index does not tell
        # apart: the files decided that already, under the lock.
        update = "UPDATE entries SET released_at = ?, released_by = ?, released_to = ? WHERE id = ?"
        if not retry_unconfirmed:
            update += " AND released_at IS NULL"
        with self._writing() as db:
            if db.execute("SELECT 1 FROM entries WHERE id = ?", (entry.id,)).fetchone() is None:
                self._put(db, entry)
                return True
            updated = db.execute(
                update,
                (_number(first.get("at")), str(first.get("by", "")), str(first.get("to", "")),
                 entry.id),
            ).rowcount  # fmt: skip
            if updated == 0:
                self._put(db, entry)  # the index was behind the files: the files win
            return updated == 1

    def unmark_released(self, entry: Entry) -> None:
        """An abandoned claim: the entry is releasable again in the index too."""
        with self._writing() as db:
            db.execute(
                "UPDATE entries SET released_at = NULL, released_by = NULL, released_to = NULL"
                " WHERE id = ?",
                (entry.id,),
            )


def _lower_address(address: str) -> str:
    return address.strip().lower()


class AllowList(_Database):
    """Per-recipient "always accept from" entries in their own SQLite file; opened on first use."""

    _schema = _ALLOW_SCHEMA

    def add(self, recipient: str, sender: str, by: str, now: float | None = None) -> AllowEntry:
        """Add (or refresh) one entry."""
        # The quarantine directory exists once mail was held; a first entry may come before.
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        entry = AllowEntry(
            _lower_address(recipient), _lower_address(sender),
            time.time() if now is None else now, by,
        )  # fmt: skip
        with self._connection() as db:
            db.execute(
                "INSERT OR REPLACE INTO allow VALUES (?,?,?,?)",
                (entry.recipient, entry.sender, entry.added_at, entry.added_by),
            )
        return entry

    def remove(self, recipient: str, sender: str) -> bool:
        """Remove one entry; False if there was none."""
        with self._connection() as db:
            cur = db.execute(
                "DELETE FROM allow WHERE recipient = ? AND sender = ?",
                (_lower_address(recipient), _lower_address(sender)),
            )
            return cur.rowcount > 0

    def of(self, recipient: str) -> list[AllowEntry]:
        """A recipient's entries, by sender."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT recipient, sender, added_at, added_by FROM allow"
                " WHERE recipient = ? ORDER BY sender",
                (_lower_address(recipient),),
            ).fetchall()
        return [AllowEntry(*row) for row in rows]

    def pairs(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (recipient, sender) pairs, in key order."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT recipient, sender FROM allow ORDER BY recipient, sender LIMIT ?",
                (max(0, limit),),
            ).fetchall()
        return [(str(r), str(s)) for r, s in rows]

    def any_of(self, recipient: str, senders: Sequence[str]) -> bool:
        """Whether ``recipient`` allowed any of ``senders`` (one primary-key lookup each)."""
        wanted = [_lower_address(s) for s in senders if s]
        if not wanted:
            return False
        marks = ",".join("?" * len(wanted))
        with self._connection() as db:
            row = db.execute(
                f"SELECT 1 FROM allow WHERE recipient = ? AND sender IN ({marks}) LIMIT 1",  # noqa: S608
                (_lower_address(recipient), *wanted),
            ).fetchone()
        return row is not None

    def every(self, batch: int = 1000) -> Iterator[AllowEntry]:
        """Every entry, by recipient and sender (what a migration copies)."""
        sql = (
            "SELECT recipient, sender, added_at, added_by FROM allow {after}"
            " ORDER BY recipient, sender LIMIT ?"
        )
        for row in self._every(sql, ("recipient", "sender"), batch):
            yield AllowEntry(*row)


class Ledger(_Database):
    """The digest's records in one SQLite file (see the module docstring); opened on first use."""

    _schema = _LEDGER_SCHEMA

    def spend(self, nonce: bytes, expires_at: float, now: float | None = None) -> bool:
        """Insert the nonce unless present (one transaction); forget long-expired ones."""
        now = time.time() if now is None else now
        with self._writing() as db:
            db.execute("DELETE FROM spent_links WHERE expires_at < ?", (now - SPENT_GRACE,))
            cur = db.execute("INSERT OR IGNORE INTO spent_links VALUES (?, ?)", (nonce, expires_at))
            return cur.rowcount == 1

    def unspend(self, nonce: bytes) -> None:
        """Forget a nonce."""
        with self._writing() as db:
            db.execute("DELETE FROM spent_links WHERE nonce = ?", (nonce,))

    def marked(self, recipient: str, entry_ids: Sequence[str]) -> set[str]:
        """Which of ``entry_ids`` are marked for ``recipient``."""
        found: set[str] = set()
        rcpt = _lower_address(recipient)
        with self._writing() as db:  # a read, but it may be the file's first use
            for start in range(0, len(entry_ids), 500):  # under SQLite's variable limit
                chunk = list(entry_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id FROM digested WHERE recipient = ? AND id IN ({marks})"  # noqa: S608
                found.update(row[0] for row in db.execute(sql, (rcpt, *chunk)))
        return found

    def mark(self, recipient: str, entries: Sequence[tuple[str, float]], at: float) -> None:
        """Mark (id, received_at) pairs for ``recipient``, sent at ``at``."""
        rcpt = _lower_address(recipient)
        with self._writing() as db:
            db.executemany(
                "INSERT OR REPLACE INTO digested VALUES (?, ?, ?, ?)",
                [(rcpt, entry_id, received_at, at) for entry_id, received_at in entries],
            )

    def start(self) -> float | None:
        """Where the next run scans from."""
        with self._writing() as db:
            row = db.execute("SELECT value FROM digest_runs WHERE key = 'start'").fetchone()
        return float(row[0]) if row else None

    def held_as(self, key: str) -> str | None:
        """The id a message was held under with this key (None: not within HOLD_KEY_TTL)."""
        with self._writing() as db:  # a read, but it may be the file's first use
            row = db.execute(
                "SELECT id FROM holds WHERE key = ? AND at >= ?", (key, time.time() - HOLD_KEY_TTL)
            ).fetchone()
        return str(row[0]) if row else None

    def record_hold(self, key: str, entry_id: str) -> None:
        """Remember that the message with ``key`` is held as ``entry_id``; forget old keys."""
        now = time.time()
        with self._writing() as db:
            db.execute("DELETE FROM holds WHERE at < ?", (now - HOLD_KEY_TTL,))
            db.execute("INSERT OR REPLACE INTO holds VALUES (?, ?, ?)", (key, entry_id, now))

    def spent(self, batch: int = 1000) -> Iterator[tuple[bytes, float]]:
        """Every spent nonce with its link's expiry (what a migration copies)."""
        sql = "SELECT nonce, expires_at FROM spent_links {after} ORDER BY nonce LIMIT ?"
        for nonce, expires_at in self._every(sql, ("nonce",), batch):
            yield bytes(nonce), float(expires_at)

    def marks(self, batch: int = 1000) -> Iterator[tuple[str, str, float, float]]:
        """Every digest mark: (recipient, id, received_at, sent_at) (what a migration copies)."""
        sql = (
            "SELECT recipient, id, received_at, sent_at FROM digested {after}"
            " ORDER BY recipient, id LIMIT ?"
        )
        rows = self._every(sql, ("recipient", "id"), batch)
        for recipient, entry_id, received_at, sent_at in rows:
            yield str(recipient), str(entry_id), float(received_at), float(sent_at)

    def holds(self, batch: int = 1000) -> Iterator[tuple[str, str, float]]:
        """Every recorded hold: (key, id, at) (what a migration copies)."""
        sql = "SELECT key, id, at FROM holds {after} ORDER BY key LIMIT ?"
        for key, entry_id, at in self._every(sql, ("key",), batch):
            yield str(key), str(entry_id), float(at)

    def finish(self, next_start: float, forget_before: float) -> None:
        """Set the next run's start; drop marks of mail received before ``forget_before``."""
        with self._writing() as db:
            db.execute("INSERT OR REPLACE INTO digest_runs VALUES ('start', ?)", (next_start,))
            db.execute("DELETE FROM digested WHERE received_at < ?", (forget_before,))
