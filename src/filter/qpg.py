"""The quarantine in PostgreSQL, shared by every gateway host: a :class:`QuarantineStore`.

This module owns the database side of issue 18: the schema and its versions
(:data:`MIGRATIONS`, the ``schema_version`` table, :func:`upgrade` behind
``mail-filter db upgrade``), the check at open that refuses a schema this
code does not know, and :class:`PostgresStore`, the store interface on it.

Everything is in the database, the message too (a ``bytea`` column), so any
host can list, show, release and delete any held message:

- Release once is one statement: ``UPDATE entries ... WHERE id = $1 AND
  released_at IS NULL RETURNING ...``.  Of two releases at the same moment,
  from any hosts, the second waits on the first's row lock, re-reads the row
  (READ COMMITTED) and matches nothing: it is refused with the first's record.
  The claim, its confirmation and its abandonment carry a token, as the
  directory store's do (see :mod:`filter.qstore`).
- Expiry deletes in batches of rows it locks with ``SKIP LOCKED``: every
  host's timer may run it at once without waiting on, or doubling, another's work.
- Every call has a deadline: ``connect_timeout`` for the connection,
  ``statement_timeout`` and ``lock_timeout`` for each statement, and
  ``idle_in_transaction_session_timeout`` against a transaction left open;
  and, for a server that hangs (whose kernel still acknowledges, so none of
  those fire), a watchdog that shuts the socket down under a call that
  outlives twice the deadline plus a second.
  A database that cannot be reached or does not answer in time is
  :class:`StoreUnavailable`, which is also an ``OSError``: the filter's hold
  answers 451 for it, as for a disk that fails.

Text is stored as PostgreSQL can hold it: NUL and lone surrogates (undecodable
bytes of a header) become U+FFFD, in what is stored and in what is searched,
so such a sender or subject is found, but comes back with U+FFFD where the
directory store's file keeps the original.

The driver is psycopg 3's blocking API, like the interface (callers in asyncio
use ``asyncio.to_thread``); a few idle connections are kept for the next call.
The password never appears in a URL, a log line or an error (psycopg's
messages name the host and port only).
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from filter.qdir import release_of
from filter.qindex import Row, decode_cursor, encode_cursor
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
from filter.quarantine import Entry, NotFound, QuarantineError, check_id, subject_of

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
# Rows deleted per expiry transaction: short row locks, bounded WAL per commit.
EXPIRE_BATCH = 500
# A spent nonce is kept this long past its link's expiry (as filter.qindex.SPENT_GRACE).
SPENT_GRACE = 86400.0
# Idle connections kept per store: the portal's thread pool and the filter's
# to_thread calls reuse them; more are opened when needed and closed after.
MAX_IDLE = 8

# Seconds per bucket of held_counts (schema version 3): a quarter hour.
BUCKET = 900

# Schema versions: each entry takes the database from the version before it to
# its own.  Never edit a released one; add the next.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE entries (
    id text PRIMARY KEY,
    received_at double precision NOT NULL,
    category text NOT NULL,
    reason text NOT NULL,
    mail_from text NOT NULL,
    sender_lc text NOT NULL,
    recipients text[] NOT NULL,
    recipients_lc text NOT NULL,  -- lower-cased, one per line: the admin's substring search
    subject text NOT NULL,
    subject_lc text NOT NULL,
    size bigint NOT NULL,
    score double precision,
    queue_id text NOT NULL,
    released_at double precision,  -- NULL until claimed: the release-once guard
    release jsonb,                 -- the claim's record, as filter.qdir.release_of reads it
    message bytea NOT NULL
);
CREATE INDEX entries_by_time ON entries (received_at, id);
CREATE INDEX entries_by_category ON entries (category, received_at, id);
-- One row per envelope recipient, in page order: a user's own page is a range of it.
CREATE TABLE recipients (
    address text NOT NULL,
    received_at double precision NOT NULL,
    id text NOT NULL REFERENCES entries ON DELETE CASCADE,
    PRIMARY KEY (address, received_at, id)
);
CREATE INDEX recipients_by_id ON recipients (id);
CREATE TABLE requests (
    seq bigserial PRIMARY KEY,
    id text NOT NULL REFERENCES entries ON DELETE CASCADE,
    requested_at double precision NOT NULL,
    requested_by text NOT NULL,
    address text NOT NULL,
    note text NOT NULL
);
CREATE INDEX requests_by_id ON requests (id, requested_at);
CREATE TABLE allow (
    recipient text NOT NULL,
    sender text NOT NULL,
    added_at double precision NOT NULL,
    added_by text NOT NULL,
    PRIMARY KEY (recipient, sender)
);
CREATE TABLE spent_links (
    nonce bytea PRIMARY KEY,
    expires_at double precision NOT NULL
);
CREATE INDEX spent_links_by_expiry ON spent_links (expires_at);
CREATE TABLE digested (
    recipient text NOT NULL,
    id text NOT NULL,
    received_at double precision NOT NULL,
    sent_at double precision NOT NULL,
    PRIMARY KEY (recipient, id)
);
CREATE INDEX digested_by_time ON digested (received_at);
CREATE TABLE digest_runs (key text PRIMARY KEY, value double precision NOT NULL);
""",
    # What makes a retried delivery the same message (filter.quarantine.hold_key): a
    # retry after a lost 250 finds the entry instead of holding the message twice.
    2: """
ALTER TABLE entries ADD COLUMN hold_key text;
CREATE UNIQUE INDEX entries_by_hold_key ON entries (hold_key);
""",
    # Entries per quarter hour and category, kept by triggers, for the admin's chart:
    # counting a million rows per view cost 0.4 s (bench/qpg_bench.py).  Every UTC
    # offset in use is a multiple of 15 minutes, so each local day is whole buckets.
    # Shards (by backend) keep concurrent holds from queueing on one counter row.
    3: """
CREATE TABLE held_counts (
    bucket bigint NOT NULL,
    category text NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (bucket, category, shard)
);
CREATE FUNCTION held_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO held_counts VALUES
            (floor(NEW.received_at / 900)::bigint, NEW.category, pg_backend_pid() % 4, 1)
        ON CONFLICT (bucket, category, shard) DO UPDATE SET n = held_counts.n + 1;
    ELSE
        INSERT INTO held_counts VALUES
            (floor(OLD.received_at / 900)::bigint, OLD.category, pg_backend_pid() % 4, -1)
        ON CONFLICT (bucket, category, shard) DO UPDATE SET n = held_counts.n - 1;
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION held_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM held_counts;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_counted AFTER INSERT OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION held_counts_track();
CREATE TRIGGER entries_truncated AFTER TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION held_counts_clear();
INSERT INTO held_counts
    SELECT floor(received_at / 900)::bigint, category, 0, count(*) FROM entries GROUP BY 1, 2;
""",
}
SCHEMA_VERSION = max(MIGRATIONS)

# Taken (per transaction) by upgrade: two hosts upgrading at once run one after the other.
_UPGRADE_LOCK = 0x6D61696C  # "mail"

_ENTRY_COLUMNS = (
    "e.id, e.category, e.reason, e.mail_from, e.recipients, e.received_at, e.size, e.score,"
    " e.queue_id, e.release, e.subject,"
    " (SELECT coalesce(jsonb_agg(jsonb_build_object('at', q.requested_at, 'by', q.requested_by,"
    " 'from', q.address, 'note', q.note) ORDER BY q.requested_at, q.seq), '[]'::jsonb)"
    " FROM requests q WHERE q.id = e.id)"
)


class StoreUnavailable(QuarantineError, OSError):
    """The database cannot be reached, or did not answer within the deadline.

    An OSError too: the filter's hold answers 451 for it, so Postfix keeps the mail.
    """


class SchemaMismatch(StoreUnavailable):
    """The database has no quarantine schema, an older one, or one newer than this code knows."""


# NUL and lone surrogates: what a PostgreSQL text (UTF-8) cannot hold.
_UNSTORABLE = re.compile("[\0\ud800-\udfff]")


def _text(value: str) -> str:
    """``value`` as a PostgreSQL text can hold it: no NUL, no lone surrogate (U+FFFD instead)."""
    return _UNSTORABLE.sub("\ufffd", value)


def _lower(value: str) -> str:
    return _text(value).lower()


def _address(value: str) -> str:
    return _text(value.strip().lower())


def _entry(row: Sequence[Any]) -> Entry:
    (entry_id, category, reason, mail_from, recipients, received_at, size, score, queue_id,
     release, subject, requests) = row  # fmt: skip
    return Entry(
        id=entry_id, category=category, reason=reason, mail_from=mail_from,
        recipients=list(recipients), received_at=received_at, size=size, score=score,
        queue_id=queue_id, releases=[dict(release)] if release else [], subject=subject,
        requests=[dict(r) for r in requests],
    )  # fmt: skip


def _where(query: Query) -> tuple[list[str], list[object]]:
    """SQL conditions on ``entries e`` and their parameters for ``query`` (not its recipient)."""
    conditions: list[str] = []
    params: list[object] = []
    for column, value in (("category", query.category), ("id", query.id)):
        if value is not None:
            conditions.append(f"e.{column} = %s")
            params.append(_text(value))
    if query.since is not None:
        conditions.append("e.received_at >= %s")
        params.append(query.since)
    if query.until is not None:
        conditions.append("e.received_at < %s")
        params.append(query.until)
    # strpos() rather than LIKE: no wildcard escaping; lower() in Python, as stored.
    for column, needle in (
        ("sender_lc", query.sender),
        ("subject_lc", query.subject),
        ("recipients_lc", query.recipient_contains),
    ):
        if needle:
            conditions.append(f"strpos(e.{column}, %s) > 0")
            params.append(_lower(needle))
    return conditions, params


def conninfo(
    url: str, password: str | None, ca_file: Path | None, timeout: float
) -> dict[str, Any]:
    """Connection parameters: ``url`` plus the password, TLS and the deadlines.

    Kept apart from the URL so the password is never part of a string that
    could be logged.  With ``ca_file`` the server's certificate is checked
    against it and its name against the URL's host (``verify-full``).
    """
    ms = max(1, int(timeout * 1000))
    params: dict[str, Any] = {
        "conninfo": url,
        # libpq counts whole seconds, at least 2.
        "connect_timeout": max(2, math.ceil(timeout)),
        "options": (
            f"-c statement_timeout={ms} -c lock_timeout={ms}"
            f" -c idle_in_transaction_session_timeout={max(ms, 10000)}"
        ),
        "application_name": "mail-filter",
        # A host that vanishes (no RST) is noticed within the deadline, not after the
        # kernel's TCP retries (about 15 minutes).
        "tcp_user_timeout": ms,
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(timeout)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
    }
    if password is not None:
        params["password"] = password
    if ca_file is not None:
        params |= {"sslmode": "verify-full", "sslrootcert": str(ca_file)}
    return params


def _connect(params: dict[str, Any]) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(**params, autocommit=True)
    except psycopg.Error as err:
        raise StoreUnavailable(f"quarantine database: {_reason(err)}") from err


def _shut_down(conn: psycopg.Connection[tuple[Any, ...]], fired: threading.Event) -> None:
    """Shut the connection's socket down (from the watchdog's thread): the call blocked
    on it returns with an error; the connection is then closed and never reused."""
    fired.set()
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, psycopg.Error):
        pass  # closed meanwhile: the call finished
    log.warning("quarantine database did not answer within the deadline; connection dropped")


def _dropped(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
    """Whether the server ended an idle connection (a restart, idle_session_timeout).

    An idle connection has nothing to read unless the server said goodbye (an
    error message, then end of file): reusing it would fail the next call, a 451
    for a message to hold, after every database restart.  One poll, no round trip.
    """
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def _reason(err: psycopg.Error) -> str:
    """The first line of a driver error (its messages carry no password)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def schema_version(conn: psycopg.Connection[tuple[Any, ...]]) -> int | None:
    """The database's schema version (None: no quarantine schema in it)."""
    with conn.transaction():
        found = conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename = 'schema_version'"
        ).fetchone()
        if found is None:
            return None
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def check_schema(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    """SchemaMismatch unless the database's schema is exactly the one this code knows."""
    version = schema_version(conn)
    if version is None:
        raise SchemaMismatch(
            "quarantine database has no quarantine schema: run `mail-filter db upgrade`"
        )
    if version > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"quarantine database schema is version {version}, newer than this mail-filter"
            f" knows ({SCHEMA_VERSION}): upgrade mail-filter on this host; refusing to use it"
        )
    if version < SCHEMA_VERSION:
        raise SchemaMismatch(
            f"quarantine database schema is version {version}, this mail-filter needs"
            f" {SCHEMA_VERSION}: run `mail-filter db upgrade`"
        )


def upgrade(params: dict[str, Any]) -> tuple[int | None, int]:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`: (version before, version after).

    Each step commits with its version row, so an interrupted upgrade resumes
    where it stopped; running it again changes nothing.  A database newer than
    this code is refused (SchemaMismatch), never touched.
    """
    with _connect(params) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version integer PRIMARY KEY, upgraded_at timestamptz NOT NULL DEFAULT now())"
                )
            before = schema_version(conn)
            if before is not None and before > SCHEMA_VERSION:
                check_schema(conn)  # raises, naming both versions
            for version in sorted(MIGRATIONS):
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
                    current = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                    if current is not None and current[0] is not None and current[0] >= version:
                        continue  # applied before (or by another host meanwhile)
                    # A step may build an index over every row: no statement deadline.
                    # lock_timeout stays: rather fail than hold up every host's holds.
                    conn.execute("SET LOCAL statement_timeout = 0")
                    conn.execute(MIGRATIONS[version].encode())  # DDL only: no parameters
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                    log.info("quarantine database schema upgraded to version %d", version)
        except psycopg.Error as err:
            raise StoreUnavailable(f"quarantine database upgrade: {_reason(err)}") from err
    return before, SCHEMA_VERSION


def read_password(path: Path | None) -> str | None:
    """The password from ``password_file`` (its first line), or None without one."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise QuarantineError(
            f"{path}: cannot read the database password ({err.strerror})"
        ) from err
    lines = text.splitlines()
    return lines[0] if lines else ""


class PostgresStore:
    """Held mail, release records, allow entries and the digest's ledger in one database."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        ca_file: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._params = conninfo(url, password, ca_file, timeout)
        # A whole call (a few statements, each under statement_timeout) gets twice the
        # deadline and a second before the client gives up on a server that hangs.
        self._deadline = 2 * timeout + 1.0
        self._idle: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._finished = False

    # Connections

    def check(self) -> None:
        """Connect and check the schema now (at start), rather than at the first call."""
        with self._conn():
            pass

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A connection whose schema was checked; driver errors come out as ours."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None and _dropped(conn):
            conn.close()
            conn = None
        fresh = conn is None
        if conn is None:
            conn = _connect(self._params)
        # The server's timeouts need a server that runs: one that hangs (stopped, its host
        # gone without a reset) still has its kernel acknowledge our packets and
        # keepalives. Past the deadline the socket is shut down under the waiting call,
        # which then fails like a lost connection.
        fired = threading.Event()
        watchdog = threading.Timer(self._deadline, _shut_down, (conn, fired))
        watchdog.daemon = True
        watchdog.start()
        try:
            if fresh:
                check_schema(conn)
            yield conn
        except psycopg.Error as err:
            conn.close()  # its state is unknown: never reused
            if isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
                raise StoreUnavailable(f"quarantine database: {_reason(err)}") from err
            raise QuarantineError(f"quarantine database: {_reason(err)}") from err
        except BaseException:
            conn.close()
            raise
        finally:
            watchdog.cancel()
        # fired: the watchdog went off just as the call finished; its socket is shut.
        if fired.is_set() or conn.closed or conn.broken or conn.info.transaction_status != 0:
            conn.close()
            return
        with self._lock:
            if not self._finished and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; the store is not used afterwards."""
        with self._lock:
            self._finished = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # Holding mail

    def add(
        self, entry: Entry, message: bytes, more: Iterable[bytes] = (), *, key: str | None = None
    ) -> str:
        """Insert the entry, its recipients and its message in one committed transaction.

        When this returns the message is in the database (durable as its
        ``synchronous_commit`` says); a failure raises StoreUnavailable (an OSError).
        With ``key``, an entry held under it already (a retry, from any host) is
        found by its unique index and returned instead of a second one; entries
        keep their key until deleted, so a retry days later is still recognised.
        """
        check_id(entry.id)
        if not entry.subject:
            entry.subject = subject_of(message)
        data = b"".join((message, *more))
        recipients = [_text(r) for r in entry.recipients]
        try:
            with self._conn() as conn, conn.transaction():
                row = conn.execute(
                    "INSERT INTO entries (id, received_at, category, reason, mail_from, sender_lc,"
                    " recipients, recipients_lc, subject, subject_lc, size, score, queue_id,"
                    " released_at, release, message, hold_key)"
                    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (hold_key) DO NOTHING RETURNING id",
                    (
                        entry.id, entry.received_at, _text(entry.category), _text(entry.reason),
                        _text(entry.mail_from), _lower(entry.mail_from), recipients,
                        "\n".join(_lower(r) for r in entry.recipients), _text(entry.subject),
                        _lower(entry.subject), entry.size, entry.score, _text(entry.queue_id),
                        None, None, data, key,
                    ),
                ).fetchone()  # fmt: skip
                if row is None:  # held before under this key (committed: READ COMMITTED sees it)
                    earlier = conn.execute(
                        "SELECT id FROM entries WHERE hold_key = %s", (key,)
                    ).fetchone()
                    if earlier is not None:
                        return str(earlier[0])
                    raise StoreUnavailable(f"{entry.id}: held and deleted meanwhile; try again")
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO recipients VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        [(_lower(r), entry.received_at, entry.id) for r in entry.recipients],
                    )
        except StoreUnavailable:
            raise
        except QuarantineError as err:  # refused by the database (a duplicate id, bad data)
            raise StoreUnavailable(str(err)) from err
        return entry.id

    # Reading

    def get(self, entry_id: str) -> Entry:
        """An entry's metadata; NotFound if it is not held."""
        check_id(entry_id)
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries e WHERE e.id = %s",  # noqa: S608 - ours
                (entry_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"{entry_id}: no such quarantined message")
        return _entry(row)

    def message(self, entry_id: str) -> bytes:
        """An entry's message exactly as held."""
        check_id(entry_id)
        with self._conn() as conn:
            row = conn.execute("SELECT message FROM entries WHERE id = %s", (entry_id,)).fetchone()
        if row is None:
            raise NotFound(f"{entry_id}: no such quarantined message")
        return bytes(row[0])

    def search(
        self, query: Query, limit: int = 50, cursor: str | None = None, on_skip: Skip = ignore
    ) -> Page:
        """A page of entries in time order (newest first unless ``oldest_first``)."""
        limit = max(1, min(limit, MAX_LIMIT))
        after = decode_cursor(cursor) if cursor is not None else None
        order = "ASC" if query.oldest_first else "DESC"
        compare = ">" if query.oldest_first else "<"
        conditions, params = _where(query)
        if query.recipient is not None:
            # A user's own page: a range of their rows of ``recipients``, in its key's order.
            source, key = "recipients r JOIN entries e ON e.id = r.id", "r"
            conditions.insert(0, "r.address = %s")
            params.insert(0, _lower(query.recipient))
        else:
            source, key = "entries e", "e"
        if after is not None:
            conditions.append(f"({key}.received_at, {key}.id) {compare} (%s, %s)")
            params.extend(after)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        sql = (
            f"SELECT {_ENTRY_COLUMNS} FROM {source}{where}"  # noqa: S608 - fixed fragments
            f" ORDER BY {key}.received_at {order}, {key}.id {order} LIMIT %s"
        )
        params.append(limit)
        with self._conn() as conn:
            entries = [_entry(row) for row in conn.execute(sql.encode(), params)]
        last = entries[-1] if len(entries) == limit else None
        next_cursor = encode_cursor(Row(last.id, last.received_at, "")) if last else None
        return Page(entries, next_cursor)

    def count(self, query: Query, limit: int | None = None) -> int:
        """How many entries match ``query`` (at most ``limit``: the scan stops there)."""
        conditions, params = _where(query)
        source = "entries e"
        if query.recipient is not None and not conditions:
            # A user's whole count: their rows of ``recipients`` alone (an index-only scan);
            # the foreign key already says each has its entry.
            source, params = "recipients r WHERE r.address = %s", [_lower(query.recipient)]
        elif query.recipient is not None:
            source = "recipients r JOIN entries e ON e.id = r.id"
            conditions.insert(0, "r.address = %s")
            params.insert(0, _lower(query.recipient))
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        sql = f"SELECT 1 FROM {source}{where}"  # noqa: S608 - fixed fragments
        if limit is not None:
            sql += " LIMIT %s"
            params.append(max(0, limit))
        with self._conn() as conn:
            row = conn.execute(f"SELECT count(*) FROM ({sql}) t".encode(), params).fetchone()  # noqa: S608
        return int(row[0]) if row else 0

    def daily_counts(self, days: int, now: float | None = None) -> list[DayCount]:
        """Entries per local day and category, summed from the quarter-hour counters
        (``held_counts``); counted from the entries where a day is not whole buckets."""
        spans = day_spans(days, now)
        los, his = [s[1] for s in spans], [s[2] for s in spans]
        contiguous = all(a == b for a, b in zip(his, los[1:], strict=False))
        if contiguous and all(t % BUCKET == 0 for t in (*los, *his)):
            # One range scan of the counters; width_bucket names each bucket's day.
            edges = [int(t) // BUCKET for t in (*los, his[-1])]
            with self._conn() as conn:
                rows = conn.execute(
                    "SELECT width_bucket(bucket, %s::bigint[]), category, sum(n)::bigint"
                    " FROM held_counts WHERE bucket >= %s AND bucket < %s"
                    " GROUP BY 1, 2 HAVING sum(n) > 0 ORDER BY 1, 2",
                    (edges, edges[0], edges[-1]),
                    prepare=False,
                ).fetchall()
            return [DayCount(spans[i - 1][0], category, int(n)) for i, category, n in rows]
        sql = (
            "SELECT s.i, e.category, count(*) FROM unnest(%s::float8[], %s::float8[])"
            " WITH ORDINALITY AS s(lo, hi, i)"
            " JOIN entries e ON e.received_at >= s.lo AND e.received_at < s.hi"
            " GROUP BY s.i, e.category ORDER BY s.i, e.category"
        )
        with self._conn() as conn:
            # Never prepared: a generic plan guesses 10 rows for unnest() and scans the
            # table in parallel, 3x slower than the custom plan (bench/qpg_bench.py).
            rows = conn.execute(sql.encode(), (los, his), prepare=False).fetchall()
        return [DayCount(spans[i - 1][0], category, int(n)) for i, category, n in rows]

    # Release once

    def claim_release(
        self,
        entry_id: str,
        actor: Actor,
        to: Sequence[str] | None = None,
        *,
        retry_unconfirmed: bool = False,
    ) -> Claim:
        """One conditional UPDATE: it matches only an unreleased row (or an unconfirmed claim
        with ``retry_unconfirmed``), so of two claims at once exactly one gets the row."""
        check_id(entry_id)
        now = time.time()
        token = secrets.token_hex(8)
        record: dict[str, object] = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
            "at": now, "reply": "", "by": _text(actor.name), "from": _text(actor.address),
            "confirmed": False, "token": token,
        }  # fmt: skip
        guard = "e.released_at IS NULL"
        if retry_unconfirmed:
            guard = f"({guard} OR (e.release ->> 'confirmed') = 'false')"
        sql = (
            "UPDATE entries e SET released_at = %s, release = %s::jsonb"  # noqa: S608 - fixed
            " || jsonb_build_object('to',"
            " array_to_string(coalesce(%s::text[], e.recipients), ', '))"
            f" WHERE e.id = %s AND {guard} RETURNING {_ENTRY_COLUMNS}"
        )
        wanted = [_text(r) for r in to] if to else None
        with self._conn() as conn:
            row = conn.execute(sql.encode(), (now, Jsonb(record), wanted, entry_id)).fetchone()
            if row is None:
                found = conn.execute(
                    "SELECT release FROM entries WHERE id = %s", (entry_id,)
                ).fetchone()
        if row is None:
            if found is None:
                raise NotFound(f"{entry_id}: no such quarantined message")
            raise AlreadyReleased(entry_id, release_of(dict(found[0] or {})))
        entry = _entry(row)
        return Claim(entry, token, release_of(entry.releases[0]))

    def confirm_release(self, claim: Claim, delivered_to: Sequence[str], reply: str) -> Release:
        """Record what was delivered, final: only while the claim is still this one."""
        update = {"to": ", ".join(_text(r) for r in delivered_to), "reply": _text(reply),
                  "confirmed": True}  # fmt: skip
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE entries SET release = release || %s::jsonb"
                " WHERE id = %s AND release ->> 'token' = %s RETURNING release",
                (Jsonb(update), claim.entry.id, claim.token),
            ).fetchone()
        if row is None:
            raise QuarantineError(
                f"{claim.entry.id}: the release claim was taken over (or the entry deleted);"
                " delivered, but not confirmed"
            )
        return release_of(dict(row[0]))

    def abandon_release(self, claim: Claim) -> None:
        """Drop the claim (nothing was delivered): the entry may be released again."""
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE entries SET released_at = NULL, release = NULL"
                " WHERE id = %s AND release ->> 'token' = %s",
                (claim.entry.id, claim.token),
            )
        if cur.rowcount != 1:
            raise QuarantineError(f"{claim.entry.id}: the release claim was taken over")

    # Deleting

    def delete(self, entry_id: str) -> None:
        """Remove an entry; its recipients' rows and requests go with it (ON DELETE CASCADE)."""
        check_id(entry_id)
        with self._conn() as conn:
            cur = conn.execute("DELETE FROM entries WHERE id = %s", (entry_id,))
        if cur.rowcount != 1:
            raise NotFound(f"{entry_id}: no such quarantined message")

    def delete_many(self, entry_ids: Sequence[str], on_skip: Skip = ignore) -> int:
        """Delete each (one statement for all); bad or missing ids go to ``on_skip``."""
        wanted: list[str] = []
        for entry_id in entry_ids:
            try:
                wanted.append(check_id(entry_id))
            except QuarantineError as err:
                on_skip(err)
        if not wanted:
            return 0
        with self._conn() as conn:
            gone = {
                row[0]
                for row in conn.execute(
                    "DELETE FROM entries WHERE id = ANY(%s) RETURNING id", (wanted,)
                )
            }
        for entry_id in dict.fromkeys(wanted):
            if entry_id not in gone:
                on_skip(NotFound(f"{entry_id}: no such quarantined message"))
        return len(gone)

    def expire(self, max_age_days: float, now: float | None = None, on_skip: Skip = ignore) -> int:
        """Delete entries older than ``max_age_days`` in batches; rows another host is
        deleting right now are skipped (SKIP LOCKED), not waited for nor counted twice."""
        cutoff = (time.time() if now is None else now) - max_age_days * 86400
        total = 0
        while True:
            with self._conn() as conn:
                cur = conn.execute(
                    "DELETE FROM entries WHERE id IN (SELECT id FROM entries"
                    " WHERE received_at < %s ORDER BY received_at LIMIT %s"
                    " FOR UPDATE SKIP LOCKED)",
                    (cutoff, EXPIRE_BATCH),
                )
            total += cur.rowcount
            if cur.rowcount < EXPIRE_BATCH:
                return total

    def reconcile(self, on_skip: Skip = ignore) -> None:
        """Nothing to do: the database is both the truth and the index."""

    # Release requests

    def request_release(self, entry_id: str, actor: Actor, note: str = "") -> ReleaseRequest:
        """Record the request, unless the entry was released (the row locked meanwhile)."""
        check_id(entry_id)
        now = time.time()
        note = _text(note[:1000])
        with self._conn() as conn, conn.transaction():
            found = conn.execute(
                "SELECT release FROM entries WHERE id = %s FOR UPDATE", (entry_id,)
            ).fetchone()
            if found is None:
                raise NotFound(f"{entry_id}: no such quarantined message")
            if found[0]:
                raise AlreadyReleased(entry_id, release_of(dict(found[0])))
            conn.execute(
                "INSERT INTO requests (id, requested_at, requested_by, address, note)"
                " VALUES (%s, %s, %s, %s, %s)",
                (entry_id, now, _text(actor.name), _text(actor.address), note),
            )
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries e WHERE e.id = %s",  # noqa: S608 - ours
                (entry_id,),
            ).fetchone()
        assert row is not None  # locked above: it cannot have gone
        return ReleaseRequest(_entry(row), now, _text(actor.name), _text(actor.address), note)

    def release_requests(self, limit: int = 100) -> list[ReleaseRequest]:
        """Open requests (one per entry: its latest), newest first."""
        sql = (
            f"SELECT {_ENTRY_COLUMNS}, l.requested_at, l.requested_by, l.address, l.note"  # noqa: S608
            " FROM entries e JOIN LATERAL (SELECT * FROM requests q WHERE q.id = e.id"
            " ORDER BY q.requested_at DESC, q.seq DESC LIMIT 1) l ON true"
            " WHERE e.released_at IS NULL ORDER BY l.requested_at DESC LIMIT %s"
        )
        with self._conn() as conn:
            rows = conn.execute(sql.encode(), (limit,)).fetchall()
        return [ReleaseRequest(_entry(row[:12]), *row[12:]) for row in rows]

    # Allow entries

    def allow(self, recipient: str, sender: str, actor: Actor) -> AllowEntry:
        """Add (or refresh) an allow entry."""
        entry = AllowEntry(_address(recipient), _address(sender), time.time(), _text(actor.name))
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO allow VALUES (%s, %s, %s, %s) ON CONFLICT (recipient, sender)"
                " DO UPDATE SET added_at = excluded.added_at, added_by = excluded.added_by",
                (entry.recipient, entry.sender, entry.added_at, entry.added_by),
            )
        return entry

    def disallow(self, recipient: str, sender: str) -> bool:
        """Remove an allow entry; False if there was none."""
        with self._conn() as conn:
            cur = conn.execute(
                "DELETE FROM allow WHERE recipient = %s AND sender = %s",
                (_address(recipient), _address(sender)),
            )
        return cur.rowcount > 0

    def allowed_senders(self, recipient: str) -> list[AllowEntry]:
        """A recipient's allow entries, by sender."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT recipient, sender, added_at, added_by FROM allow"
                " WHERE recipient = %s ORDER BY sender",
                (_address(recipient),),
            ).fetchall()
        return [AllowEntry(*row) for row in rows]

    def is_allowed(self, recipient: str, senders: Sequence[str]) -> bool:
        """Whether ``recipient`` allowed any of ``senders`` (primary-key lookups)."""
        wanted = [_address(s) for s in senders if s]
        if not wanted:
            return False
        with self._conn() as conn:
            row = conn.execute(
                "SELECT 1 FROM allow WHERE recipient = %s AND sender = ANY(%s) LIMIT 1",
                (_address(recipient), wanted),
            ).fetchone()
        return row is not None

    def allowed_among(self, recipients: Sequence[str], senders: Sequence[str]) -> set[str]:
        """One statement for every recipient of a message (primary-key lookups)."""
        wanted = [_address(s) for s in senders if s]
        if not wanted or not recipients:
            return set()
        keys = sorted({_address(r) for r in recipients})
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT DISTINCT recipient FROM allow WHERE recipient = ANY(%s)"
                " AND sender = ANY(%s)",
                (keys, wanted),
            ).fetchall()
        found = {str(row[0]) for row in rows}
        return {r for r in recipients if _address(r) in found}

    def allow_pairs(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (recipient, sender) pairs, in primary-key order."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT recipient, sender FROM allow ORDER BY recipient, sender LIMIT %s",
                (max(0, limit),),
            ).fetchall()
        return [(str(r), str(s)) for r, s in rows]

    # Release links and the digest

    def spend_link(self, nonce: bytes, expires_at: float, now: float | None = None) -> bool:
        """Insert the nonce unless present (its primary key decides between two hosts)."""
        now = time.time() if now is None else now
        with self._conn() as conn, conn.transaction():
            conn.execute("DELETE FROM spent_links WHERE expires_at < %s", (now - SPENT_GRACE,))
            cur = conn.execute(
                "INSERT INTO spent_links VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (nonce, expires_at),
            )
            return cur.rowcount == 1

    def unspend_link(self, nonce: bytes) -> None:
        """Forget a nonce: its link may be used again."""
        with self._conn() as conn:
            conn.execute("DELETE FROM spent_links WHERE nonce = %s", (nonce,))

    def digest_marks(self, recipient: str, entry_ids: Sequence[str]) -> set[str]:
        """Which of ``entry_ids`` a digest to ``recipient`` listed already."""
        if not entry_ids:
            return set()
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id FROM digested WHERE recipient = %s AND id = ANY(%s)",
                (_address(recipient), [_text(i) for i in entry_ids]),
            ).fetchall()
        return {row[0] for row in rows}

    def mark_digested(
        self, recipient: str, entries: Sequence[tuple[str, float]], at: float
    ) -> None:
        """Record what a digest to ``recipient`` listed."""
        rcpt = _address(recipient)
        with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO digested VALUES (%s, %s, %s, %s) ON CONFLICT (recipient, id)"
                " DO UPDATE SET received_at = excluded.received_at, sent_at = excluded.sent_at",
                [(rcpt, _text(entry_id), received_at, at) for entry_id, received_at in entries],
            )

    def digest_start(self) -> float | None:
        """Where the next digest run scans from (None before the first run)."""
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM digest_runs WHERE key = 'start'").fetchone()
        return float(row[0]) if row else None

    def finish_digest(self, next_start: float, forget_before: float) -> None:
        """Record the next run's start; forget marks of mail received before ``forget_before``."""
        with self._conn() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO digest_runs VALUES ('start', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (next_start,),
            )
            conn.execute("DELETE FROM digested WHERE received_at < %s", (forget_before,))
