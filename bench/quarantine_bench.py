"""The quarantine's list queries with 100,000 held messages (issue 17 §6: a page under 200 ms).

This module owns one benchmark: it fills a directory store with synthetic
entries (files written without fsync, the index filled in batches: what the
filter would have built over a month, made in seconds), then times what the
portal's pages ask of the store, each repeated and reported as p50/p99/max in
milliseconds of server time (the store's work; no HTTP, no template):

- a user's own first page (50 rows, newest first), with the count shown above it;
- the same user's fifth page, through cursors;
- the admin's first page, and the total;
- filtered searches: a sender substring, a subject substring matching nothing
  (the worst case: every row read), a category within a week;
- the admin chart's counts per day and category over 30 days;
- a release request list;
- the portal's own pages, rendered through the whole application in-process
  (routing, session, store, template; no network): a user's list page, the
  administrator's search page and the chart image.

Each page's rows are read and checked from their files (as the store does), so
the figures include that.  It asserts nothing; the 200 ms target is printed
with PASS/MISS beside each figure.

Run: ``.venv/bin/python -m bench.quarantine_bench [--entries N] [--repeat N] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from bench.common import run_main, say
from filter.config import NoticesConfig, PortalConfig
from filter.portal.auth import Verdict
from filter.portal.sessions import Sessions
from filter.portal.web import Portal, build
from filter.qdir import DirectoryStore
from filter.qstore import QuarantineStore, Query
from filter.quarantine import Entry
from filter.smtp_out import Delivery

TARGET_MS = 200.0
CATEGORIES = ["spam"] * 16 + ["virus", "banned", "bad_header", "unchecked"]
WORDS = ["invoice", "offer", "meeting", "report", "winner", "parcel", "account", "urgent"]


def fill(store: DirectoryStore, count: int, users: int, seed: int = 17) -> str:
    """Write ``count`` entries over 30 days to ``users`` recipients; returns a typical user."""
    rng = random.Random(seed)
    now = time.time()
    store.directory.mkdir(parents=True, exist_ok=True)
    batch: list[Entry] = []
    for n in range(count):
        at = now - rng.random() * 30 * 86400
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(at))
        rcpts = [f"user{rng.randrange(users)}@example.com" for _ in range(rng.choice((1, 1, 1, 2)))]
        subject = f"{rng.choice(WORDS)} {rng.choice(WORDS)} #{n}"
        entry = Entry(
            id=f"{stamp}-{n:010x}", category=rng.choice(CATEGORIES), reason="bench",
            mail_from=f"sender{rng.randrange(5000)}@shop{rng.randrange(300)}.example",
            recipients=rcpts, received_at=at, size=2000, score=rng.uniform(0, 30),
            subject=subject,
        )  # fmt: skip
        message = f"Subject: {subject}\r\nFrom: <{entry.mail_from}>\r\n\r\nbody\r\n".encode()
        (store.directory / f"{entry.id}.eml").write_bytes(message)
        (store.directory / f"{entry.id}.json").write_text(json.dumps(asdict(entry)))
        batch.append(entry)
        if len(batch) == 5000:
            store.index.put(batch)
            batch = []
            say(f"  {n + 1} entries")
    store.index.put(batch)
    return "user7@example.com"


def timed(name: str, repeat: int, call: Callable[[], object]) -> tuple[str, float, float, float]:
    """(name, p50, p99, max) in ms of ``repeat`` calls (one unmeasured call first)."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return name, statistics.median(times), p99, times[-1]


def run(args: argparse.Namespace) -> int:
    """Fill, time, print."""
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="qbench"))
    directory = base / "quarantine"
    store = DirectoryStore(directory)
    try:
        say(f"filling {args.entries} entries in {directory}")
        started = time.monotonic()
        user = fill(store, args.entries, args.users)
        say(f"filled in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        store.reconcile()  # what the CLI's list does first: the names against the index
        reconcile_ms = (time.monotonic() - started) * 1000
        mine = Query(recipient=user)

        def fifth_page() -> None:
            cursor = None
            for _ in range(5):
                cursor = store.search(mine, 50, cursor).next_cursor

        week = time.time() - 7 * 86400
        rows = [
            timed("user's first page (50) + count", args.repeat,
                  lambda: (store.search(mine, 50), store.count(mine))),
            timed("user's 5th page (5 pages through cursors)", args.repeat, fifth_page),
            timed("admin's first page (50) + total", args.repeat,
                  lambda: (store.search(Query(), 50), store.count(Query()))),
            timed("search: sender contains 'shop42.'", args.repeat,
                  lambda: store.search(Query(sender="shop42."), 50)),
            timed("search: subject matching nothing (every row)", args.repeat,
                  lambda: store.search(Query(subject="no such words"), 50)),
            timed("search: virus in the last 7 days", args.repeat,
                  lambda: store.search(Query(category="virus", since=week), 50)),
            timed("chart: per day and category, 30 days", args.repeat,
                  lambda: store.daily_counts(30)),
        ]  # fmt: skip
        rows += portal_pages(store, user, args.repeat)
        size = sum(p.stat().st_size for p in directory.glob("index.sqlite3*"))
        print(f"\n{args.entries} entries, {args.users} recipients ({user}: "
              f"{store.count(mine)} entries); index {size / 1e6:.1f} MB; "
              f"reconcile (names against the index) {reconcile_ms:.0f} ms\n")  # fmt: skip
        target = f"under {TARGET_MS:.0f} ms"
        print(f"| query ({args.repeat} runs) | p50 ms | p99 ms | max ms | {target} |")
        print("|---|---|---|---|---|")
        for name, p50, p99, top in rows:
            verdict = "PASS" if p99 < TARGET_MS else "MISS"
            print(f"| {name} | {p50:.1f} | {p99:.1f} | {top:.1f} | {verdict} |")
    finally:
        store.close()
        if not args.keep and not args.dir:
            shutil.rmtree(base)
    return 0


class _Anyone:
    """A password check that lets the bench's two logins in (no saslimap here)."""

    async def check(self, login: str, password: str, client: str) -> Verdict:
        return Verdict.OK


class _NoSending:
    """The pages timed here send nothing."""

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> Delivery:
        raise AssertionError("the bench's pages send nothing")


def portal_pages(
    store: QuarantineStore, user: str, repeat: int
) -> list[tuple[str, float, float, float]]:
    """The portal's pages through the whole application (TestClient, in this process),
    on any store (bench.qpg_bench times them on PostgreSQL)."""
    from starlette.testclient import TestClient

    admin = "admin@example.com"
    cfg = PortalConfig(admins=(admin,), secret_file=None, page_size=50)
    secret = bytes(range(32))
    sessions = Sessions(secret, idle=cfg.session_idle, max_age=cfg.session_max, max_sessions=10)
    portal = Portal(
        cfg, NoticesConfig(), "bench.example.com", store, _NoSending(), _Anyone(), sessions,
        secret,
    )  # fmt: skip
    app = build(portal)

    def logged_in(login: str) -> TestClient:
        client = TestClient(app, follow_redirects=False)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
        assert token is not None
        done = client.post("/login", data={"login": login, "password": "x", "csrf": token[1]})
        assert done.status_code == 303
        return client

    def page(client: TestClient, path: str) -> None:
        answer = client.get(path)
        assert answer.status_code == 200, answer.status_code

    mine, theirs = logged_in(user), logged_in(admin)
    return [
        timed("page: a user's list (GET /messages)", repeat, lambda: page(mine, "/messages")),
        timed("page: admin search (GET /admin)", repeat, lambda: page(theirs, "/admin")),
        timed("page: the chart (GET /admin/stats.svg)", repeat,
              lambda: page(theirs, "/admin/stats.svg")),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=200, help="distinct recipients")
    parser.add_argument("--repeat", type=int, default=100, help="timed runs per query")
    parser.add_argument("--dir", help="fill this directory (kept) instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return run_main(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
