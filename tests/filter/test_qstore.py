"""The quarantine store interface on the directory store: search, release once, drift, audit.

Real files and a real SQLite index in a temporary directory; concurrent
releases run in separate processes, as the CLI and the portal would.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from filter import qactions, release_links
from filter.qdir import MARKER, DirectoryStore
from filter.qindex import INDEX_NAME
from filter.qstore import Actor, AlreadyReleased, Query
from filter.quarantine import Entry, QuarantineError, hold_key, new_id
from filter.smtp_out import Delivery, Reply

ADMIN = Actor("unix:root", "local")
ALICE = Actor("alice@example.com", "203.0.113.5")
DAY = 86400.0
T0 = datetime(2026, 11, 20, 12, 0).timestamp()


def hold(
    store: DirectoryStore,
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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DirectoryStore]:
    """An empty directory store."""
    made = DirectoryStore(tmp_path / "q")
    yield made
    made.close()


def ids(entries: Sequence[Entry]) -> list[str]:
    """The ids, in order."""
    return [e.id for e in entries]


# Searching


def test_a_users_view_shows_only_their_own_newest_first(store: DirectoryStore) -> None:
    """recipient= is exact and case-insensitive; others' entries never appear."""
    mine = [hold(store, T0 + i) for i in range(3)]
    hold(store, T0 + 10, rcpts=["bob@example.com"])
    hold(store, T0 + 11, rcpts=["xalice@example.com", "alice@example.com.evil"])
    shared = hold(store, T0 + 12, rcpts=["bob@example.com", "Alice@Example.COM"])
    page = store.search(Query(recipient="ALICE@example.com"))
    assert [shared.id, *reversed(ids(mine))] == ids(page.entries)
    assert page.next_cursor is None
    assert 4 == store.count(Query(recipient="alice@example.com"))


def test_paging_is_stable_while_mail_arrives(store: DirectoryStore) -> None:
    """A cursor continues where its page ended, whatever was added meanwhile."""
    held = [hold(store, T0 + i) for i in range(7)]
    first = store.search(Query(recipient="alice@example.com"), limit=3)
    hold(store, T0 + 100)  # newer than everything: not on later pages
    second = store.search(Query(recipient="alice@example.com"), 3, first.next_cursor)
    third = store.search(Query(recipient="alice@example.com"), 3, second.next_cursor)
    newest = list(reversed(ids(held)))
    assert newest == ids(first.entries) + ids(second.entries) + ids(third.entries)
    assert third.next_cursor is None


@pytest.mark.parametrize("cursor", ["", "x", "1e9999:abc", "nan:abc", "1.0:../etc", "1.0:ABC"])
def test_a_cursor_not_ours_is_refused(store: DirectoryStore, cursor: str) -> None:
    """A hand-made cursor is a QuarantineError, never SQL or a crash."""
    hold(store, T0)
    with pytest.raises(QuarantineError, match="not a page cursor"):
        store.search(Query(), cursor=cursor)


def test_admin_filters_narrow_the_search(store: DirectoryStore) -> None:
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
    ]
    for query, expected in cases:
        assert ids(expected) == ids(store.search(query).entries), query
    assert "Grüße" == store.get(b.id).subject


def test_daily_counts_per_day_and_category(store: DirectoryStore) -> None:
    """Counts per local day and category over the last N days."""
    held = [(0, "spam"), (0, "spam"), (0, "virus"), (DAY, "spam"), (-40 * DAY, "spam")]
    for offset, category in held:
        hold(store, T0 + offset, category=category)
    counts = {(c.day.isoformat(), c.category): c.count for c in store.daily_counts(30, T0 + DAY)}
    expected = {("2026-11-20", "spam"): 2, ("2026-11-20", "virus"): 1, ("2026-11-21", "spam"): 1}
    assert expected == counts


# The files are the truth


def test_an_entry_whose_files_are_gone_is_dropped_from_the_index(store: DirectoryStore) -> None:
    """Files removed by hand: the row goes at the next search."""
    gone, kept = hold(store, T0), hold(store, T0 + 1)
    (store.directory / f"{gone.id}.json").unlink()
    assert [kept.id] == ids(store.search(Query()).entries)
    assert {kept.id} == store.index.ids()


def test_files_missing_from_the_index_are_picked_up_by_reconcile(store: DirectoryStore) -> None:
    """An entry written beside the index (a restore) appears after reconcile or reindex."""
    hold(store, T0)
    entry = Entry(new_id(), "spam", "why", "a@example.net", ["alice@example.com"], T0 + 5, 3)
    store.files.write(entry, b"Subject: restored\r\n\r\nx\r\n")
    assert 1 == len(store.search(Query()).entries)
    store.reconcile()
    found = store.search(Query(subject="restored")).entries
    assert [entry.id] == ids(found)
    assert (2, 0) == store.reindex()


def test_a_users_view_rests_on_the_metadata_file(store: DirectoryStore) -> None:
    """Recipients changed in the file: the index's old word shows nobody the entry wrongly."""
    entry = hold(store, T0)
    path = store.directory / f"{entry.id}.json"
    raw = json.loads(path.read_bytes())
    raw["recipients"] = ["bob@example.com"]
    path.write_text(json.dumps(raw))
    assert [] == store.search(Query(recipient="alice@example.com")).entries
    assert [entry.id] == ids(store.search(Query(recipient="bob@example.com")).entries)


def test_an_index_failure_neither_loses_nor_refuses_mail(store: DirectoryStore) -> None:
    """The index is locked by another writer: the message is held, marked, and indexed later."""
    hold(store, T0)
    blocker = sqlite3.connect(store.directory / INDEX_NAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    slow = DirectoryStore(store.directory, busy_timeout=0.05)
    try:
        late = hold(slow, T0 + 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (store.directory / f"{late.id}.eml").exists()
    assert (store.directory / MARKER).exists()
    assert [late.id] == ids(slow.search(Query(), limit=1).entries)
    assert not (store.directory / MARKER).exists()
    slow.close()


def test_undecodable_bytes_in_a_sender_or_subject_are_indexed_and_searchable(
    store: DirectoryStore,
) -> None:
    """Lone surrogates (undecodable bytes) in a sender, subject or search are indexed as
    U+FFFD, never an exception while mail is held; the row still comes from its file."""
    entry = Entry(
        new_id() + "abc", "spam", "why", "x\udcff@example.net", ["alice@example.com"], T0, 10,
        subject="caf\udce9 \ud800 offer",
    )  # fmt: skip
    store.add(entry, b"Subject: x\r\n\r\nbody\r\n")
    assert not (store.directory / MARKER).exists()  # indexed, not left for later
    page = store.search(Query(subject="\udce9 \ud800", sender="x\udcff"))
    assert [entry.id] == ids(page.entries)
    assert "x\udcff@example.net" == page.entries[0].mail_from
    assert [] == store.search(Query(category="sp\udcffam", id="a\udcff")).entries


def test_a_planted_index_is_refused_and_reindex_moves_it_aside(store: DirectoryStore) -> None:
    """A symlink at the index's name is not followed; garbage there is moved aside and rebuilt."""
    entry = hold(store, T0)
    store.close()
    index = store.directory / INDEX_NAME
    for suffix in ("", "-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    secret = store.directory.parent / "secret"
    secret.write_bytes(b"precious")
    index.symlink_to(secret)
    with pytest.raises(QuarantineError, match="not a plain file"):
        store.search(Query())
    index.unlink()
    index.write_bytes(b"not a database, " * 100)
    assert (1, 0) == store.reindex()
    assert [entry.id] == ids(store.search(Query()).entries)
    assert b"precious" == secret.read_bytes()
    assert any(p.name.startswith(f"{INDEX_NAME}.broken-") for p in store.directory.iterdir())


# Release once


class FakeSender:
    """Answers like the re-injection listener would; keeps what it was given."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.sent: list[tuple[str, list[str], bytes]] = []

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> Delivery:
        """Record and answer."""
        self.sent.append((mail_from, list(recipients), data))
        return self.delivery


def accepted(*rcpts: str, error: str = "", data_ok: bool = True) -> Delivery:
    """A Delivery where ``rcpts`` were accepted."""
    code = 250 if data_ok else 554
    return Delivery(
        {r: Reply(250, "2.1.5 Ok") for r in rcpts}, Reply(code, "queued as X"), error=error
    )


async def test_a_second_release_is_refused_naming_when_to_whom_and_by_whom(
    store: DirectoryStore,
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


async def test_a_refused_release_can_be_tried_again(store: DirectoryStore) -> None:
    """Nothing accepted: the claim is dropped and a later release delivers."""
    entry = hold(store, T0)
    with pytest.raises(QuarantineError, match="release refused"):
        await qactions.release(store, FakeSender(Delivery()), entry.id, ADMIN)
    assert [] == store.get(entry.id).releases
    await qactions.release(store, FakeSender(accepted("alice@example.com")), entry.id, ADMIN)


async def test_an_interrupted_release_stays_claimed(store: DirectoryStore) -> None:
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


def _claim_all(directory: str, entry_ids: list[str], name: str) -> list[str]:
    """In another process: try to claim every entry; the ids this process won."""
    store = DirectoryStore(Path(directory))
    won = []
    for entry_id in entry_ids:
        try:
            store.claim_release(entry_id, Actor(name, "local"))
        except AlreadyReleased:
            continue
        won.append(entry_id)
    store.close()
    return won


def test_release_once_holds_across_processes(store: DirectoryStore) -> None:
    """Four processes claim the same 25 entries at once: each entry is claimed exactly once."""
    entries = [hold(store, T0 + i).id for i in range(25)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        futures = [
            pool.submit(_claim_all, str(store.directory), entries, f"p{n}") for n in range(4)
        ]
        won = [entry_id for future in futures for entry_id in future.result()]
    assert sorted(entries) == sorted(won)
    assert all(store.index.count(Query(id=e)) == 1 for e in entries)


# Requests, allow entries, deletion


def test_release_requests_are_recorded_listed_and_closed_by_a_release(
    store: DirectoryStore,
) -> None:
    """A request lists its entry until the entry is released."""
    virus = hold(store, T0, category="virus")
    hold(store, T0 + 1)
    request = qactions.request_release(store, virus.id, ALICE, "my invoice")
    assert [(virus.id, "alice@example.com", "my invoice")] == [
        (r.entry.id, r.by, r.note) for r in store.release_requests()
    ]
    assert request.address == store.release_requests()[0].address
    claim = store.claim_release(virus.id, ADMIN)
    store.confirm_release(claim, ["alice@example.com"], "250 ok")
    assert [] == store.release_requests()


def test_allow_entries_add_list_check_remove(store: DirectoryStore) -> None:
    """Per-recipient allow entries, case-insensitive; they survive a reindex."""
    qactions.allow(store, "Alice@Example.com", "News@Shop.example", ALICE)
    assert store.is_allowed("alice@example.com", ["x@y", "news@shop.example"])
    assert not store.is_allowed("bob@example.com", ["news@shop.example"])
    store.reindex()
    assert ["news@shop.example"] == [a.sender for a in store.allowed_senders("ALICE@example.com")]
    assert qactions.disallow(store, "alice@example.com", "news@shop.example", ALICE)
    assert not store.is_allowed("alice@example.com", ["news@shop.example"])


def test_bulk_delete_and_expire(store: DirectoryStore) -> None:
    """delete_many removes what it can and reports the rest; expire goes by age."""
    old, mid, new = hold(store, T0 - 40 * DAY), hold(store, T0 - 10 * DAY), hold(store, T0)
    refused: list[QuarantineError] = []
    assert 1 == store.delete_many([mid.id, "not-there", "../x"], refused.append)
    assert 2 == len(refused)
    assert 1 == store.expire(30, now=T0)
    assert [new.id] == ids(store.search(Query()).entries)
    assert not (store.directory / f"{old.id}.eml").exists()


# Audit


def test_every_action_writes_one_audit_line(
    store: DirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """show, request, allow, delete: one line each with who, what and from where; no content."""
    entry = hold(store, T0, subject="secret plans")
    caplog.set_level(logging.INFO, logger="filter.audit")
    qactions.show(store, entry.id, ALICE)
    qactions.request_release(store, entry.id, ALICE, "please")
    qactions.allow(store, "alice@example.com", "a@example.net", ALICE)
    qactions.delete(store, [entry.id], ADMIN, lambda err: None)
    with pytest.raises(QuarantineError):
        qactions.show(store, entry.id, ALICE)
    lines = [r.getMessage() for r in caplog.records if r.name == "filter.audit"]
    assert [
        f"quarantine action=show id={entry.id} by=alice@example.com from=203.0.113.5 result=ok",
        f"quarantine action=request id={entry.id} by=alice@example.com from=203.0.113.5 result=ok",
        "quarantine action=allow by=alice@example.com from=203.0.113.5"
        " recipient=alice@example.com sender=a@example.net result=ok",
        f"quarantine action=delete id={entry.id} by=unix:root from=local deleted=1 result=ok",
    ] == lines[:4]
    assert lines[4].startswith(f"quarantine action=show id={entry.id} by=alice@example.com")
    assert "result=refused" in lines[4]
    assert not any("secret plans" in line or "please" in line for line in lines)


def test_a_bulk_delete_audit_line_names_every_id_deleted(
    store: DirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An administrator's bulk delete of 100 entries names all 100 ids in its one line."""
    entries = [hold(store, T0 + n) for n in range(100)]
    caplog.set_level(logging.INFO, logger="filter.audit")
    assert 100 == qactions.delete(store, ids(entries), ADMIN, lambda err: None)
    [line] = [r.getMessage() for r in caplog.records if r.name == "filter.audit"]
    assert [] == [e.id for e in entries if e.id not in line]


def test_audit_values_cannot_forge_fields_or_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Spaces, newlines and quotes in a value are JSON-quoted: one line, one field."""
    caplog.set_level(logging.INFO, logger="filter.audit")
    qactions.audit("show", Actor('x result=ok\nquarantine action=delete "', "::1"), id="abc")
    [line] = [r.getMessage() for r in caplog.records]
    assert 1 == len(line.splitlines())
    assert 'by="x result=ok\\nquarantine action=delete \\"" from=::1 result=ok' in line


def test_the_index_stays_out_of_the_list_of_entries(store: DirectoryStore) -> None:
    """The database files in the directory are not taken for entries."""
    hold(store, T0)
    names = sorted(os.listdir(store.directory))
    assert INDEX_NAME in names
    assert 1 == len(store.files.names())


# Release links (single use) and the digest's ledger

SECRET = b"portal secret for the tests, 32+ bytes long"


def _spend_all(directory: str, nonces: list[bytes]) -> list[bytes]:
    """In another process: try to spend every nonce; the ones this process spent."""
    store = DirectoryStore(Path(directory))
    won = [n for n in nonces if store.spend_link(n, T0 + DAY, now=T0)]
    store.close()
    return won


def test_a_link_is_spent_once_across_processes(store: DirectoryStore) -> None:
    """Four processes spend the same 50 nonces at once: each is spent exactly once."""
    hold(store, T0)  # the directory exists once mail was held
    nonces = [os.urandom(16) for _ in range(50)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        futures = [pool.submit(_spend_all, str(store.directory), nonces) for _ in range(4)]
        won = [nonce for future in futures for nonce in future.result()]
    assert sorted(nonces) == sorted(won)
    assert not store.spend_link(nonces[0], T0 + DAY, now=T0)


def test_a_given_back_link_can_be_spent_again(store: DirectoryStore) -> None:
    """unspend_link forgets a nonce."""
    hold(store, T0)
    assert store.spend_link(b"n" * 16, T0 + DAY, now=T0)
    store.unspend_link(b"n" * 16)
    assert store.spend_link(b"n" * 16, T0 + DAY, now=T0)


def test_spent_links_are_forgotten_a_day_after_they_expire(store: DirectoryStore) -> None:
    """A nonce whose link expired over a day ago is pruned (its token is refused anyway)."""
    hold(store, T0)
    assert store.spend_link(b"a" * 16, T0, now=T0 - DAY)
    assert not store.spend_link(b"a" * 16, T0, now=T0 + DAY - 1)
    assert store.spend_link(b"b" * 16, T0 + 9 * DAY, now=T0 + DAY + 1)  # prunes a
    assert store.spend_link(b"a" * 16, T0, now=T0 + DAY + 1)


def test_the_ledger_survives_a_rebuilt_index(store: DirectoryStore) -> None:
    """Spent links, marks and the next start live beside the index, not in it."""
    entry = hold(store, T0)
    store.spend_link(b"s" * 16, T0 + DAY, now=T0)
    store.mark_digested("Alice@Example.com", [(entry.id, entry.received_at)], T0)
    store.finish_digest(T0, forget_before=T0 - 30 * DAY)
    (store.directory / INDEX_NAME).write_bytes(b"not a database")
    store.close()
    store.reindex()
    assert not store.spend_link(b"s" * 16, T0 + DAY, now=T0)
    assert {entry.id} == store.digest_marks("alice@example.com", [entry.id, "other"])
    assert T0 == store.digest_start()


def test_digest_marks_are_per_recipient_and_forgotten_with_old_mail(
    store: DirectoryStore,
) -> None:
    """Marks are per (recipient, entry), case-insensitive; finish_digest prunes old ones."""
    old, new = hold(store, T0 - 40 * DAY), hold(store, T0)
    assert store.digest_start() is None
    store.mark_digested("alice@example.com", [(old.id, old.received_at)], T0 - 39 * DAY)
    store.mark_digested("ALICE@example.com", [(new.id, new.received_at)], T0)
    assert {old.id, new.id} == store.digest_marks("Alice@example.com", [old.id, new.id])
    assert set() == store.digest_marks("bob@example.com", [old.id, new.id])
    store.finish_digest(T0 - 3600, forget_before=T0 - 31 * DAY)
    assert {new.id} == store.digest_marks("alice@example.com", [old.id, new.id])
    assert T0 - 3600 == store.digest_start()


def test_nothing_held_yet_means_no_digest_state(tmp_path: Path) -> None:
    """Before the filter made the quarantine directory, the digest reads and makes nothing."""
    store = DirectoryStore(tmp_path / "not-yet")
    assert store.digest_start() is None
    assert set() == store.digest_marks("a@example.com", ["x"])
    store.finish_digest(T0, forget_before=T0)
    assert not (tmp_path / "not-yet").exists()
    store.close()


def _link(entry: Entry, rcpt: str = "alice@example.com", expires: float = T0 + 7 * DAY) -> str:
    """A release link's token for ``entry`` and ``rcpt``."""
    return release_links.make_token(SECRET, entry.id, rcpt, int(expires))


async def test_a_link_releases_to_its_recipient_only_and_once(
    store: DirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Alice's link delivers to Alice as her address is spelled; the second click sends nothing."""
    caplog.set_level(logging.INFO, logger="filter.audit")
    entry = hold(store, T0, rcpts=("Alice@Example.com",))
    sender = FakeSender(accepted("Alice@Example.com"))
    token = _link(entry)
    done = await qactions.release_link(store, sender, SECRET, token, "198.51.100.9", now=T0)
    assert [("a@example.net", ["Alice@Example.com"])] == [(s[0], s[1]) for s in sender.sent]
    assert ("Alice@Example.com",) == done.release.to
    with pytest.raises(qactions.LinkUsed):
        await qactions.release_link(store, sender, SECRET, token, "198.51.100.9", now=T0)
    assert 1 == len(sender.sent)
    lines = [r.getMessage() for r in caplog.records if r.name == "filter.audit"]
    assert (
        f"quarantine action=release id={entry.id} by=digest from=198.51.100.9"
        " to=Alice@Example.com result=ok"
    ) == lines[0]
    assert "result=refused" in lines[1]
    assert not any(token in line for line in lines)


async def test_a_link_whose_release_delivered_nothing_works_again(store: DirectoryStore) -> None:
    """Nothing accepted: the claim is dropped and the link given back."""
    entry = hold(store, T0)
    token = _link(entry)
    with pytest.raises(QuarantineError, match="release refused"):
        await qactions.release_link(store, FakeSender(Delivery()), SECRET, token, "::1", now=T0)
    ok = FakeSender(accepted("alice@example.com"))
    await qactions.release_link(store, ok, SECRET, token, "::1", now=T0)
    assert 1 == len(ok.sent)


async def test_a_link_to_a_released_entry_is_refused(store: DirectoryStore) -> None:
    """Released from the CLI first: the link's release is refused, nothing is sent."""
    entry = hold(store, T0)
    await qactions.release(store, FakeSender(accepted("alice@example.com")), entry.id, ADMIN)
    sender = FakeSender(accepted("alice@example.com"))
    with pytest.raises(AlreadyReleased):
        await qactions.release_link(store, sender, SECRET, _link(entry), "::1", now=T0)
    assert [] == sender.sent


@pytest.mark.parametrize(
    ("rcpt", "category", "match"),
    [
        ("mallory@example.org", "spam", "not one of its recipients"),
        ("alice@example.com", "virus", "released by an administrator"),
    ],
)
async def test_a_link_outside_its_rights_is_refused_unspent(
    store: DirectoryStore, rcpt: str, category: str, match: str
) -> None:
    """Not a recipient of the entry, or a category users may not release: refused."""
    entry = hold(store, T0, category=category)
    sender = FakeSender(accepted(rcpt))
    token = _link(entry, rcpt)
    with pytest.raises(QuarantineError, match=match):
        await qactions.release_link(store, sender, SECRET, token, "::1", now=T0)
    assert [] == sender.sent
    assert store.spend_link(release_links.check_token(SECRET, token, T0).nonce, T0 + DAY, T0)


@pytest.mark.parametrize(
    ("secret", "now", "reason"),
    [
        (SECRET, T0 + 7 * DAY, release_links.Refusal.EXPIRED),
        (b"another portal's secret, 32 bytes..", T0, release_links.Refusal.FORGED),
    ],
)
async def test_an_expired_or_forged_link_is_refused(
    store: DirectoryStore, secret: bytes, now: float, reason: release_links.Refusal
) -> None:
    """Expired, or signed under another secret: LinkRefused with the reason; nothing sent."""
    entry = hold(store, T0)
    sender = FakeSender(accepted("alice@example.com"))
    with pytest.raises(release_links.LinkRefused) as caught:
        await qactions.release_link(store, sender, secret, _link(entry), "::1", now=now)
    assert reason == caught.value.reason
    assert [] == sender.sent


# Holding a retried message once


def test_a_message_added_again_under_its_key_is_held_once(store: DirectoryStore) -> None:
    """The same key returns the first entry's id; deleted since, it is held anew."""
    first = Entry(new_id() + "a", "virus", "x", "a@example.net", ["b@example.com"], T0, 10)
    again = Entry(new_id() + "b", "virus", "x", "a@example.net", ["b@example.com"], T0 + 9, 10)
    assert first.id == store.add(first, b"Subject: s\r\n\r\nx\r\n", key="k1")
    assert first.id == store.add(again, b"Subject: s\r\n\r\nx\r\n", key="k1")
    assert [first.id] == ids(store.search(Query()).entries)
    assert again.id == store.add(again, b"Subject: s\r\n\r\nx\r\n", key="k2")
    store.delete(first.id)
    third = Entry(new_id() + "c", "virus", "x", "a@example.net", ["b@example.com"], T0, 10)
    assert third.id == store.add(third, b"Subject: s\r\n\r\nx\r\n", key="k1")


def test_hold_keys_differ_with_anything_that_makes_another_message() -> None:
    """Queue id, sender, recipients (in any order the same), size and head all count."""
    base = ("4AbC123", "a@example.net", ["b@x", "c@x"], 10, b"head")
    key = hold_key(*base)
    assert key is not None
    assert key == hold_key("4AbC123", "a@example.net", ["c@x", "b@x"], 10, b"head")
    for i, other in enumerate(("4AbC124", "z@example.net", ["b@x"], 11, b"heaD")):
        changed = list(base)
        changed[i] = other
        assert key != hold_key(*changed)  # type: ignore[arg-type]
    assert key != hold_key(*base, category="virus")
    assert hold_key("-", *base[1:]) is None
    assert hold_key("", *base[1:]) is None


def test_a_count_stops_at_its_limit(store: DirectoryStore) -> None:
    """count(limit=N) is min(matches, N), for a user's view and the admin's."""
    for n in range(5):
        hold(store, T0 + n)
    assert (5, 3, 5) == (
        store.count(Query()), store.count(Query(), 3),
        store.count(Query(recipient="alice@example.com"), 10),
    )  # fmt: skip
    assert 2 == store.count(Query(recipient="alice@example.com"), 2)
