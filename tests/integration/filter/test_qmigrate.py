"""Moving a quarantine directory into PostgreSQL: everything, once, resumably.

A directory store of 1,000 entries, made through :class:`DirectoryStore` as the
filter and the tools make them (some released, one claim unconfirmed, one old
release record, requests, allow entries, a spent link, digest marks, one entry
that cannot be trusted), is migrated into a database of its own on the
session's server; the database store must then answer as the directory store
did.  Runs are repeated, stopped by an injected failure and killed with SIGKILL
midway, then resumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.postgres import Postgres
from filter import cli, qmigrate, qpg
from filter.qdir import DirectoryStore, release_of
from filter.qmigrate import Tally
from filter.qpg import PostgresStore
from filter.qstore import Actor, AlreadyReleased, Query
from filter.quarantine import Entry, QuarantineError, new_id

pytestmark = pytest.mark.integration

ADMIN = Actor("unix:root", "local")
ALICE = Actor("alice@example.com", "203.0.113.5")
T0 = datetime(2026, 11, 20, 12, 0).timestamp()
USERS = ["alice@example.com", "bob@example.com", "carol@example.com", "Dave@Example.COM"]
NONCE = bytes(range(16))
ENTRIES = 1000


@dataclass
class Source:
    """The directory store to migrate and what the test made in it."""

    store: DirectoryStore
    ids: list[str]
    released: list[str]
    requested: list[str]
    unconfirmed: str
    old_record: str
    bad: str


def _message(i: int) -> bytes:
    """A message with every byte value in it, different for each entry."""
    return (
        f"Subject: offer {i} =?utf-8?q?caf=C3=A9?=\r\nFrom: <s{i % 7}@example.net>\r\n\r\n".encode()
        + bytes(range(256))
        + f"\r\nbody {i}\r\n".encode() * (1 + i % 5)
    )


def _make_source(directory: Path) -> Source:
    """ENTRIES entries through the store's own calls, and the state beside them."""
    store = DirectoryStore(directory)
    ids: list[str] = []
    for i in range(ENTRIES):
        rcpts = [USERS[i % 4]] + ([USERS[(i + 1) % 4]] if i % 9 == 0 else [])
        entry = Entry(
            f"{new_id()}{i:04x}", ("spam", "virus", "banned")[i % 3], f"reason {i}",
            f"s{i % 7}@example.net", rcpts, T0 + i * 60, 300 + i,
            score=None if i % 3 else 5.0 + i / 100, queue_id=f"Q{i}",
        )  # fmt: skip
        key = f"{i:064x}" if i % 100 == 3 else None  # as filter.quarantine.hold_key makes
        assert entry.id == store.add(entry, _message(i), key=key)
        ids.append(entry.id)
    released = ids[5::50]
    for entry_id in released:
        claim = store.claim_release(entry_id, ADMIN, ["bob@example.com"])
        store.confirm_release(claim, ["bob@example.com"], "250 2.0.0 Ok: queued as X")
    unconfirmed = ids[7]
    store.claim_release(unconfirmed, ALICE)  # its process died: neither confirmed nor abandoned
    old_record = ids[9]  # released before release records had a time, a claim or a token
    old = store.files.get(old_record)
    old.releases = [{"when": "2026-11-01 10:00:00", "to": "b@example.com", "reply": "250 ok"}]
    store.files.rewrite(old)
    requested = ids[11::70]
    for n, entry_id in enumerate(requested):
        store.request_release(entry_id, ALICE, f"mine, please {n}")
    store.allow("alice@example.com", "friend@example.net", ALICE)
    store.allow("bob@example.com", "boss@example.com", ADMIN)
    store.allow("bob@example.com", "news@example.org", ADMIN)
    assert store.spend_link(NONCE, time.time() + 7 * 86400)
    store.mark_digested("alice@example.com", [(i, T0) for i in ids[:40]], T0 + 3600)
    store.mark_digested("bob@example.com", [(i, T0) for i in ids[40:45]], T0 + 3600)
    store.finish_digest(T0 + 7200, forget_before=0.0)
    bad = "00000000-000000-0bad"  # sorts before the others: in the first batch
    (directory / f"{bad}.json").write_text('{"id": "not its name"}')
    (directory / f"{bad}.eml").write_bytes(b"x")
    return Source(store, ids, released, requested, unconfirmed, old_record, bad)


def _params(server: Postgres, database: str) -> dict[str, Any]:
    return qpg.conninfo(server.url_for(database), server.password, None, 5.0)


def _migrate(
    server: Postgres, database: str, store: DirectoryStore, **kwargs: Any
) -> qmigrate.Report:
    """One run of the migration of ``store`` into ``database``."""
    with qmigrate.connect(_params(server, database)) as conn:
        return qmigrate.migrate(store, conn, **kwargs)


def _count(server: Postgres, database: str, sql: str) -> int:
    with psycopg.connect(**_params(server, database), autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """The module's directory store (only read by the migrations)."""
    with pytest.MonkeyPatch.context() as patch:
        # Durability is not what is tested here, and 3,000 fsyncs take seconds.
        patch.setattr(os, "fsync", lambda fd: None)
        made = _make_source(tmp_path_factory.mktemp("migrate") / "q")
    yield made
    made.store.close()


@pytest.fixture(scope="module")
def migrated(postgres_server: Postgres, source: Source) -> Iterator[tuple[str, qmigrate.Report]]:
    """A database the source was migrated into once, and that run's report."""
    name = "qmigrate_once"
    postgres_server.drop_database(name)
    postgres_server.create_database(name)
    qpg.upgrade(_params(postgres_server, name))
    skipped: list[QuarantineError] = []
    report = _migrate(postgres_server, name, source.store, on_skip=skipped.append)
    assert [source.bad] == [str(e).split(":")[0] for e in skipped]
    yield name, report
    postgres_server.drop_database(name)


@pytest.fixture
def target(
    postgres_server: Postgres, migrated: tuple[str, qmigrate.Report]
) -> Iterator[PostgresStore]:
    """The store on the migrated database."""
    store = PostgresStore(postgres_server.url_for(migrated[0]), password=postgres_server.password)
    yield store
    store.close()


@pytest.fixture
def bare_db(postgres_server: Postgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this test's own, without the quarantine schema."""
    name = "qm_" + request.node.name[5:40].lower()
    postgres_server.drop_database(name)
    postgres_server.create_database(name)
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
def empty_db(postgres_server: Postgres, bare_db: str) -> str:
    """A database of this test's own, at the current schema, empty."""
    qpg.upgrade(_params(postgres_server, bare_db))
    return bare_db


@pytest.fixture
def small(tmp_path: Path) -> Iterator[DirectoryStore]:
    """A directory store of this test's own, empty."""
    store = DirectoryStore(tmp_path / "q")
    yield store
    store.close()


@pytest.fixture
def db_store(postgres_server: Postgres, empty_db: str) -> Iterator[PostgresStore]:
    """The database store on this test's own database."""
    store = PostgresStore(postgres_server.url_for(empty_db), password=postgres_server.password)
    yield store
    store.close()


def _hold(store: DirectoryStore, count: int) -> list[Entry]:
    """``count`` plain entries for alice, a second apart."""
    entries = [
        Entry(new_id() + f"{i:03x}", "spam", "why", "a@example.net", [USERS[0]], T0 + i, 5)
        for i in range(count)
    ]
    for entry in entries:
        store.add(entry, b"Subject: hi\r\n\r\nbody\r\n")
    return entries


# One run


def test_every_entry_arrives_once_byte_for_byte_with_its_id(
    postgres_server: Postgres,
    source: Source,
    migrated: tuple[str, qmigrate.Report],
    target: PostgresStore,
) -> None:
    """1,000 copied, the untrusted one skipped; each entry's metadata (releases and requests
    included) and message are what the directory store gives for the same id."""
    report = migrated[1]
    assert (ENTRIES + 1, ENTRIES, 0, 1, 0) == (
        report.listed, report.copied, report.already, report.skipped, report.failed,
    )  # fmt: skip
    assert ENTRIES == target.count(Query())
    theirs = {e.id: e for e in target.search(Query(), ENTRIES).entries}
    assert {e.id: e for e in source.store.search(Query(), ENTRIES).entries} == theirs
    assert sorted(source.ids) == sorted(theirs)
    with psycopg.connect(**_params(postgres_server, migrated[0])) as conn:
        for entry_id, message in conn.execute("SELECT id, message FROM entries"):
            assert source.store.message(entry_id) == message


def test_a_released_message_stays_released(source: Source, target: PostgresStore) -> None:
    """Released, claimed-but-unconfirmed and old-style records (no time: taken from "when")
    all refuse a second release, naming the first as the directory recorded it; an
    unreleased one can still be claimed (then abandoned: this module's tests share it)."""
    for entry_id in [*source.released, source.unconfirmed, source.old_record]:
        with pytest.raises(AlreadyReleased) as refused:
            target.claim_release(entry_id, ADMIN)
        first = release_of(source.store.get(entry_id).releases[0])
        assert first == refused.value.first
    with pytest.raises(AlreadyReleased, match="not confirmed"):
        target.claim_release(source.unconfirmed, ADMIN)
    with pytest.raises(AlreadyReleased) as old:
        target.claim_release(source.old_record, ADMIN, retry_unconfirmed=True)
    assert datetime(2026, 11, 1, 10).timestamp() == old.value.first.at
    target.abandon_release(target.claim_release(source.ids[0], ADMIN))


def test_requests_allow_entries_links_and_digest_state_come_along(
    source: Source, migrated: tuple[str, qmigrate.Report], target: PostgresStore
) -> None:
    """Open requests list the same; allow entries, the spent nonce (a used link stays used),
    the digest marks and the next digest's start are in the database."""
    report = migrated[1]
    assert [(r.entry.id, r.at, r.by, r.note) for r in source.store.release_requests(500)] == [
        (r.entry.id, r.at, r.by, r.note) for r in target.release_requests(500)
    ]
    assert len(source.requested) == len(target.release_requests(500))
    for user in USERS:
        assert source.store.allowed_senders(user) == target.allowed_senders(user)
    assert target.is_allowed("alice@example.com", ["friend@example.net"])
    assert not target.spend_link(NONCE, time.time() + 86400)
    assert set(source.ids[:40]) == target.digest_marks("alice@example.com", source.ids[:100])
    assert set(source.ids[40:45]) == target.digest_marks("bob@example.com", source.ids)
    assert T0 + 7200 == target.digest_start() == report.digest_start
    assert (Tally(3, 0), Tally(1, 0), Tally(45, 0)) == (
        report.allow, report.spent_links, report.digest_marks,
    )  # fmt: skip


def test_a_retried_delivery_of_a_migrated_message_is_not_held_again(
    source: Source, migrated: tuple[str, qmigrate.Report], target: PostgresStore
) -> None:
    """The keys the directory recorded for its holds go with their entries: Postfix's retry
    of one, after the switch, is found in the database instead of held twice."""
    assert ENTRIES // 100 == migrated[1].hold_keys
    retry = Entry(new_id(), "spam", "why", "s3@example.net", [USERS[3]], time.time(), 303)
    assert source.ids[3] == target.add(retry, _message(3), key=f"{3:064x}")
    assert ENTRIES == target.count(Query())


@pytest.mark.parametrize(
    "query",
    [
        Query(),
        Query(recipient="dave@example.com"),
        Query(recipient_contains="BOB", oldest_first=True),
        Query(sender="s3@"),
        Query(subject="offer 99"),
        Query(category="virus", since=T0 + 3600, until=T0 + 30000),
    ],
    ids=["all", "recipient", "recipient_contains", "sender", "subject", "category_and_time"],
)
def test_searches_give_the_same_pages(source: Source, target: PostgresStore, query: Query) -> None:
    """Page by page (cursors included), a search of the database gives what the directory
    store's gives: the same entries in the same order, and the same counts."""
    cursors: tuple[str | None, str | None] = (None, None)
    pages = 0
    while True:
        mine = source.store.search(query, 70, cursors[0])
        theirs = target.search(query, 70, cursors[1])
        assert mine.entries == theirs.entries
        assert mine.next_cursor == theirs.next_cursor
        pages += 1
        if mine.next_cursor is None:
            break
        cursors = (mine.next_cursor, theirs.next_cursor)
    assert source.store.count(query) == target.count(query)
    assert pages >= 1


def test_a_second_run_finds_everything_there(
    postgres_server: Postgres, source: Source, migrated: tuple[str, qmigrate.Report]
) -> None:
    """Run again: nothing copied, every entry and every row "already there", nothing doubled."""
    report = _migrate(postgres_server, migrated[0], source.store)
    assert (0, ENTRIES, 1, 0, 0, 0) == (
        report.copied, report.already, report.skipped, report.failed, report.updated,
        report.hold_keys,
    )  # fmt: skip
    assert (Tally(0, 3), Tally(0, 1), Tally(0, 45)) == (
        report.allow, report.spent_links, report.digest_marks,
    )  # fmt: skip
    assert ENTRIES == _count(postgres_server, migrated[0], "SELECT count(*) FROM entries")
    assert len(source.requested) == _count(
        postgres_server, migrated[0], "SELECT count(*) FROM requests"
    )


# Interrupted runs


class Stop(Exception):
    """The injected failure."""


def test_a_run_stopped_after_three_batches_resumes(
    postgres_server: Postgres, source: Source, empty_db: str
) -> None:
    """A failure after three committed batches leaves exactly those; the next run copies the
    rest and counts the three batches as already there."""

    def stop_after_three(report: qmigrate.Report) -> None:
        if report.done >= 3 * qmigrate.BATCH:
            raise Stop

    with pytest.raises(Stop):
        _migrate(postgres_server, empty_db, source.store, progress=stop_after_three)
    held = _count(postgres_server, empty_db, "SELECT count(*) FROM entries")
    assert 3 * qmigrate.BATCH - 1 == held  # the untrusted entry is in the first batch
    report = _migrate(postgres_server, empty_db, source.store)
    assert (ENTRIES - held, held, 1) == (report.copied, report.already, report.skipped)
    assert ENTRIES == _count(postgres_server, empty_db, "SELECT count(DISTINCT id) FROM entries")
    assert ENTRIES == _count(postgres_server, empty_db, "SELECT count(*) FROM entries")


KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
from filter import qmigrate, qpg
from filter.qdir import DirectoryStore, release_of

source = DirectoryStore(Path(sys.argv[1]))
read, reads = source.files.message, []

def message(entry_id):
    reads.append(entry_id)
    if len(reads) == 250:  # the third batch is half inserted, not committed
        os.kill(os.getpid(), signal.SIGKILL)
    return read(entry_id)

source.files.message = message
params = qpg.conninfo(sys.argv[2], sys.stdin.readline().strip(), None, 5.0)
with qmigrate.connect(params) as conn:
    qmigrate.migrate(source, conn)
"""


def test_a_run_killed_midway_resumes_without_doubles(
    postgres_server: Postgres, source: Source, empty_db: str
) -> None:
    """SIGKILL in the middle of a batch: its transaction is gone, the batches before it
    stay; the next run ends with each entry and each request exactly once."""
    src = str(Path(qmigrate.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MIDWAY, str(source.store.directory),
         postgres_server.url_for(empty_db)],
        input=postgres_server.password + "\n", text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert -signal.SIGKILL == killed.returncode
    held = _count(postgres_server, empty_db, "SELECT count(*) FROM entries")
    assert 2 * qmigrate.BATCH - 1 == held
    report = _migrate(postgres_server, empty_db, source.store)
    assert (ENTRIES - held, held) == (report.copied, report.already)
    assert ENTRIES == _count(postgres_server, empty_db, "SELECT count(DISTINCT id) FROM entries")
    assert ENTRIES == _count(postgres_server, empty_db, "SELECT count(*) FROM entries")
    assert len(source.requested) == _count(
        postgres_server, empty_db, "SELECT count(*) FROM requests"
    )


# Runs between which the stores changed


def test_a_later_run_brings_releases_and_requests_forward_never_back(
    postgres_server: Postgres, empty_db: str, small: DirectoryStore, db_store: PostgresStore
) -> None:
    """Released or requested in the directory after the first run: recorded in the database
    by the next; released in the database meanwhile: still released (never undone)."""
    entries = _hold(small, 3)
    _migrate(postgres_server, empty_db, small)
    small.confirm_release(small.claim_release(entries[0].id, ADMIN), [USERS[0]], "250 ok")
    small.request_release(entries[1].id, ALICE, "please")
    db_store.confirm_release(db_store.claim_release(entries[2].id, ALICE), [USERS[0]], "250 ok")
    report = _migrate(postgres_server, empty_db, small)
    assert (0, 3, 2) == (report.copied, report.already, report.updated)
    with pytest.raises(AlreadyReleased, match="unix:root"):
        db_store.claim_release(entries[0].id, ALICE)
    assert [entries[1].id] == [r.entry.id for r in db_store.release_requests()]
    assert "alice@example.com" == db_store.get(entries[2].id).releases[0]["by"]
    assert 0 == _migrate(postgres_server, empty_db, small).updated


def test_another_message_under_the_same_id_fails_and_is_kept(
    postgres_server: Postgres, empty_db: str, small: DirectoryStore, db_store: PostgresStore
) -> None:
    """Two hosts' ids collided: the database's message is kept, the entry counted as failed
    and named; the others go in."""
    mine, _other = _hold(small, 2)
    theirs = Entry(mine.id, "virus", "other host", "x@example.net", [USERS[1]], T0 + 99, 5)
    db_store.add(theirs, b"Subject: theirs\r\n\r\n")
    failed: list[QuarantineError] = []
    report = _migrate(postgres_server, empty_db, small, on_fail=failed.append)
    assert (1, 0, 1) == (report.copied, report.already, report.failed)
    assert [f"{mine.id}: not copied"] == [str(e)[: len(mine.id) + 12] for e in failed]
    assert b"Subject: theirs\r\n\r\n" == db_store.message(mine.id)


def test_an_entry_the_database_refuses_fails_alone(
    postgres_server: Postgres, empty_db: str, small: DirectoryStore
) -> None:
    """A release record the database cannot hold (NaN, which Python's JSON writes and jsonb
    refuses): that entry fails, named with the database's reason; its batch is redone entry
    by entry, so the rest of it is copied."""
    entries = _hold(small, 5)
    entries[2].releases = [{"when": "2026-11-20 12:00:00", "at": float("nan")}]
    small.files.rewrite(entries[2])
    failed: list[QuarantineError] = []
    report = _migrate(postgres_server, empty_db, small, on_fail=failed.append)
    assert (4, 0, 1) == (report.copied, report.already, report.failed)
    assert [f"{entries[2].id}: not copied: invalid input syntax for type json"] == [
        str(e) for e in failed
    ]
    assert 4 == _count(postgres_server, empty_db, "SELECT count(*) FROM entries")


# The command


def test_the_command_migrates_reports_and_says_how_to_switch(
    postgres_server: Postgres,
    bare_db: str,
    small: DirectoryStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`db upgrade --url` makes the schema while the config still names the directory;
    `quarantine migrate --to URL` copies, prints its counts and how to switch, writes its
    audit line; after the switch it says "already there"; the password is never printed."""
    url = postgres_server.url_for(bare_db)
    _hold(small, 5)
    config = tmp_path / "filter.toml"
    audit = tmp_path / "audit.log"
    config.write_text(
        f'[quarantine]\ndirectory = "{tmp_path / "q"}"\naudit_log = "{audit}"\n'
        f'password_file = "{postgres_server.password_file}"\n'
    )
    migrate = ["quarantine", "--config", str(config), "migrate", "--to", url]
    assert 1 == cli.main(migrate)
    assert f"db upgrade --config {config} --url {url}" in capsys.readouterr().err
    assert 0 == cli.main(["db", "upgrade", "--config", str(config), "--url", url])
    capsys.readouterr()
    assert 0 == cli.main(migrate)
    out, err = capsys.readouterr()
    assert f"{tmp_path / 'q'} -> {url}: 5 copied, 0 already there, 0 skipped, 0 failed" in out
    assert f'\n    store = "{url}"\n' in out
    with config.open("a") as f:
        f.write(f'store = "{url}"\n')
    assert 0 == cli.main(migrate)
    out2, err2 = capsys.readouterr()
    assert "0 copied, 5 already there, 0 skipped, 0 failed" in out2
    assert "store names this database already" in out2
    assert postgres_server.password not in out + err + out2 + err2
    lines = audit.read_text().splitlines()
    assert 3 == len(lines)
    assert "action=migrate" in lines[1]
    assert "copied=5 already=0 skipped=0 failed=0 result=ok" in lines[1]
