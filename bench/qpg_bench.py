"""The quarantine in PostgreSQL against the directory store (issue 18 §6).

This module owns one benchmark in two sections, run against a throw-away
PostgreSQL 15 (:class:`devstack.postgres.Postgres`) started here with ``fsync``
and ``full_page_writes`` on (devstack's default turns them off, to make tests
fast) and the server's defaults otherwise: ``synchronous_commit`` on, so an
``add`` returns only once its commit is flushed to disk, as in production.

1. Holding mail.  ``--messages`` held messages of 20-50 KB (a spam-shaped
   message: a relay chain, DKIM, the filter's headers, text and HTML parts
   with the GTUBE line, an image), each a new entry with one to three
   recipients, added at ``--concurrency`` the way the filter adds them:
   ``asyncio.to_thread(store.add, ...)`` from that many tasks, on a thread pool
   of that size.  First into a :class:`filter.qdir.DirectoryStore` (files
   fsynced, then the SQLite index) in a directory on the same disk as the
   server's data, then into :class:`filter.qpg.PostgresStore` over TCP on
   127.0.0.1 with a password, as a gateway host reaches its database; in
   interleaved rounds.  Printed: messages per second, p50/p99 of one ``add``,
   the ratio PostgreSQL / directory against the target (at least 0.5), and the
   connections the store opened (it keeps at most ``qpg.MAX_IDLE`` idle).
2. Listing with ``--entries`` held messages (default 1,000,000).  A second
   database filled in SQL (``generate_series``): 30 days of entries, one to
   three recipients each drawn Zipf-like from ``--users`` addresses (so a few
   users have tens of thousands), 80 % spam, 1 % released, a few release
   requests; small messages; then ``VACUUM (ANALYZE)``, as autovacuum would
   have done on a server that filled over a month.  Then, through the store,
   each call a portal page makes (its list pages are a ``search`` and a
   ``count``; the chart is ``daily_counts``), timed ``--repeat`` times, and
   the portal's pages themselves (in-process, :func:`bench.quarantine_bench.portal_pages`).
   Printed: p50/p99/max in milliseconds against the target (under 100 ms).
   Calls whose p99 misses are run again with ``auto_explain`` on, on one
   connection past its warm-up (psycopg prepares, PostgreSQL may switch to a
   generic plan), and the plans of their statements are printed from the server's log.

It asserts nothing.  Run: ``.venv/bin/python -m bench.qpg_bench [--messages N]
[--entries N] [--concurrency N] [--rounds N] [--repeat N] [--users N] [--quick] [--keep]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import secrets
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.common import ratio, run_main, say, work_root
from bench.quarantine_bench import portal_pages, timed
from devstack.postgres import Postgres
from filter import qpg
from filter.portal.web import COUNT_CAP
from filter.qdir import DirectoryStore
from filter.qindex import Row, encode_cursor
from filter.qpg import PostgresStore
from filter.qstore import QuarantineStore, Query
from filter.quarantine import Entry, new_id

TARGET_RATIO = 0.5  # PostgreSQL's adds per second against the directory store's
TARGET_MS = 100.0  # a list query with 1,000,000 held messages
DAYS = 30
PAGE = 50  # the portal's page_size
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CATEGORIES = ["spam"] * 16 + ["virus", "banned", "bad_header", "unchecked"]
WORDS = [
    "invoice", "offer", "meeting", "report", "winner", "parcel", "account", "urgent", "free",
    "prize", "claim", "verify", "password", "bank", "delivery", "update", "limited",
    "exclusive", "discount", "order", "payment",
]  # fmt: skip


# -- section 1: holding mail --------------------------------------------------------------


def held_message(rng: random.Random, mail_from: str, rcpts: Sequence[str], subject: str) -> bytes:
    """A held spam message of 20-50 KB, as the filter stores it (its own headers added)."""
    size = rng.randrange(20_000, 50_001)
    relay = f"mx{rng.randrange(99)}.shop{rng.randrange(300)}.example"
    boundary = f"=_{secrets.token_hex(12)}"
    head = [
        f"Return-Path: <{mail_from}>",
        *(
            f"Received: from {relay} ([198.51.100.{rng.randrange(1, 255)}])\r\n"
            f"\tby gw{hop}.example.com (Postfix) with ESMTPS id {secrets.token_hex(5).upper()}\r\n"
            f"\tfor <{rcpts[0]}>; Fri, 4 Dec 2026 10:{hop:02d}:00 +0100 (CET)"
            for hop in range(4)
        ),
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.example; s=s1;\r\n"
        "\th=from:to:subject:date:message-id; bh="
        + base64.b64encode(rng.randbytes(32)).decode()
        + ";\r\n\tb="
        + "\r\n\t".join(base64.b64encode(rng.randbytes(192)).decode()[i : i + 70]
                        for i in range(0, 256, 70)),
        "Authentication-Results: gw0.example.com; dkim=fail reason=\"signature verification"
        " failed\"; spf=softfail smtp.mailfrom=" + mail_from,
        f"From: \"Customer Service\" <{mail_from}>",
        "To: " + ", ".join(rcpts),
        f"Subject: {subject}",
        "Date: Fri, 4 Dec 2026 10:00:00 +0100",
        f"Message-ID: <{secrets.token_hex(16)}@{relay}>",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/mixed; boundary=\"{boundary}\"",
        "X-Spam-Flag: YES",
        f"X-Spam-Score: {rng.uniform(5, 1000):.1f}",
        "X-Spam-Status: Yes, score=1000.0 required=5.0 tests=GTUBE,HTML_MESSAGE,\r\n"
        "\tDKIM_INVALID,SPF_SOFTFAIL autolearn=no",
        f"X-Mailgate-Quarantine: {secrets.token_hex(5)}",
    ]  # fmt: skip
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(300, 600)))
    lines = [words[i : i + 72] for i in range(0, len(words), 72)]
    text = "\r\n".join([*lines, "", GTUBE, ""])
    html = "<html><body><p>" + "</p>\r\n<p>".join(lines) + f"</p><p>{GTUBE}</p></body></html>"
    parts = [
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}",
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}",
    ]
    so_far = sum(map(len, head)) + sum(map(len, parts)) + 200
    image = base64.encodebytes(rng.randbytes(max(0, size - so_far) * 3 // 4)).decode()
    parts.append(
        f'--{boundary}\r\nContent-Type: image/png; name="offer.png"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{image.replace(chr(10), chr(13) + chr(10))}"
    )
    body = "\r\n".join(parts) + f"\r\n--{boundary}--\r\n"
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


@dataclass
class Held:
    """One message to hold: what the filter knows of it, and its bytes."""

    mail_from: str
    recipients: list[str]
    subject: str
    category: str
    score: float
    data: bytes

    def entry(self) -> Entry:
        """A new entry for it, as the filter's ``_quarantine`` builds one (a fresh id)."""
        return Entry(
            id=new_id(), category=self.category, reason="bench", mail_from=self.mail_from,
            recipients=list(self.recipients), received_at=time.time(), size=len(self.data),
            score=self.score, queue_id=secrets.token_hex(5).upper(), subject=self.subject,
        )  # fmt: skip


def messages(count: int, seed: int = 18) -> list[Held]:
    """``count`` different messages to hold, made before anything is timed."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        mail_from = f"sender{rng.randrange(5000)}@shop{rng.randrange(300)}.example"
        rcpts = sorted({f"user{rng.randrange(200)}@example.com"
                        for _ in range(rng.choice((1, 1, 2, 3)))})  # fmt: skip
        subject = f"{rng.choice(WORDS)} {rng.choice(WORDS)} #{n}"
        made.append(Held(
            mail_from, rcpts, subject, rng.choice(CATEGORIES), rng.uniform(5, 30),
            held_message(rng, mail_from, rcpts, subject),
        ))  # fmt: skip
    return made


@dataclass
class Adds:
    """What one round of adds into one store measured."""

    store: str
    count: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    connects: int = 0

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def add_all(store: QuarantineStore, held: Sequence[Held], concurrency: int, name: str) -> Adds:
    """Hold every message, ``concurrency`` at a time, as the filter does (to_thread)."""
    latencies: list[float] = []

    async def hold_all() -> float:
        # The filter's to_thread runs on the loop's default pool: min(32, CPUs + 4) threads,
        # 6 on a 2-core host; sized here so ``concurrency`` adds really run at once.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(concurrency))
        pending = iter(held)

        async def worker() -> None:
            for message in pending:
                entry = message.entry()
                began = time.perf_counter()
                await asyncio.to_thread(store.add, entry, message.data)
                latencies.append((time.perf_counter() - began) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - began

    seconds = asyncio.run(hold_all())
    return Adds(name, len(held), seconds, latencies)


class Connects:
    """Counts the connections every PostgresStore opens, while installed (a bench's probe).

    The store keeps at most ``qpg.MAX_IDLE`` idle connections: at a higher
    concurrency it opens (TCP, SCRAM, the schema check) and closes others.
    """

    def __init__(self) -> None:
        self.count = 0
        self._real = qpg._connect

    def _connect(self, params: dict[str, Any]) -> psycopg.Connection[tuple[Any, ...]]:
        self.count += 1  # under the GIL; an increment lost in a race is a rounding error
        return self._real(params)

    def __enter__(self) -> Connects:
        qpg._connect = self._connect
        return self

    def __exit__(self, *exc: object) -> None:
        qpg._connect = self._real


def _adds_row(
    store: str, label: str, per_second: float, lat: Sequence[float], connects: int
) -> None:
    p50, p99, top = statistics.median(lat), _percentile(lat, 0.99), max(lat)
    opened = str(connects) if store == "postgresql" else "-"
    print(
        f"| {store} | {label} | {per_second:.0f} | {p50:.1f} | {p99:.1f} | {top:.1f} | {opened} |"
    )


def holding(args: argparse.Namespace, root: Path, server: Postgres) -> None:
    """Section 1: messages per second into each store, in interleaved rounds."""
    say(f"making {args.messages} messages of 20-50 KB")
    held = messages(args.messages * args.rounds + 2 * args.concurrency)
    warm, held = held[: 2 * args.concurrency], held[2 * args.concurrency :]
    server.create_database("qpg_add")
    params = _params(server, "qpg_add", 60.0)
    qpg.upgrade(params)
    directory = root / "quarantine"
    stores: dict[str, QuarantineStore] = {
        "directory": DirectoryStore(directory),
        "postgresql": PostgresStore(
            server.url_for("qpg_add"), password=server.password, timeout=5.0
        ),
    }
    results: list[Adds] = []
    try:
        with Connects() as connects:
            for name, store in stores.items():
                add_all(store, warm, args.concurrency, name)  # first files, connections
            for n in range(args.rounds):
                chunk = held[n * args.messages : (n + 1) * args.messages]
                for name, store in stores.items():
                    say(f"round {n + 1}: {len(chunk)} adds into the {name} store")
                    before = connects.count
                    results.append(add_all(store, chunk, args.concurrency, name))
                    results[-1].connects = connects.count - before
        with psycopg.connect(**params, autocommit=True) as admin:
            stored = admin.execute("SELECT count(*), sum(octet_length(message)) FROM entries")
            rows, volume = stored.fetchone() or (0, 0)
        dir_count = stores["directory"].count(Query())
    finally:
        for store in stores.values():
            store.close()
    expected = len(warm) + args.messages * args.rounds
    mean_kb = sum(len(h.data) for h in held) / len(held) / 1000
    print(f"\n## Holding mail: {args.messages} messages per round, {args.rounds} rounds, "
          f"concurrency {args.concurrency}, mean {mean_kb:.1f} KB\n")  # fmt: skip
    print(f"Held afterwards: directory {dir_count}, postgresql {rows} of {expected} "
          f"({int(volume or 0) / 1e6:.0f} MB of messages). Connections: those the "
          f"postgresql store opened (it keeps {qpg.MAX_IDLE} idle).\n")  # fmt: skip
    print("| store | round | msgs/s | p50 ms | p99 ms | max ms | connections |")
    print("|---|---|---|---|---|---|---|")
    for n, r in enumerate(results):
        _adds_row(r.store, str(n // len(stores) + 1), r.per_second, r.latencies_ms, r.connects)
    summary: dict[str, float] = {}
    for name in stores:
        mine = [r for r in results if r.store == name]
        summary[name] = statistics.median(r.per_second for r in mine)
        lat = [ms for r in mine for ms in r.latencies_ms]
        _adds_row(name, "all (median msgs/s)", summary[name], lat, sum(r.connects for r in mine))
    share = ratio(summary["postgresql"], summary["directory"])
    verdict = "PASS" if share >= TARGET_RATIO else "MISS"
    print(f"\npostgresql / directory: {share:.2f}x (target >= {TARGET_RATIO}x): {verdict}")


# -- section 2: listing -------------------------------------------------------------------

# 30 days of entries in one statement.  Recipients: users ^ random() is log-uniform over
# 1..users, i.e. Zipf with s = 1 (user1 gets about 7 % of all mail, user100 0.07 %).
# Inserted in time order, as mail arrives: the table's pages then hold one day's mail
# each, as on a real server (in random order every day's rows are spread over every page).
FILL = """
INSERT INTO entries (id, received_at, category, reason, mail_from, sender_lc, recipients,
    recipients_lc, subject, subject_lc, size, score, queue_id, released_at, release, message)
SELECT
    to_char(to_timestamp(s.at) AT TIME ZONE 'UTC', 'YYYYMMDD-HH24MISS') || '-'
        || lpad(to_hex(s.g), 10, '0'),
    s.at, s.category, 'bench', s.sender, s.sender, r.rcpts, array_to_string(r.rcpts, E'\\n'),
    s.subject, s.subject, s.size,
    CASE WHEN s.category = 'spam' THEN 5 + random() * 25 END,
    upper(lpad(to_hex(s.g), 10, '0')),
    CASE WHEN s.released THEN s.at + 3600 END,
    CASE WHEN s.released THEN jsonb_build_object(
        'when', to_char(to_timestamp(s.at + 3600), 'YYYY-MM-DD HH24:MI:SS'), 'at', s.at + 3600,
        'reply', '250 2.0.0 Ok: queued as 4ABCDEF', 'by', 'admin@example.com',
        'from', '203.0.113.5', 'confirmed', true, 'token', '0123456789abcdef',
        'to', array_to_string(r.rcpts, ', ')) END,
    convert_to('Subject: ' || s.subject || E'\\r\\nFrom: <' || s.sender
        || E'>\\r\\n\\r\\nbody\\r\\n', 'UTF8')
FROM (
    SELECT g, %(now)s - random() * %(span)s AS at,
        (%(categories)s::text[])[1 + floor(random() * %(ncat)s)::int] AS category,
        'sender' || floor(random() * 5000)::int || '@shop' || floor(random() * 300)::int
            || '.example' AS sender,
        (%(words)s::text[])[1 + floor(random() * %(nwords)s)::int] || ' '
            || (%(words)s::text[])[1 + floor(random() * %(nwords)s)::int] || ' #' || g
            AS subject,
        2000 + floor(random() * 48000)::int AS size,
        random() < 0.01 AS released,
        random() AS u
    FROM generate_series(1, %(entries)s) g
) s
CROSS JOIN LATERAL (
    SELECT array_agg(DISTINCT 'user' || floor(%(users)s ^ random())::int || '@example.com')
        AS rcpts
    FROM generate_series(1, CASE WHEN s.u < 0.8 THEN 1 WHEN s.u < 0.95 THEN 2 ELSE 3 END)
) r
ORDER BY s.at
"""
FILL_RECIPIENTS = """
INSERT INTO recipients (address, received_at, id)
SELECT lower(a), e.received_at, e.id FROM entries e, unnest(e.recipients) a
"""
FILL_REQUESTS = """
INSERT INTO requests (id, requested_at, requested_by, address, note)
SELECT id, received_at + 600, recipients[1], '203.0.113.7', 'I know this sender'
FROM entries WHERE released_at IS NULL AND random() < 0.002
"""


def _params(server: Postgres, database: str, timeout: float) -> dict[str, Any]:
    return qpg.conninfo(server.url_for(database), server.password, None, timeout)


def fill(params: dict[str, Any], entries: int, users: int, now: float) -> None:
    """``entries`` entries over the last 30 days, their recipients' rows and a few requests."""
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        with conn.transaction():
            conn.execute("SELECT setseed(0.18)")
            conn.execute(FILL, {
                "now": now, "span": DAYS * 86400.0, "entries": entries, "users": users,
                "categories": CATEGORIES, "ncat": len(CATEGORIES),
                "words": WORDS, "nwords": len(WORDS),
            })  # fmt: skip
            say(f"  {entries} entries; their recipients")
            conn.execute(FILL_RECIPIENTS)
            conn.execute(FILL_REQUESTS)
        say("  VACUUM (ANALYZE)")
        conn.execute("VACUUM (ANALYZE) entries, recipients, requests")


def _one(conn: psycopg.Connection[tuple[Any, ...]], sql: str, *params: object) -> Any:
    row = conn.execute(sql.encode(), params).fetchone()
    assert row is not None, sql
    return row[0] if len(row) == 1 else row


def listing(args: argparse.Namespace, server: Postgres) -> None:
    """Section 2: fill, time each call a portal page makes, explain those that miss."""
    server.create_database("qpg_list")
    params = _params(server, "qpg_list", 3600.0)
    qpg.upgrade(params)
    now = time.time()
    say(f"filling {args.entries} entries for {args.users} addresses")
    began = time.monotonic()
    fill(params, args.entries, args.users, now)
    fill_seconds = time.monotonic() - began
    with psycopg.connect(**params, autocommit=True) as conn:
        addresses = _one(conn, "SELECT count(DISTINCT address) FROM recipients")
        ranked = conn.execute(
            "SELECT address, count(*) FROM recipients GROUP BY address ORDER BY 2 DESC, 1"
        ).fetchall()
        heavy, heavy_n = ranked[0]
        typical, typical_n = ranked[min(99, len(ranked) - 1)]
        median_n = ranked[len(ranked) // 2][1]
        back = _one(
            conn,
            "SELECT received_at, id FROM recipients WHERE address = %s AND received_at < %s"
            " ORDER BY received_at DESC, id DESC LIMIT 1",
            heavy, now - DAYS * 86400 / 2,
        )  # fmt: skip
        sizes = _one(
            conn,
            "SELECT pg_total_relation_size('entries'), pg_total_relation_size('recipients')",
        )
    store = PostgresStore(server.url_for("qpg_list"), password=server.password, timeout=5.0)
    mid_cursor = encode_cursor(Row(back[1], back[0], ""))

    def make_calls(on: PostgresStore) -> list[tuple[str, Callable[[], object]]]:
        return _calls(on, heavy, typical, mid_cursor)

    calls = make_calls(store)
    try:
        rows = [timed(name, args.repeat, call) for name, call in calls]
        rows += portal_pages(store, heavy, args.repeat)
    finally:
        store.close()
    print(f"\n## Listing: {args.entries} entries over {DAYS} days, {addresses} addresses\n")
    print(f"Filled in SQL in {fill_seconds:.0f} s (then VACUUM ANALYZE); entries "
          f"{sizes[0] / 1e6:.0f} MB, recipients {sizes[1] / 1e6:.0f} MB with indexes. "
          f"The heavy user {heavy} has {heavy_n} entries, the 100th {typical} {typical_n}, "
          f"the median address {median_n}.\n")  # fmt: skip
    print(f"| call ({args.repeat} runs) | p50 ms | p99 ms | max ms | under {TARGET_MS:.0f} ms |")
    print("|---|---|---|---|---|")
    for name, p50, p99, top in rows:
        verdict = "PASS" if p99 < TARGET_MS else "MISS"
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {top:.1f} | {verdict} |")
    missed = [row[0] for row in rows[: len(calls)] if row[2] >= TARGET_MS or args.explain]
    if missed:
        explain(server, "qpg_list", missed, make_calls)


def _calls(
    store: PostgresStore, heavy: str, typical: str, mid_cursor: str
) -> list[tuple[str, Callable[[], object]]]:
    """The store calls behind the portal's pages, named as printed."""
    mine, theirs = Query(recipient=heavy), Query(recipient=typical)
    virus, spam = Query(category="virus"), Query(category="spam")

    def fifth_page() -> None:
        cursor = None
        for _ in range(5):
            cursor = store.search(mine, PAGE, cursor).next_cursor

    cap = COUNT_CAP + 1  # as the portal counts a list (then says "more than 10,000")
    return [
        ("heavy user: first page (search)", lambda: store.search(mine, PAGE)),
        ("heavy user: whole count (uncapped)", lambda: store.count(mine)),
        ("heavy user: list page (search + capped count)",
         lambda: (store.search(mine, PAGE), store.count(mine, cap))),
        ("heavy user: 5th page (5 pages through cursors)", fifth_page),
        ("heavy user: a page 15 days back (one cursor)",
         lambda: store.search(mine, PAGE, mid_cursor)),
        ("100th user: list page (search + capped count)",
         lambda: (store.search(theirs, PAGE), store.count(theirs, cap))),
        ("admin: first page (search)", lambda: store.search(Query(), PAGE)),
        ("admin: total (uncapped count)", lambda: store.count(Query())),
        ("admin: list page (search + capped count)",
         lambda: (store.search(Query(), PAGE), store.count(Query(), cap))),
        ("admin: category virus (search + capped count)",
         lambda: (store.search(virus, PAGE), store.count(virus, cap))),
        ("admin: category spam (search + capped count)",
         lambda: (store.search(spam, PAGE), store.count(spam, cap))),
        (f"chart: daily_counts({DAYS})", lambda: store.daily_counts(DAYS)),
    ]  # fmt: skip


# psycopg prepares a statement at its 5th run on a connection; PostgreSQL plans a prepared
# statement afresh for its first 5 runs, then may keep a generic plan.  Past both, the plan
# is the one a portal's long-lived connection uses, and the one the timed runs measured.
WARM_RUNS = 12


def explain(
    server: Postgres,
    database: str,
    names: Sequence[str],
    make_calls: Callable[[PostgresStore], list[tuple[str, Callable[[], object]]]],
) -> None:
    """Print the plans of the named calls' statements, as a warm connection runs them.

    Each call runs :data:`WARM_RUNS` times on one store's connection, then once
    more; auto_explain logs every statement of the store's sessions (ANALYZE,
    BUFFERS) to the server's log at WARNING, the level devstack keeps, and the
    last run's plans are printed from it.
    """
    settings = {
        "session_preload_libraries": "auto_explain",
        "auto_explain.log_min_duration": "0",
        "auto_explain.log_analyze": "on",
        "auto_explain.log_buffers": "on",
        "auto_explain.log_level": "warning",
    }
    params = _params(server, database, 60.0)
    with psycopg.connect(**params, autocommit=True) as conn:
        for key, value in settings.items():
            conn.execute(f"ALTER DATABASE {database} SET {key} = '{value}'".encode())
    try:
        print(f"\n## Plans of the calls that missed (auto_explain: ANALYZE, BUFFERS; "
              f"run {WARM_RUNS + 1} on one connection)\n")  # fmt: skip
        for name in names:
            store = PostgresStore(server.url_for(database), password=server.password)
            try:
                call = dict(make_calls(store))[name]
                for _ in range(WARM_RUNS):
                    call()
                time.sleep(0.2)  # the backend writes its log lines as it goes; let them land
                mark = server.log_path.stat().st_size
                call()
            finally:
                store.close()
            time.sleep(0.2)
            with server.log_path.open("rb") as log:
                log.seek(mark)
                text = log.read().decode(errors="replace")
            print(f"### {name}\n\n```\n{text.strip()}\n```\n")
    finally:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {database} RESET ALL".encode())


# -- the run ------------------------------------------------------------------------------


def _server_settings(server: Postgres) -> str:
    names = (
        "server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
        "shared_buffers", "work_mem", "max_parallel_workers_per_gather",
    )  # fmt: skip
    with psycopg.connect(**_params(server, server.database, 10.0), autocommit=True) as conn:
        values = [f"{n} {_one(conn, f'SHOW {n}')}" for n in names]
    return ", ".join(values)


def run(args: argparse.Namespace) -> int:
    """Start the server, run both sections, stop it."""
    if args.quick:
        args.messages, args.entries, args.users = 100, 20_000, 2000
        args.rounds, args.repeat = 1, 10
    sections = args.only or ["holding", "listing"]
    root = work_root("qpgb")
    # fsync and full_page_writes on: commits are durable, as on a real server.
    server = Postgres(root / "pg", password=secrets.token_urlsafe(18), fsync=True)
    try:
        say(f"starting PostgreSQL in {root}")
        server.start()
        print(f"PostgreSQL: {_server_settings(server)}")
        if "holding" in sections:
            holding(args, root, server)
        if "listing" in sections:
            listing(args, server)
    finally:
        server.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000, help="adds per store and round")
    parser.add_argument("--entries", type=int, default=1_000_000, help="held, for the listing")
    parser.add_argument("--concurrency", type=int, default=8, help="adds at once")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of adds")
    parser.add_argument("--users", type=int, default=20_000, help="addresses, for the listing")
    parser.add_argument("--repeat", type=int, default=100, help="timed runs per call")
    parser.add_argument("--only", action="append", choices=("holding", "listing"),
                        help="one section (repeatable; default both)")  # fmt: skip
    parser.add_argument("--explain", action="store_true", help="print every call's plans")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return run_main(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
