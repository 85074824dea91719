"""The quarantine store contract on a real PostgreSQL: search, release once, ledger, schema.

The behaviours of tests/filter/test_qstore.py (the directory store's), on
:class:`filter.qpg.PostgresStore` against the session's server; concurrent
releases run in separate processes, as two gateway hosts would.  Plus what only
the database store has: the schema check, ``db upgrade``, deadlines and TLS.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.ports import LOOPBACK, free_port
from devstack.postgres import Postgres
from devstack.tls import make_tls
from filter import cli, qactions, qopen, qpg, release_links
from filter import config as config_mod
from filter.qpg import PostgresStore, SchemaMismatch, StoreUnavailable
from filter.qstore import Actor, AlreadyReleased, Query
from filter.quarantine import Entry, NotFound, QuarantineError, new_id
from filter.smtp_out import Delivery
from tests.filter.test_qstore import FakeSender, accepted

pytestmark = pytest.mark.integration

ADMIN = Actor("unix:root", "local")
ALICE = Actor("alice@example.com", "203.0.113.5")
DAY = 86400.0
T0 = datetime(2026, 11, 20, 12, 0).timestamp()
SECRET = b"portal secret for the tests, 32+ bytes long"
TABLES = "entries, recipients, requests, allow, spent_links, digested, digest_runs"


def _params(server: Postgres, database: str, timeout: float = 5.0) -> dict[str, Any]:
    """Connection parameters for ``database`` on ``server``, with its password."""
    return qpg.conninfo(server.url_for(database), server.password, None, timeout)


def _store(server: Postgres, database: str, timeout: float = 5.0) -> PostgresStore:
    """A store on ``database`` of ``server``."""
    return PostgresStore(server.url_for(database), password=server.password, timeout=timeout)


@pytest.fixture(scope="module")
def database(postgres_server: Postgres) -> Iterator[str]:
    """This module's database, at the current schema."""
    postgres_server.create_database("qpg_contract")
    qpg.upgrade(_params(postgres_server, "qpg_contract"))
    yield "qpg_contract"
    postgres_server.drop_database("qpg_contract")


@pytest.fixture
def store(postgres_server: Postgres, database: str) -> Iterator[PostgresStore]:
    """An empty store (every table truncated) on the module's database."""
    with psycopg.connect(**_params(postgres_server, database), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES}")
    made = _store(postgres_server, database)
    yield made
    made.close()


@pytest.fixture
def fresh_db(postgres_server: Postgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database of this test's own, without any schema."""
    name = "t_" + request.node.name.lower().replace("[", "_").strip("]")[:40]
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    postgres_server.drop_database(name)
    postgres_server.create_database(name)
    yield name
    postgres_server.drop_database(name)


def hold(
    store: PostgresStore,
    at: float,
    rcpts: Sequence[str] = ("alice@example.com",),
    sender: str = "a@example.net",
    category: str = "spam",
    subject: str = "hello",
) -> Entry:
    """One entry added through the store, as the filter adds one."""
    entry = Entry(new_id() + f"{int(at) % 1000:03x}", category, "why", sender, list(rcpts), at, 10)
    store.add(entry, f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    return entry


def ids(entries: Sequence[Entry]) -> list[str]:
    """The ids, in order."""
    return [e.id for e in entries]


# Holding and reading


def test_a_message_comes_back_byte_for_byte(store: PostgresStore) -> None:
    """Every byte value, in pieces (a spooled tail), is held exactly; metadata round-trips."""
    entry = Entry(
        new_id(), "virus", "Eicar", "a@example.net", ["b@example.com"], T0, 300, 5.5, "Q1"
    )
    head = b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n" + bytes(range(256))
    store.add(entry, head, [b"\0" * 10, b"tail\r\n"])
    assert head + b"\0" * 10 + b"tail\r\n" == store.message(entry.id)
    got = store.get(entry.id)
    assert (entry.id, "virus", "Eicar", 5.5, "Q1", T0, "café") == (
        got.id, got.category, got.reason, got.score, got.queue_id, got.received_at, got.subject,
    )  # fmt: skip
    assert ([], []) == (got.releases, got.requests)


def test_an_unknown_or_malformed_id_is_refused(store: PostgresStore) -> None:
    """NotFound for an id not held; QuarantineError (no query) for one not of ours."""
    with pytest.raises(NotFound):
        store.get("0123abcd")
    with pytest.raises(NotFound):
        store.message("0123abcd")
    with pytest.raises(QuarantineError, match="not a quarantine id"):
        store.get("x' OR 1=1 --")


def test_a_users_view_shows_only_their_own_newest_first(store: PostgresStore) -> None:
    """recipient= is exact and case-insensitive; others' entries never appear."""
    mine = [hold(store, T0 + i) for i in range(3)]
    hold(store, T0 + 10, rcpts=["bob@example.com"])
    hold(store, T0 + 11, rcpts=["xalice@example.com", "alice@example.com.evil"])
    shared = hold(store, T0 + 12, rcpts=["bob@example.com", "Alice@Example.COM"])
    page = store.search(Query(recipient="ALICE@example.com"))
    assert [shared.id, *reversed(ids(mine))] == ids(page.entries)
    assert page.next_cursor is None
    assert 4 == store.count(Query(recipient="alice@example.com"))


def test_paging_is_stable_while_mail_arrives(store: PostgresStore) -> None:
    """A cursor continues where its page ended, whatever was added meanwhile, both orders."""
    held = [hold(store, T0 + i) for i in range(7)]
    first = store.search(Query(recipient="alice@example.com"), limit=3)
    hold(store, T0 + 100)  # newer than everything: not on later pages
    second = store.search(Query(recipient="alice@example.com"), 3, first.next_cursor)
    third = store.search(Query(recipient="alice@example.com"), 3, second.next_cursor)
    assert list(reversed(ids(held))) == ids(first.entries + second.entries + third.entries)
    assert third.next_cursor is None
    oldest = store.search(Query(oldest_first=True), limit=4)
    rest = store.search(Query(oldest_first=True), limit=4, cursor=oldest.next_cursor)
    assert [*ids(held), ids(rest.entries)[-1]] == ids(oldest.entries + rest.entries)


@pytest.mark.parametrize("cursor", ["", "x", "1e9999:abc", "nan:abc", "1.0:../etc", "1.0:ABC"])
def test_a_cursor_not_ours_is_refused(store: PostgresStore, cursor: str) -> None:
    """A hand-made cursor is a QuarantineError, never SQL or a crash."""
    hold(store, T0)
    with pytest.raises(QuarantineError, match="not a page cursor"):
        store.search(Query(), cursor=cursor)


def test_admin_filters_narrow_the_search(store: PostgresStore) -> None:
    """sender, subject (decoded), recipient substring, category, date range and id."""
    a = hold(store, T0, sender="Boss@Corp.example", subject="Quarterly report")
    b = hold(store, T0 + DAY, category="virus", subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    c = hold(store, T0 + 2 * DAY, rcpts=["carol@other.example"])
    cases = [
        (Query(sender="boss@corp"), [a]),
        (Query(subject="QUARTERLY"), [a]),
        (Query(subject="grüße"), [b]),
        (Query(recipient_contains="other.example"), [c]),
        (Query(category="virus"), [b]),
        (Query(since=T0 + 1, until=T0 + 2 * DAY), [b]),
        (Query(id=c.id), [c]),
        (Query(sender="%"), []),  # no wildcards: a literal substring
        (Query(subject="_"), []),
    ]
    for query, expected in cases:
        assert ids(expected) == ids(store.search(query).entries), query
        assert len(expected) == store.count(query), query
    assert "Grüße" == store.get(b.id).subject


def test_daily_counts_per_day_and_category(store: PostgresStore) -> None:
    """Counts per local day and category over the last N days."""
    held = [(0, "spam"), (0, "spam"), (0, "virus"), (DAY, "spam"), (-40 * DAY, "spam")]
    for offset, category in held:
        hold(store, T0 + offset, category=category)
    counts = {(c.day.isoformat(), c.category): c.count for c in store.daily_counts(30, T0 + DAY)}
    expected = {("2026-11-20", "spam"): 2, ("2026-11-20", "virus"): 1, ("2026-11-21", "spam"): 1}
    assert expected == counts


def test_undecodable_bytes_and_nul_are_held_and_searchable(store: PostgresStore) -> None:
    """Lone surrogates and NUL in a sender or subject are stored as U+FFFD, never an
    exception while mail is held, and a search with the same text finds the entry."""
    entry = Entry(
        new_id() + "abc", "spam", "why", "x\udcff@example.net", ["alice@example.com"], T0, 10,
        subject="caf\udce9 \ud800 of\0fer",
    )  # fmt: skip
    store.add(entry, b"Subject: x\r\n\r\nbody\r\n")
    page = store.search(Query(subject="\udce9 \ud800", sender="x\udcff"))
    assert [entry.id] == ids(page.entries)
    assert "x\ufffd@example.net" == page.entries[0].mail_from
    assert "caf\ufffd \ufffd of\ufffdfer" == page.entries[0].subject
    assert [] == store.search(Query(category="sp\udcffam", id="a\udcff")).entries


# Release once


async def test_a_second_release_is_refused_naming_when_to_whom_and_by_whom(
    store: PostgresStore,
) -> None:
    """The first goes out; the second says when, to whom and by whom, and sends nothing."""
    entry = hold(store, T0)
    sender = FakeSender(accepted("alice@example.com"))
    done = await qactions.release(store, sender, entry.id, ALICE)
    assert ("alice@example.com",) == done.release.to
    with pytest.raises(AlreadyReleased, match=r"released \(\d{4}-.*, to alice@example.com\) by "):
        await qactions.release(store, sender, entry.id, ADMIN, ["eve@example.org"])
    assert 1 == len(sender.sent)
    assert store.get(entry.id).releases[0]["confirmed"] is True


async def test_a_refused_release_can_be_tried_again(store: PostgresStore) -> None:
    """Nothing accepted: the claim is dropped and a later release delivers."""
    entry = hold(store, T0)
    with pytest.raises(QuarantineError, match="release refused"):
        await qactions.release(store, FakeSender(Delivery()), entry.id, ADMIN)
    assert [] == store.get(entry.id).releases
    await qactions.release(store, FakeSender(accepted("alice@example.com")), entry.id, ADMIN)


async def test_an_interrupted_release_stays_claimed(store: PostgresStore) -> None:
    """Broken off after a recipient was accepted: refused again unless retry_unconfirmed."""
    entry = hold(store, T0)
    broken = FakeSender(accepted("alice@example.com", error="connection lost"))
    with pytest.raises(QuarantineError, match="may have been delivered"):
        await qactions.release(store, broken, entry.id, ADMIN)
    with pytest.raises(AlreadyReleased, match="not confirmed"):
        await qactions.release(store, broken, entry.id, ADMIN)
    ok = FakeSender(accepted("alice@example.com"))
    await qactions.release(store, ok, entry.id, ADMIN, retry_unconfirmed=True)
    assert 1 == len(ok.sent)


def test_a_taken_over_claim_can_neither_confirm_nor_abandon(store: PostgresStore) -> None:
    """After retry_unconfirmed took a claim over, the first claim's token is refused."""
    entry = hold(store, T0)
    first = store.claim_release(entry.id, ADMIN)
    second = store.claim_release(entry.id, ALICE, retry_unconfirmed=True)
    with pytest.raises(QuarantineError, match="taken over"):
        store.confirm_release(first, ["alice@example.com"], "250 ok")
    with pytest.raises(QuarantineError, match="taken over"):
        store.abandon_release(first)
    assert ("x@example.com",) == store.confirm_release(second, ["x@example.com"], "250 ok").to


def _release_all(
    url: str, password: str, entry_ids: list[str], name: str, barrier: Any
) -> list[str]:
    """In another process (another host): release every entry; the ids this one delivered."""
    import asyncio

    store = PostgresStore(url, password=password)
    sender = FakeSender(accepted("alice@example.com"))
    barrier.wait()  # both processes start releasing at the same moment

    async def run() -> list[str]:
        delivered = []
        for entry_id in entry_ids:
            try:
                await qactions.release(store, sender, entry_id, Actor(name, "local"))
            except AlreadyReleased:
                continue
            delivered.append(entry_id)
        return delivered

    try:
        delivered = asyncio.run(run())
    finally:
        store.close()
    assert len(delivered) == len(sender.sent)
    return delivered


def test_a_concurrent_double_release_from_two_processes_delivers_once(
    store: PostgresStore, postgres_server: Postgres, database: str
) -> None:
    """Two processes release the same 40 entries at once: each is delivered exactly once."""
    entries = [hold(store, T0 + i).id for i in range(40)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        barrier = manager.Barrier(2)
        url = postgres_server.url_for(database)
        futures = [
            pool.submit(_release_all, url, postgres_server.password, entries, f"host{n}", barrier)
            for n in range(2)
        ]
        delivered = [entry_id for future in futures for entry_id in future.result()]
    assert sorted(entries) == sorted(delivered)
    assert all(store.get(e).releases[0]["confirmed"] is True for e in entries)


def test_a_message_added_again_under_its_key_is_held_once(
    store: PostgresStore, postgres_server: Postgres, database: str
) -> None:
    """The same key from two connections at once (two hosts) holds one entry; released, it stays."""
    entries = [
        Entry(new_id() + f"{n:02x}", "virus", "x", "a@example.net", ["b@example.com"], T0, 10)
        for n in range(8)
    ]
    others = [_store(postgres_server, database) for _ in entries]
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(
                lambda pair: pair[0].add(pair[1], b"Subject: s\r\n\r\nx\r\n", key="k1"),
                zip(others, entries, strict=True),
            ))  # fmt: skip
    finally:
        for other in others:
            other.close()
    assert 1 == len(set(got))
    assert [got[0]] == ids(store.search(Query()).entries)
    store.claim_release(got[0], ADMIN)
    late = Entry(new_id() + "ff", "virus", "x", "a@example.net", ["b@example.com"], T0, 10)
    assert got[0] == store.add(late, b"x", key="k1")
    assert late.id == store.add(late, b"x", key="k2")
    assert 2 == store.count(Query(recipient="b@example.com"))


def test_an_idle_connection_the_server_ended_is_not_reused(
    store: PostgresStore, postgres_server: Postgres, database: str
) -> None:
    """After the server ends the store's idle connections (a restart does), the next call
    works at once: no call fails on a dead connection (a 451 for mail to hold)."""
    hold(store, T0)
    with psycopg.connect(**_params(postgres_server, database), autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'mail-filter' AND pid <> pg_backend_pid()",
            (database,),
        ).fetchone()
    assert ended is not None
    assert ended[0] >= 1
    time.sleep(0.2)  # the goodbye reaches our socket
    assert 1 == store.count(Query())


def test_a_count_stops_at_its_limit(store: PostgresStore) -> None:
    """count(limit=N) is min(matches, N): a user's whole count, a filtered one, the admin's."""
    for n in range(5):
        hold(store, T0 + n, category="spam" if n % 2 else "virus")
    alice = "alice@example.com"
    assert (5, 3, 5, 2) == (
        store.count(Query()), store.count(Query(), 3),
        store.count(Query(recipient=alice)), store.count(Query(recipient=alice), 2),
    )  # fmt: skip
    assert (2, 1) == (
        store.count(Query(recipient=alice, category="spam")),
        store.count(Query(recipient=alice, category="spam"), 1),
    )  # fmt: skip


def test_allowed_among_answers_for_every_recipient_in_one_statement(
    store: PostgresStore,
) -> None:
    """The recipients (as given) who allowed any of the senders; case-insensitive."""
    store.allow("b@example.com", "a@example.net", ALICE)
    store.allow("c@example.com", "z@example.net", ALICE)
    rcpts = ["B@Example.com", "c@example.com", "d@example.com"]
    assert {"B@Example.com"} == store.allowed_among(rcpts, ["x@y", "A@example.NET"])
    assert {"B@Example.com", "c@example.com"} == store.allowed_among(
        rcpts, ["a@example.net", "z@example.net"]
    )
    assert set() == store.allowed_among(rcpts, [""])
    assert set() == store.allowed_among([], ["a@example.net"])


def test_the_chart_counts_follow_holds_deletes_and_expiry(store: PostgresStore) -> None:
    """daily_counts, summed from the trigger-kept counters, equals a count of the entries
    after holds, a delete, a bulk delete and an expiry."""
    now = T0 + 3 * DAY
    held = [hold(store, T0 + n * 3600 * 7, category=("spam", "virus")[n % 2]) for n in range(12)]

    def exact() -> list[tuple[object, str, int]]:
        counts: dict[tuple[object, str], int] = {}
        for entry in store.search(Query(), limit=1000).entries:
            day = datetime.fromtimestamp(entry.received_at).date()
            counts[day, entry.category] = counts.get((day, entry.category), 0) + 1
        return sorted((d, c, n) for (d, c), n in counts.items())

    def chart() -> list[tuple[object, str, int]]:
        return sorted((c.day, c.category, c.count) for c in store.daily_counts(10, now))

    assert exact() == chart()
    store.delete(held[0].id)
    store.delete_many([held[1].id, held[2].id])
    assert exact() == chart()
    store.expire(max_age_days=2.0, now=now)
    assert exact() == chart()
    assert 0 < sum(n for _, _, n in chart()) < 9


def test_upgrading_a_database_with_mail_counts_what_it_holds(
    postgres_server: Postgres, fresh_db: str
) -> None:
    """Version 2 with entries, upgraded to 3: the chart's counters start from what is held."""
    params = _params(postgres_server, fresh_db)
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY,"
                     " upgraded_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        for version in (1, 2):
            conn.execute(qpg.MIGRATIONS[version].encode())
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        conn.execute(
            "INSERT INTO entries (id, received_at, category, reason, mail_from, sender_lc,"
            " recipients, recipients_lc, subject, subject_lc, size, queue_id, message)"
            " VALUES ('0a1b', %s, 'virus', 'x', 'a@x', 'a@x', '{b@x}', 'b@x', 's', 's', 1,"
            " 'Q', 'x')",
            (T0,),
        )
    assert (2, qpg.SCHEMA_VERSION) == qpg.upgrade(params)
    store = _store(postgres_server, fresh_db)
    try:
        [count] = store.daily_counts(1, T0)
    finally:
        store.close()
    assert ("virus", 1) == (count.category, count.count)


# Requests, allow entries, deletion


def test_release_requests_are_recorded_listed_and_closed_by_a_release(
    store: PostgresStore,
) -> None:
    """A request lists its entry (its latest request) until the entry is released."""
    virus = hold(store, T0, category="virus")
    hold(store, T0 + 1)
    qactions.request_release(store, virus.id, ALICE, "my invoice")
    request = qactions.request_release(store, virus.id, ALICE, "please")
    assert [(virus.id, "alice@example.com", "please")] == [
        (r.entry.id, r.by, r.note) for r in store.release_requests()
    ]
    assert 2 == len(store.get(virus.id).requests)
    assert request.address == store.release_requests()[0].address
    claim = store.claim_release(virus.id, ADMIN)
    store.confirm_release(claim, ["alice@example.com"], "250 ok")
    assert [] == store.release_requests()
    with pytest.raises(AlreadyReleased):
        store.request_release(virus.id, ALICE)


def test_allow_entries_add_list_check_remove(store: PostgresStore) -> None:
    """Per-recipient allow entries, case-insensitive."""
    qactions.allow(store, "Alice@Example.com", "News@Shop.example", ALICE)
    qactions.allow(store, "alice@example.com", "news@shop.example", ADMIN)  # refreshed, not doubled
    assert store.is_allowed("alice@example.com", ["x@y", "news@shop.example"])
    assert not store.is_allowed("bob@example.com", ["news@shop.example"])
    assert not store.is_allowed("alice@example.com", [])
    [only] = store.allowed_senders("ALICE@example.com")
    assert ("news@shop.example", "unix:root") == (only.sender, only.added_by)
    assert qactions.disallow(store, "alice@example.com", "news@shop.example", ALICE)
    assert not store.disallow("alice@example.com", "news@shop.example")
    assert not store.is_allowed("alice@example.com", ["news@shop.example"])


def test_bulk_delete_and_expire(store: PostgresStore) -> None:
    """delete_many removes what it can and reports the rest; expire goes by age."""
    old, mid, new = hold(store, T0 - 40 * DAY), hold(store, T0 - 10 * DAY), hold(store, T0)
    qactions.request_release(store, mid.id, ALICE)
    refused: list[QuarantineError] = []
    assert 1 == store.delete_many([mid.id, "not-there", "../x", "0abc"], refused.append)
    assert 3 == len(refused)
    assert [] == store.release_requests()
    assert 1 == store.expire(30, now=T0)
    assert [new.id] == ids(store.search(Query()).entries)
    with pytest.raises(NotFound):
        store.message(old.id)
    with pytest.raises(NotFound):
        store.delete(old.id)
    store.reconcile()  # a no-op here


def _expire(url: str, password: str, barrier: Any) -> int:
    """In another process (another host's timer): expire; how many this one deleted."""
    store = PostgresStore(url, password=password)
    barrier.wait()
    try:
        return store.expire(30, now=T0)
    finally:
        store.close()


def test_expiry_on_every_hosts_timer_deletes_each_entry_once(
    store: PostgresStore, postgres_server: Postgres, database: str
) -> None:
    """Two processes expire 1,200 old entries at once: their counts add up to 1,200."""
    with psycopg.connect(**_params(postgres_server, database), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO entries (id, received_at, category, reason, mail_from, sender_lc,"
            " recipients, recipients_lc, subject, subject_lc, size, queue_id, message)"
            " SELECT 'e' || lpad(to_hex(n), 6, '0'), %s - n, 'spam', '', '', '', '{}', '',"
            " '', '', 0, '', ''::bytea FROM generate_series(1, 1200) n",
            (T0 - 40 * DAY,),
        )
    kept = hold(store, T0)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        barrier = manager.Barrier(2)
        url = postgres_server.url_for(database)
        futures = [pool.submit(_expire, url, postgres_server.password, barrier) for _ in range(2)]
        counts = [future.result() for future in futures]
    assert 1200 == sum(counts)
    assert [kept.id] == ids(store.search(Query()).entries)


def test_every_action_writes_one_audit_line(
    store: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    """show, request, allow, delete through the shared actions: one line each, no content."""
    entry = hold(store, T0, subject="secret plans")
    caplog.set_level(logging.INFO, logger="filter.audit")
    qactions.show(store, entry.id, ALICE)
    qactions.request_release(store, entry.id, ALICE, "please")
    qactions.allow(store, "alice@example.com", "a@example.net", ALICE)
    qactions.delete(store, [entry.id], ADMIN, lambda err: None)
    lines = [r.getMessage() for r in caplog.records if r.name == "filter.audit"]
    assert [
        f"quarantine action=show id={entry.id} by=alice@example.com from=203.0.113.5 result=ok",
        f"quarantine action=request id={entry.id} by=alice@example.com from=203.0.113.5 result=ok",
        "quarantine action=allow by=alice@example.com from=203.0.113.5"
        " recipient=alice@example.com sender=a@example.net result=ok",
        f"quarantine action=delete id={entry.id} by=unix:root from=local deleted=1 result=ok",
    ] == lines
    assert not any("secret plans" in line or "please" in line for line in lines)


# Release links and the digest's ledger


def _spend_all(url: str, password: str, nonces: list[bytes]) -> list[bytes]:
    """In another process: try to spend every nonce; the ones this process spent."""
    store = PostgresStore(url, password=password)
    try:
        return [n for n in nonces if store.spend_link(n, T0 + DAY, now=T0)]
    finally:
        store.close()


def test_a_link_is_spent_once_across_processes(
    store: PostgresStore, postgres_server: Postgres, database: str
) -> None:
    """Four processes spend the same 50 nonces at once: each is spent exactly once."""
    nonces = [os.urandom(16) for _ in range(50)]
    context = multiprocessing.get_context("spawn")
    url = postgres_server.url_for(database)
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        futures = [pool.submit(_spend_all, url, postgres_server.password, nonces) for _ in range(4)]
        won = [nonce for future in futures for nonce in future.result()]
    assert sorted(nonces) == sorted(won)
    assert not store.spend_link(nonces[0], T0 + DAY, now=T0)


def test_links_are_given_back_and_forgotten_a_day_after_they_expire(store: PostgresStore) -> None:
    """unspend_link forgets a nonce; a nonce whose link expired over a day ago is pruned."""
    assert store.spend_link(b"n" * 16, T0 + DAY, now=T0)
    store.unspend_link(b"n" * 16)
    assert store.spend_link(b"n" * 16, T0 + DAY, now=T0)
    assert store.spend_link(b"a" * 16, T0, now=T0 - DAY)
    assert not store.spend_link(b"a" * 16, T0, now=T0 + DAY - 1)
    assert store.spend_link(b"b" * 16, T0 + 9 * DAY, now=T0 + DAY + 1)  # prunes a
    assert store.spend_link(b"a" * 16, T0, now=T0 + DAY + 1)


def test_digest_marks_are_per_recipient_and_forgotten_with_old_mail(
    store: PostgresStore,
) -> None:
    """Marks are per (recipient, entry), case-insensitive; finish_digest prunes old ones."""
    old, new = hold(store, T0 - 40 * DAY), hold(store, T0)
    assert store.digest_start() is None
    assert set() == store.digest_marks("alice@example.com", [])
    store.mark_digested("alice@example.com", [(old.id, old.received_at)], T0 - 39 * DAY)
    store.mark_digested("ALICE@example.com", [(new.id, new.received_at)], T0)
    store.mark_digested("ALICE@example.com", [(new.id, new.received_at)], T0)  # again: no error
    assert {old.id, new.id} == store.digest_marks("Alice@example.com", [old.id, new.id])
    assert set() == store.digest_marks("bob@example.com", [old.id, new.id])
    store.finish_digest(T0 - 3600, forget_before=T0 - 31 * DAY)
    assert {new.id} == store.digest_marks("alice@example.com", [old.id, new.id])
    assert T0 - 3600 == store.digest_start()
    store.finish_digest(T0, forget_before=T0 - 31 * DAY)
    assert T0 == store.digest_start()


async def test_a_link_releases_to_its_recipient_only_and_once(store: PostgresStore) -> None:
    """Alice's link delivers to Alice as her address is spelled; the second click sends nothing."""
    entry = hold(store, T0, rcpts=("Alice@Example.com",))
    sender = FakeSender(accepted("Alice@Example.com"))
    token = release_links.make_token(SECRET, entry.id, "alice@example.com", int(T0 + 7 * DAY))
    done = await qactions.release_link(store, sender, SECRET, token, "198.51.100.9", now=T0)
    assert ("Alice@Example.com",) == done.release.to
    with pytest.raises(qactions.LinkUsed):
        await qactions.release_link(store, sender, SECRET, token, "198.51.100.9", now=T0)
    assert 1 == len(sender.sent)


# Schema versions, db upgrade, deadlines, TLS


def test_a_database_without_the_schema_is_refused_naming_db_upgrade(
    postgres_server: Postgres, fresh_db: str
) -> None:
    """No schema_version table: every call says to run `mail-filter db upgrade`."""
    store = _store(postgres_server, fresh_db)
    with pytest.raises(SchemaMismatch, match="run `mail-filter db upgrade`"):
        store.check()
    with pytest.raises(OSError, match="no quarantine schema"):  # the hold's 451
        hold(store, T0)
    store.close()


def test_a_schema_version_it_does_not_know_is_refused(
    postgres_server: Postgres, fresh_db: str
) -> None:
    """A newer schema (another host upgraded) is refused at open and by upgrade, untouched."""
    params = _params(postgres_server, fresh_db)
    qpg.upgrade(params)
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (qpg.SCHEMA_VERSION + 1,))
    store = _store(postgres_server, fresh_db)
    newer = f"version {qpg.SCHEMA_VERSION + 1}, newer than this mail-filter knows"
    with pytest.raises(SchemaMismatch, match=newer):
        store.check()
    with pytest.raises(SchemaMismatch, match=newer):
        store.search(Query())
    with pytest.raises(SchemaMismatch, match=newer):
        qpg.upgrade(params)
    with psycopg.connect(**params, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert [*sorted(qpg.MIGRATIONS), qpg.SCHEMA_VERSION + 1] == versions
    store.close()


def test_db_upgrade_creates_the_schema_and_is_idempotent(
    postgres_server: Postgres,
    fresh_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`mail-filter db upgrade --config F` creates the schema, then finds nothing to do;
    the data held in between is kept, and the password never appears in its output."""
    config = tmp_path / "filter.toml"
    config.write_text(
        f'[quarantine]\nstore = "{postgres_server.url_for(fresh_db)}"\n'
        f'password_file = "{postgres_server.password_file}"\ntimeout = 5.0\n'
    )
    assert 0 == cli.main(["db", "upgrade", "--config", str(config)])
    assert f"version none -> {qpg.SCHEMA_VERSION}" in capsys.readouterr().out
    store = _store(postgres_server, fresh_db)
    entry = hold(store, T0)
    assert 0 == cli.main(["db", "upgrade", "--config", str(config)])
    out, err = capsys.readouterr()
    assert f"version {qpg.SCHEMA_VERSION}, nothing to do" in out
    assert postgres_server.password not in out + err
    assert [entry.id] == ids(store.search(Query()).entries)
    store.close()


def test_db_upgrade_reports_configuration_and_connection_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No store configured: 78; a password in the URL: 78; nobody listening: 75."""
    config = tmp_path / "filter.toml"
    config.write_text("[quarantine]\n")
    assert cli.EX_CONFIG == cli.main(["db", "upgrade", "--config", str(config)])
    config.write_text('[quarantine]\nstore = "postgresql://u:pw@127.0.0.1:5432/q"\n')
    assert cli.EX_CONFIG == cli.main(["db", "upgrade", "--config", str(config)])
    assert "no password in the URL" in capsys.readouterr().err
    config.write_text(f'[quarantine]\nstore = "postgresql://u@{LOOPBACK}:{free_port()}/q"\n')
    assert cli.EX_TEMPFAIL == cli.main(["db", "upgrade", "--config", str(config)])
    assert "quarantine database" in capsys.readouterr().err


def test_a_database_nobody_answers_on_is_an_oserror_for_the_hold(tmp_path: Path) -> None:
    """Connection refused: StoreUnavailable, which the filter's hold turns into a 451."""
    store = PostgresStore(f"postgresql://u@{LOOPBACK}:{free_port()}/q", password="pw")
    with pytest.raises(StoreUnavailable) as caught:
        hold(store, T0)
    assert isinstance(caught.value, OSError)
    assert "pw" not in str(caught.value).replace("postgresql", "")
    store.close()


def test_a_held_row_lock_ends_in_the_deadline_not_a_hang(
    store: PostgresStore, postgres_server: Postgres, database: str
) -> None:
    """Another session holds the entry's row lock: the release fails with StoreUnavailable
    (the statement's deadline) instead of waiting, and the store goes on working."""
    entry = hold(store, T0)
    quick = _store(postgres_server, database, timeout=0.2)
    with psycopg.connect(**_params(postgres_server, database)) as blocker:
        blocker.execute("SELECT 1 FROM entries WHERE id = %s FOR UPDATE", (entry.id,))
        with pytest.raises(StoreUnavailable, match=r"canceling statement due to \w+ timeout"):
            quick.claim_release(entry.id, ADMIN)
        blocker.rollback()
    assert entry.id == quick.claim_release(entry.id, ADMIN).entry.id
    quick.close()


def test_tls_with_a_ca_file_verifies_the_server(
    postgres_server: Postgres, database: str, store: PostgresStore
) -> None:
    """With ca_file the store connects with verify-full: its session is encrypted."""
    assert postgres_server.ca_file is not None
    secure = PostgresStore(
        postgres_server.url_for(database), password=postgres_server.password,
        ca_file=postgres_server.ca_file,
    )  # fmt: skip
    entry = hold(secure, T0)
    with secure._conn() as conn:  # the one place a test looks inside: the session's TLS state
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert (True,) == row
    assert [entry.id] == ids(store.search(Query()).entries)
    secure.close()


def test_tls_with_another_ca_is_refused(
    postgres_server: Postgres, database: str, tmp_path: Path
) -> None:
    """A server certificate the CA file did not sign: no connection (StoreUnavailable)."""
    other = make_tls(tmp_path / "other")
    store = PostgresStore(
        postgres_server.url_for(database), password=postgres_server.password,
        ca_file=other.ca_cert,
    )  # fmt: skip
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        store.check()
    store.close()


def test_the_server_restarted_the_store_reconnects(
    store: PostgresStore, postgres_server: Postgres
) -> None:
    """Pooled connections die with a restart: the call that meets one fails, the next works."""
    entry = hold(store, T0)
    postgres_server.restart()
    with contextlib.suppress(StoreUnavailable):
        store.get(entry.id)  # may meet the dead idle connection, which is then dropped
    assert entry.id == store.get(entry.id).id


def test_the_server_listens_on_loopback_only(postgres_server: Postgres, database: str) -> None:
    """The devstack server's only TCP address is 127.0.0.1."""
    with psycopg.connect(**_params(postgres_server, database), autocommit=True) as conn:
        assert ("127.0.0.1",) == conn.execute("SHOW listen_addresses").fetchone()


def test_the_cli_lists_shows_and_deletes_from_the_configured_database(
    store: PostgresStore,
    postgres_server: Postgres,
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`[quarantine] store` makes `mail-filter quarantine` work on the database (qopen's choice);
    reindex, which only the directory store has, is refused."""
    entry = hold(store, T0, subject="from the database")
    config = tmp_path / "filter.toml"
    config.write_text(
        f'[quarantine]\nstore = "{postgres_server.url_for(database)}"\n'
        f'password_file = "{postgres_server.password_file}"\naudit_log = "stderr"\n'
        f'directory = "{tmp_path / "unused"}"\n'
    )
    assert isinstance(qopen.open_store(config_mod.load(config).quarantine), PostgresStore)
    quarantine = ["quarantine", "--config", str(config)]
    assert 0 == cli.main([*quarantine, "list"])
    out, err = capsys.readouterr()
    assert entry.id in out
    assert f"1 message(s) in {postgres_server.url_for(database)}" in err
    assert 0 == cli.main([*quarantine, "show", entry.id])
    assert "from the database" in capsys.readouterr().out
    assert 1 == cli.main([*quarantine, "reindex"])
    assert "no separate index" in capsys.readouterr().err
    assert 0 == cli.main([*quarantine, "delete", entry.id])
    assert [] == store.search(Query()).entries
    assert not (tmp_path / "unused").exists()


def test_a_daemon_start_refuses_an_unknown_schema_and_warns_when_unreachable(
    postgres_server: Postgres, fresh_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """check_at_start (serve and portal): no schema is SchemaMismatch, an OSError, so the
    daemon says "cannot start"; a database nobody answers on is a warning only."""
    cfg = config_mod.QuarantineConfig(
        store=postgres_server.url_for(fresh_db), password_file=postgres_server.password_file
    )
    with pytest.raises(SchemaMismatch, match="db upgrade"):
        qopen.check_at_start(cfg)
    qpg.upgrade(_params(postgres_server, fresh_db))
    qopen.check_at_start(cfg)
    down = config_mod.QuarantineConfig(store=f"postgresql://u@{LOOPBACK}:{free_port()}/q")
    qopen.check_at_start(down)
    assert "starting anyway" in caplog.text
    qopen.check_at_start(config_mod.QuarantineConfig())  # the directory store: nothing to check


def test_a_hung_server_ends_in_the_clients_deadline(
    store: PostgresStore, postgres_server: Postgres, database: str
) -> None:
    """The server stopped (SIGSTOP: its kernel still acknowledges): the call fails with
    StoreUnavailable, an OSError for the hold's 451, instead of hanging; after it resumes
    the store works again."""
    entry = hold(store, T0)
    quick = _store(postgres_server, database, timeout=0.2)
    quick.check()  # an open idle connection, as a running daemon has
    postgres_server.pause()
    try:
        with pytest.raises(StoreUnavailable):
            quick.get(entry.id)
        with pytest.raises(StoreUnavailable):
            hold(quick, T0 + 1)  # a new connection: connect_timeout
    finally:
        postgres_server.resume()
    assert entry.id == quick.get(entry.id).id
    quick.close()
