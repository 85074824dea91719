"""Moving a quarantine directory into PostgreSQL (``mail-filter quarantine migrate --to URL``).

This module owns the import: reading everything a :class:`filter.qdir.DirectoryStore`
keeps (the entries' files with their release records and requests, the allow
list, the ledger: spent link nonces, digest marks, where the next digest
starts, the keys that recognise a retried delivery) and the SQL that writes it
into a database at :data:`filter.qpg.SCHEMA_VERSION`, each entry with its own
id and its message byte for byte.

- Resumable and idempotent: entries go in one transaction per batch of
  :data:`BATCH`, each an ``INSERT ... ON CONFLICT (id) DO NOTHING``.  A run
  killed midway leaves whole batches behind; the next run finds those already
  there and goes on.  The other tables are keyed too (allow entries by
  recipient and sender, nonces, marks by recipient and id), so nothing is
  ever copied twice.
- Forward only: an entry already there is brought up to date, never back.  A
  release the directory recorded after the entry was copied is recorded in the
  database too (release once holds across the switch), a request added since
  is added; nothing in the database is removed or overwritten.
- Streamed: the directory is listed once (names only), metadata read a batch at
  a time, and one message at a time is in memory.
- The entries' files are only read, never locked, changed or deleted (the
  SQLite files are opened as the store opens them): the filter may go on holding
  mail there until the switch, and a run after the switch carries over what it
  held meanwhile.

Texts are made storable as :class:`filter.qpg.PostgresStore` makes what it adds
storable (NUL and lone surrogates become U+FFFD, the same ``_lc`` columns), so a
search finds a migrated entry as it finds one held there.  Every INSERT names
its columns: a nullable column a later schema version adds is left NULL.

One connection, with :func:`filter.qpg.conninfo`'s parameters (the store's
per-statement deadlines, TLS, the password outside the URL) and its schema
checked by :func:`filter.qpg.check_schema`.  Not the store's own calls: their
client-side deadline covers one call of one entry, where a batch is a hundred.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from filter.qdir import DirectoryStore, release_of

# _text and _lower: PostgresStore.add's own normalisation (private to qpg), shared
# rather than copied, so a migrated entry is stored and found exactly as one added.
from filter.qpg import StoreUnavailable, _lower, _text, check_schema
from filter.qstore import Skip, ignore
from filter.quarantine import Entry, NotFound, QuarantineError, Store, subject_of

# Entries per transaction: a kill loses at most this much work, and a batch's
# row locks and WAL stay small.
BATCH = 100
# Rows per INSERT of the small tables (allow, spent links, digest marks).
ROWS = 1000

# Errors that concern one entry (a value the database refuses, a statement over
# its deadline, a message over 1 GB): it fails alone, the run goes on.  Any other
# OperationalError (the connection lost, the server shut down) ends the run.
_ONE_ENTRY = (
    psycopg.errors.QueryCanceled,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.ProgramLimitExceeded,
)

# The entry, its recipients' rows and its requests in one statement (one round trip);
# nothing but the entry's id comes back, and only if it was not there.  The rows that
# reference it are checked at the end of the statement, when it exists.
_INSERT_ENTRY = (
    "WITH e AS (INSERT INTO entries (id, received_at, category, reason, mail_from, sender_lc,"
    " recipients, recipients_lc, subject, subject_lc, size, score, queue_id,"
    " released_at, release, message)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (id) DO NOTHING RETURNING id, received_at),"
    " r AS (INSERT INTO recipients (address, received_at, id)"
    " SELECT a, e.received_at, e.id FROM e, unnest(%s::text[]) AS a ON CONFLICT DO NOTHING),"
    " q AS (INSERT INTO requests (id, requested_at, requested_by, address, note)"
    " SELECT e.id, x.at, x.by, x.address, x.note FROM e,"
    " unnest(%s::float8[], %s::text[], %s::text[], %s::text[]) AS x(at, by, address, note))"
    " SELECT id FROM e"
)
# A request the database lacks: requests have no natural key, so "the same" is every field.
_ADD_REQUEST = (
    "INSERT INTO requests (id, requested_at, requested_by, address, note)"
    " SELECT %(id)s, %(at)s::float8, %(by)s, %(from)s, %(note)s WHERE NOT EXISTS"
    " (SELECT 1 FROM requests WHERE id = %(id)s AND requested_at = %(at)s::float8"
    " AND requested_by = %(by)s AND address = %(from)s AND note = %(note)s)"
)
_INSERT_ALLOW = (
    "INSERT INTO allow (recipient, sender, added_at, added_by)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[])"
    " ON CONFLICT (recipient, sender) DO NOTHING"
)
_INSERT_SPENT = (
    "INSERT INTO spent_links (nonce, expires_at)"
    " SELECT * FROM unnest(%s::bytea[], %s::float8[]) ON CONFLICT (nonce) DO NOTHING"
)
_INSERT_MARKS = (
    "INSERT INTO digested (recipient, id, received_at, sent_at)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[])"
    " ON CONFLICT (recipient, id) DO NOTHING"
)
# A retried delivery of a message held in the directory is recognised in the database
# too (PostgresStore.add's key): each entry copied gets the key the directory recorded
# for it, unless it has one, or another entry has that key (the retry was held there).
_SET_HOLD_KEYS = (
    "UPDATE entries e SET hold_key = h.key FROM unnest(%s::text[], %s::text[]) AS h(key, id)"
    " WHERE e.id = h.id AND e.hold_key IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM entries x WHERE x.hold_key = h.key)"
)
# The earlier start wins: a later digest run then also scans what the directory held
# but had not listed yet, and the marks keep it from listing anything twice.
_SET_START = (
    "INSERT INTO digest_runs (key, value) VALUES ('start', %s) ON CONFLICT (key)"
    " DO UPDATE SET value = least(digest_runs.value, excluded.value) RETURNING value"
)


@dataclass
class Tally:
    """Rows of one kind: copied by this run, or found already there."""

    copied: int = 0
    already: int = 0

    def __str__(self) -> str:
        return f"{self.copied} copied, {self.already} already there"


@dataclass
class Report:
    """What a run did, counted as each batch commits (right as far as it got, if it stops).

    ``skipped``: entries the directory store cannot trust (reported to ``on_skip``);
    ``failed``: entries the database refused (reported to ``on_fail``); ``updated``:
    entries already there whose release or requests were brought up to date.
    """

    listed: int = 0
    copied: int = 0
    already: int = 0
    skipped: int = 0
    failed: int = 0
    updated: int = 0
    allow: Tally = field(default_factory=Tally)
    spent_links: Tally = field(default_factory=Tally)
    digest_marks: Tally = field(default_factory=Tally)
    digest_start: float | None = None
    hold_keys: int = 0

    @property
    def done(self) -> int:
        """Entries dealt with so far, one way or another."""
        return self.copied + self.already + self.skipped + self.failed

    def summary(self) -> str:
        """``998 copied, 0 already there, 2 skipped, 0 failed``."""
        return (
            f"{self.copied} copied, {self.already} already there,"
            f" {self.skipped} skipped, {self.failed} failed"
        )

    def add(self, other: Report) -> None:
        """Count one committed batch in."""
        for name in ("copied", "already", "skipped", "failed", "updated"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def release_columns(entry: Entry) -> tuple[float, dict[str, object]] | None:
    """The entry's release as the database keeps it; None if it was never released.

    ``released_at`` (what the release-once guard checks: set, even for an old
    record without a time) and ``release``, the directory's first record as
    :func:`filter.qdir.release_of` reads it (texts made storable in jsonb).
    """
    if not entry.releases:
        return None
    first = entry.releases[0]
    return release_of(first).at, {_text(str(k)): _storable(v) for k, v in first.items()}


def _storable(value: object) -> object:
    """A JSON value with every text as PostgreSQL can hold it (no NUL, no lone surrogate)."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def request_rows(entry: Entry) -> list[tuple[str, float, str, str, str]]:
    """The entry's release requests as ``requests`` rows: (id, at, by, address, note)."""
    rows = []
    for request in entry.requests:
        at = request.get("at")
        number = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
        rows.append(
            (entry.id, number, _text(str(request.get("by", ""))),
             _text(str(request.get("from", ""))), _text(str(request.get("note", ""))))
        )  # fmt: skip
    return rows


def trusted(files: Store, names: Sequence[str], on_skip: Skip) -> list[Entry]:
    """The entries of ``names`` whose files can be trusted, as every command checks them
    (metadata and the message file's kind); the others go to ``on_skip``."""
    found = []
    for name in names:
        try:
            entry = files.get(name)
            files.check_message_file(entry.id)
        except NotFound:
            continue  # deleted since the directory was listed
        except QuarantineError as err:
            on_skip(err)
            continue
        found.append(entry)
    return found


def _reason(err: psycopg.Error) -> str:
    """The first line of a driver error (its messages carry no password)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


@contextmanager
def connect(params: dict[str, Any]) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A connection to the target with ``params`` (:func:`filter.qpg.conninfo`), its schema
    checked: SchemaMismatch if it is not this code's; StoreUnavailable if it cannot be
    reached or is lost; QuarantineError for any other database error escaping a run."""
    try:
        conn = psycopg.connect(**params, autocommit=True)
    except psycopg.Error as err:
        raise StoreUnavailable(f"quarantine database: {_reason(err)}") from err
    try:
        check_schema(conn)
        yield conn
    except psycopg.Error as err:
        if isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
            raise StoreUnavailable(f"quarantine database: {_reason(err)}") from err
        raise QuarantineError(f"quarantine database: {_reason(err)}") from err
    finally:
        conn.close()


def migrate(
    source: DirectoryStore,
    conn: psycopg.Connection[tuple[Any, ...]],
    *,
    batch: int = BATCH,
    on_skip: Skip = ignore,
    on_fail: Skip = ignore,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Copy what ``source`` holds into the database on ``conn``; what was done.

    Entries first, a committed transaction per ``batch``, then ``progress``;
    then allow entries, spent link nonces, digest marks, the digest's start and
    the entries' hold keys.  Entries that cannot be trusted go to ``on_skip``,
    those the database refuses to ``on_fail``, each once its batch committed;
    the run goes on.
    """
    report = Report()
    names = source.files.names()
    report.listed = len(names)
    batch = max(1, batch)
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        try:
            done = _entries(source.files, conn, chunk, careful=False)
        except _Again:  # an entry the database refused: again, each entry on its own
            done = _entries(source.files, conn, chunk, careful=True)
        report.add(done)
        for err in done.skips:
            on_skip(err)
        for err in done.fails:
            on_fail(err)
        if progress is not None:
            progress(report)
    if source.allow_list.path.exists():  # never created here: the source is only read
        rows = ((a.recipient, a.sender, a.added_at, a.added_by) for a in source.allow_list.every())
        clean = ((_text(r), _text(s), at, _text(by)) for r, s, at, by in rows)
        report.allow = _copy_rows(conn, _INSERT_ALLOW, clean)
    if source.ledger.path.exists():
        report.spent_links = _copy_rows(conn, _INSERT_SPENT, source.ledger.spent())
        marks = ((_text(r), _text(i), at, sent) for r, i, at, sent in source.ledger.marks())
        report.digest_marks = _copy_rows(conn, _INSERT_MARKS, marks)
        scan_from = source.ledger.start()
        if scan_from is not None:
            row = conn.execute(_SET_START, (scan_from,)).fetchone()
            report.digest_start = float(row[0]) if row else None
        holds = ((key, entry_id) for key, entry_id, _at in source.ledger.holds())
        report.hold_keys = _copy_rows(conn, _SET_HOLD_KEYS, holds).copied
    return report


class _Again(Exception):
    """The batch met an entry the database refuses: it was rolled back, to be done carefully."""


class _Different(QuarantineError):
    """The database holds another message under the entry's id (two hosts' ids collided)."""


@dataclass
class _Batch(Report):
    """One batch's counts, and what it skipped and failed (reported once it committed)."""

    skips: list[QuarantineError] = field(default_factory=list)
    fails: list[QuarantineError] = field(default_factory=list)


@contextmanager
def _alone(conn: psycopg.Connection[tuple[Any, ...]], careful: bool) -> Iterator[None]:
    """A savepoint when ``careful``: an entry the database refuses is undone alone."""
    if careful:
        with conn.transaction():
            yield
    else:
        yield


def _entries(
    files: Store, conn: psycopg.Connection[tuple[Any, ...]], names: Sequence[str], careful: bool
) -> _Batch:
    """One batch in one transaction.  Not ``careful``: no savepoints (a round trip each
    way per entry), and _Again at the first entry the database refuses."""
    done = _Batch()
    entries = trusted(files, names, done.skips.append)
    ids = [e.id for e in entries]
    with conn.transaction():
        # What is there already, read once for the batch: a rerun writes only what changed.
        there = {
            row[0]: (float(row[1]), bool(row[2]))
            for row in conn.execute(
                "SELECT id, received_at, released_at IS NOT NULL FROM entries WHERE id = ANY(%s)",
                (ids,),
            )
        }
        requests = {
            tuple(row)
            for row in conn.execute(
                "SELECT id, requested_at, requested_by, address, note FROM requests"
                " WHERE id = ANY(%s)",
                (ids,),
            )
        }
        for entry in entries:
            message: bytes | None = None
            if entry.id in there:
                received_at, released = there[entry.id]
                missing = [r for r in request_rows(entry) if r not in requests]
                current = received_at == entry.received_at and (released or not entry.releases)
                if current and not missing:  # a rerun's common case: nothing to write
                    done.already += 1
                    continue
            else:
                try:
                    message = files.message(entry.id)
                except NotFound:
                    done.skips.append(
                        QuarantineError(f"{entry.id}: its message file is missing; not copied")
                    )
                    continue
                except QuarantineError as err:
                    done.skips.append(err)
                    continue
                missing = request_rows(entry)
            try:
                with _alone(conn, careful):
                    copied = message is not None and _insert(conn, entry, message)
                    updated = not copied and _bring_up_to_date(conn, entry, missing)
            except _Different as err:
                done.fails.append(err)
                continue
            except psycopg.Error as err:
                if isinstance(err, psycopg.OperationalError | psycopg.InterfaceError) and (
                    not isinstance(err, _ONE_ENTRY)
                ):
                    raise
                if not careful:
                    raise _Again from err
                hint = ""
                if isinstance(err, psycopg.errors.QueryCanceled):
                    hint = " ([quarantine] timeout is too short for it: raise it for this run)"
                done.fails.append(QuarantineError(f"{entry.id}: not copied: {_reason(err)}{hint}"))
                continue
            done.copied += copied
            done.already += not copied
            done.updated += updated
    done.skipped, done.failed = len(done.skips), len(done.fails)
    return done


def _insert(conn: psycopg.Connection[tuple[Any, ...]], entry: Entry, message: bytes) -> bool:
    """Insert the entry with its message, recipients and requests; False if its id was
    there already (another run, at the same moment)."""
    subject = entry.subject or subject_of(message)
    release = release_columns(entry)
    requests = request_rows(entry)
    row = conn.execute(
        _INSERT_ENTRY,
        (
            entry.id, entry.received_at, _text(entry.category), _text(entry.reason),
            _text(entry.mail_from), _lower(entry.mail_from), [_text(r) for r in entry.recipients],
            "\n".join(_lower(r) for r in entry.recipients), _text(subject), _lower(subject),
            entry.size, entry.score, _text(entry.queue_id),
            release[0] if release else None, Jsonb(release[1]) if release else None, message,
            [_lower(r) for r in entry.recipients],
            [r[1] for r in requests], [r[2] for r in requests], [r[3] for r in requests],
            [r[4] for r in requests],
        ),
    ).fetchone()  # fmt: skip
    return row is not None


def _bring_up_to_date(
    conn: psycopg.Connection[tuple[Any, ...]],
    entry: Entry,
    requests: Sequence[tuple[str, float, str, str, str]],
) -> bool:
    """Record in the database the release and ``requests`` the directory has and it lacks
    (the row locked meanwhile); whether anything changed.  _Different if the row there
    is another message."""
    row = conn.execute(
        "SELECT received_at, released_at FROM entries WHERE id = %s FOR UPDATE", (entry.id,)
    ).fetchone()
    if row is None:
        raise _Different(f"{entry.id}: deleted from the database during the migration")
    if row[0] != entry.received_at:
        raise _Different(
            f"{entry.id}: not copied: the database holds another message with this id"
            f" (received at {row[0]!r}, here {entry.received_at!r})"
        )
    changed = False
    release = release_columns(entry)
    if release is not None and row[1] is None:
        conn.execute(
            "UPDATE entries SET released_at = %s, release = %s WHERE id = %s",
            (release[0], Jsonb(release[1]), entry.id),
        )
        changed = True
    for entry_id, at, by, address, note in requests:
        cur = conn.execute(
            _ADD_REQUEST, {"id": entry_id, "at": at, "by": by, "from": address, "note": note}
        )
        changed = changed or cur.rowcount == 1
    return changed


def _copy_rows(
    conn: psycopg.Connection[tuple[Any, ...]], sql: str, rows: Iterable[tuple[Any, ...]]
) -> Tally:
    """Run ``sql`` on ``rows`` (one array per column) :data:`ROWS` at a time; how many it
    wrote and how many it left (each statement commits on its own: the rows are keyed,
    a rerun finds them there)."""
    tally = Tally()
    it = iter(rows)
    while chunk := list(islice(it, ROWS)):
        columns = [list(column) for column in zip(*chunk, strict=True)]
        cur = conn.execute(sql, columns)
        tally.copied += cur.rowcount
        tally.already += len(chunk) - cur.rowcount
    return tally
