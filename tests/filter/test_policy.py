"""Destinies, lists, per-recipient levels and splits, quarantine and notices (fakes only)."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from filter.config import Config, NoticesConfig, PolicyConfig, ServerConfig, from_mapping
from filter.lookup import AddressList
from filter.message import Message
from filter.notices import Notices
from filter.policy import Lists
from filter.qdir import DirectoryStore
from filter.qstore import Actor, Query
from filter.quarantine import Entry, QuarantineError, Store, new_id
from filter.service import Filter
from filter.smtp_out import Reply
from filter.verdicts import Category, Destiny
from tests.clock import FakeClock
from tests.filter.fakes import FakeClamd, FakeForwarder, FakeSpamd

_DIRS = tempfile.TemporaryDirectory(prefix="mfp")  # removed at exit
RAW = b"From: Shop <news@shop.test>\r\nTo: bob@example.com\r\nSubject: offer\r\n\r\nbody\r\n"
GTUBE = RAW.replace(b"body", b"GTUBE")


def make(
    policy: PolicyConfig | None = None, lists: Lists | None = None
) -> tuple[Filter, FakeForwarder]:
    cfg = Config(server=ServerConfig(hostname="gw.test"), policy=policy or PolicyConfig())
    fwd = FakeForwarder()
    store = DirectoryStore(Path(tempfile.mkdtemp(dir=_DIRS.name)))
    return Filter(cfg, FakeClamd(), FakeSpamd(), fwd, lists=lists, store=store), fwd


def msg(data: bytes, *rcpts: str, sender: str = "news@shop.test") -> Message:
    return Message(sender, rcpts or ("bob@example.com",), data)


def lst(*lines: str) -> AddressList:
    return AddressList.parse("test", lines)


async def test_spam_at_kill_level_with_discard() -> None:
    """spam_destiny = discard drops spam (250 2.7.0) and delivers nothing."""
    f, fwd = make(PolicyConfig(spam_destiny=Destiny.DISCARD))
    reply = await f.handle(msg(GTUBE))
    assert reply.startswith("250 2.7.0 Ok, discarded")
    assert "SPAM" in reply
    assert [] == fwd.sent


async def test_spam_reject() -> None:
    """spam_destiny = reject answers 554."""
    f, _ = make(PolicyConfig(spam_destiny=Destiny.REJECT))
    assert (await f.handle(msg(GTUBE))).startswith("554 5.7.1 Rejected")


async def test_bounce_below_cutoff_sends_dsn() -> None:
    """spam_destiny = bounce sends our DSN when the score is below the DSN cutoff."""
    f, fwd = make(PolicyConfig(spam_destiny=Destiny.BOUNCE, kill_level=0.4, dsn_cutoff_level=10))
    reply = await f.handle(msg(RAW))
    assert reply.startswith("250 2.7.0")
    assert [("", ["news@shop.test"])] == [(s.mail_from, s.recipients) for s in fwd.sent]


async def test_no_bounce_above_cutoff_or_for_viruses() -> None:
    """Spam above the cutoff and viruses are discarded, never bounced (no backscatter)."""
    f, fwd = make(PolicyConfig(spam_destiny=Destiny.BOUNCE, virus_destiny=Destiny.BOUNCE))
    assert (await f.handle(msg(GTUBE))).startswith("250 2.7.0")
    assert (await f.handle(msg(RAW + b"VIRUS-MARKER"))).startswith("250 2.7.0")
    assert [] == fwd.sent


async def test_banned_attachment_is_discarded_and_quarantined() -> None:
    """A banned attachment gets the banned destiny (discard) and is quarantined."""
    data = (
        b"From: a@b\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b"Content-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/octet-stream;"
        b' name="invoice.pdf.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAA==\r\n--B--\r\n'
    )
    f, fwd = make()
    reply = await f.handle(msg(data))
    assert reply.startswith("250 2.7.0")
    assert "BANNED" in reply
    assert [] == fwd.sent
    assert f.store is not None
    assert ["banned"] == [e.category for e in f.store.search(Query()).entries]


async def test_bad_header_is_passed_by_default_and_can_be_rejected() -> None:
    """Raw 8-bit bytes in the header are 'bad header': passed by default, 554 on request."""
    data = b"Subject: caf\xe9\r\n\r\nbody\r\n"
    f, _ = make()
    assert (await f.handle(msg(data))).startswith("250 2.0.0")
    f, _ = make(PolicyConfig(bad_header_destiny=Destiny.REJECT))
    assert (await f.handle(msg(data))).startswith("554")


async def test_whitelisted_sender_is_never_spam() -> None:
    """A whitelisted sender's GTUBE is delivered untagged, score shown lowered by 10."""
    f, fwd = make(PolicyConfig(spam_destiny=Destiny.DISCARD), Lists(whitelist=lst("shop.test")))
    assert (await f.handle(msg(GTUBE))).startswith("250 2.0.0")
    out = fwd.sent[0].data
    assert b"X-Spam-Flag: NO" in out
    assert b"X-Spam-Score: 990.000" in out
    assert b"***SPAM***" not in out


async def test_whitelist_matches_from_address_too() -> None:
    """The From address counts like the envelope sender."""
    f, _ = make(PolicyConfig(spam_destiny=Destiny.DISCARD), Lists(whitelist=lst("news@shop.test")))
    assert (await f.handle(msg(GTUBE, sender="bounces-123@mailer.test"))).startswith("250 2.0.0")


async def test_blacklisted_sender_is_always_spam() -> None:
    """A blacklisted sender's harmless mail is spam."""
    f, fwd = make(PolicyConfig(spam_destiny=Destiny.DISCARD), Lists(blacklist=lst(".shop.test")))
    assert (await f.handle(msg(RAW))).startswith("250 2.7.0")
    assert [] == fwd.sent


async def test_spam_lover_gets_spam_others_do_not() -> None:
    """For a spam lover a blocking spam destiny becomes pass; others still lose it."""
    lovers = Lists(spam_lovers=lst("carol@example.com"))
    f, fwd = make(PolicyConfig(spam_destiny=Destiny.DISCARD), lovers)
    reply = await f.handle(msg(GTUBE, "bob@example.com", "carol@example.com"))
    assert reply.startswith("250 2.0.0")
    assert [["carol@example.com"]] == [s.recipients for s in fwd.sent]
    assert b"X-Spam-Flag: YES" in fwd.sent[0].data


async def test_per_recipient_split_whitelisted_and_normal() -> None:
    """One GTUBE message, one recipient whitelists the sender: two transactions, two markings."""
    lists = Lists(whitelist=lst("news@shop.test  alice@example.com"))
    f, fwd = make(lists=lists)
    reply = await f.handle(msg(GTUBE, "bob@example.com", "alice@example.com"))
    assert reply.startswith("250 2.0.0")
    by_rcpt = {tuple(s.recipients): s.data for s in fwd.sent}
    assert {("bob@example.com",), ("alice@example.com",)} == set(by_rcpt)
    assert b"Subject: ***SPAM*** offer" in by_rcpt[("bob@example.com",)]
    assert b"Subject: offer" in by_rcpt[("alice@example.com",)]


async def test_per_recipient_split_one_deferred_means_451() -> None:
    """If one group's re-injection is deferred, the whole message is retried (no loss)."""
    lists = Lists(whitelist=lst("news@shop.test  alice@example.com"))
    f, fwd = make(lists=lists)
    fwd.rcpt_replies["alice@example.com"] = Reply(451, "4.3.0 try later")
    assert (await f.handle(msg(GTUBE, "bob@example.com", "alice@example.com"))).startswith("451")


@pytest.mark.parametrize("refused", ["bob@example.com", "alice@example.com"])
async def test_per_recipient_split_one_refused_gets_our_dsn(refused: str) -> None:
    """A group refused for good while another is delivered: 250 and our DSN, whatever the order."""
    lists = Lists(whitelist=lst("news@shop.test  alice@example.com"))
    f, fwd = make(lists=lists)
    fwd.rcpt_replies[refused] = Reply(550, "5.1.1 no such user")
    reply = await f.handle(msg(GTUBE, "bob@example.com", "alice@example.com"))
    assert reply.startswith("250 2.0.0 Ok")
    assert "from downstream" in reply
    dsns = [s for s in fwd.sent if s.mail_from == ""]
    assert [["news@shop.test"]] == [s.recipients for s in dsns]
    assert refused.encode() in dsns[0].data


async def test_per_recipient_split_all_refused_is_not_bounced_twice() -> None:
    """Every group refused for good: our DSNs, and a 250 so Postfix does not bounce again."""
    lists = Lists(whitelist=lst("news@shop.test  alice@example.com"))
    f, fwd = make(lists=lists)
    fwd.rcpt_replies["bob@example.com"] = Reply(550, "5.1.1 no such user")
    fwd.rcpt_replies["alice@example.com"] = Reply(550, "5.1.1 no such user")
    reply = await f.handle(msg(GTUBE, "bob@example.com", "alice@example.com"))
    assert reply.startswith("250 2.0.0 Ok")
    assert "DSN sent" in reply
    assert 2 == len([s for s in fwd.sent if s.mail_from == ""])


async def test_single_transaction_refusal_goes_back_to_postfix() -> None:
    """Without a split, a permanent refusal is Postfix's to bounce (no DSN of ours)."""
    f, fwd = make()
    fwd.rcpt_replies["bob@example.com"] = Reply(550, "5.1.1 no such user")
    assert (await f.handle(msg(b"Subject: hi\r\n\r\nhello\r\n", "bob@example.com"))).startswith(
        "550"
    )
    assert [] == [s for s in fwd.sent if s.mail_from == ""]


async def test_per_recipient_levels() -> None:
    """A recipient's own kill level overrides the global one (most specific entry wins)."""
    policy = PolicyConfig(
        spam_destiny=Destiny.DISCARD,
        per_recipient=(
            ("boss@example.com", (("kill", 2000.0), ("tag2", 2000.0))),
            (".example.com", (("kill", 0.1),)),
        ),
    )
    f, fwd = make(policy)
    await f.handle(msg(GTUBE, "boss@example.com", "bob@example.com"))
    assert [["boss@example.com"]] == [s.recipients for s in fwd.sent]
    assert b"X-Spam-Flag: NO" in fwd.sent[0].data


async def test_x_spam_status_shows_the_configured_tag_level() -> None:
    """tagged_above= is the recipient's tag level from the configuration, not a fixed 2."""
    policy = from_mapping({"policy": {"tag_level": 0.25, "tag2_level": 4.5}}).policy
    f, fwd = make(policy)
    await f.handle(msg(RAW))
    status = [line for line in fwd.sent[0].data.split(b"\r\n") if b"X-Spam-Status" in line]
    assert [b"X-Spam-Status: No, score=0.500 tagged_above=0.25 required=4.5"] == status


async def test_tagged_above_follows_a_per_recipient_tag_level() -> None:
    """A recipient's own tag level is the one its copy's X-Spam-Status shows."""
    policy = PolicyConfig(per_recipient=(("bob@example.com", (("tag", -3.0),)),))
    f, fwd = make(policy)
    await f.handle(msg(RAW))
    assert b"tagged_above=-3 required=6.31" in fwd.sent[0].data


def test_quarantine_store_round_trip(tmp_path: Path) -> None:
    """Write, list, record a release (a second is refused), delete, expire."""
    store = Store(tmp_path / "q")
    entry = Entry(new_id(), "virus", "X", "a@b", ["c@d"], 39 * 86400.0, 3)
    store.write(entry, b"abc")
    assert [entry.id] == [e.id for e in store.entries()]
    assert b"abc" == store.message(entry.id)
    store.record_release(entry.id, ["c@d"], "250 ok")
    with pytest.raises(QuarantineError, match="already released"):
        store.record_release(entry.id, ["c@d"], "250 ok")
    old = replace(entry, id=new_id() + "0", received_at=0.0)
    store.write(old, b"x")
    assert 1 == store.expire(30, now=40 * 86400.0)
    store.delete(entry.id)
    assert [] == list(store.entries())


def test_quarantine_ids_are_checked(tmp_path: Path) -> None:
    """A path-like id is refused, not followed."""
    with pytest.raises(QuarantineError):
        Store(tmp_path).get("../../etc/passwd")


async def test_notices_are_throttled() -> None:
    """Per category at most max_per_hour notices; the rest are counted into the next one."""
    fwd = FakeForwarder()
    clock = FakeClock()
    notices = Notices(
        NoticesConfig(admins=("admin@example.com",), max_per_hour=3), fwd, "gw", clock
    )
    entry = Entry(new_id(), "virus", "EICAR", "a@b", ["c@d"], 0.0, 1)
    for _ in range(10):
        await notices.notify(entry, b"")
    assert 3 == len(fwd.sent)
    clock.advance(3601)
    await notices.notify(entry, b"")
    assert 4 == len(fwd.sent)
    assert b"7 more virus notice(s)" in fwd.sent[-1].data
    assert b"mail-filter quarantine release " + entry.id.encode() in fwd.sent[-1].data


async def test_notices_only_for_configured_categories() -> None:
    """A category not listed gets no notice."""
    fwd = FakeForwarder()
    notices = Notices(NoticesConfig(admins=("a@x",), categories=("virus",)), fwd, "gw")
    await notices.notify(Entry(new_id(), "banned", "x.exe", "a@b", ["c@d"], 0.0, 1), b"")
    assert [] == fwd.sent


# Allow entries from the quarantine portal


async def test_a_recipients_allow_entry_counts_from_the_next_message_on() -> None:
    """Spam held for Bob and Carol; Bob allows the sender in the portal: the next such
    message reaches Bob (untagged, not held) and is still held for Carol."""
    policy = PolicyConfig(
        spam_destiny=Destiny.DISCARD, quarantine=(*PolicyConfig().quarantine, Category.SPAM)
    )
    f, fwd = make(policy)
    assert f.store is not None
    assert (await f.handle(msg(GTUBE, "bob@example.com", "carol@example.com"))).startswith(
        "250 2.7.0"
    )
    assert [] == fwd.sent
    f.store.allow("Bob@Example.com", "News@Shop.test", Actor("bob@example.com", "192.0.2.1"))
    reply = await f.handle(msg(GTUBE, "bob@example.com", "carol@example.com"))
    assert reply.startswith("250 2.0.0")
    assert [["bob@example.com"]] == [s.recipients for s in fwd.sent]
    assert b"X-Spam-Flag: NO" in fwd.sent[0].data
    assert b"***SPAM***" not in fwd.sent[0].data
    held = f.store.search(Query()).entries
    assert [["carol@example.com"], ["bob@example.com", "carol@example.com"]] == [
        e.recipients for e in held
    ]


async def test_an_allow_entry_never_passes_a_virus() -> None:
    """Allowing a sender is about spam: their virus is still discarded and held."""
    f, fwd = make()
    assert f.store is not None
    f.store.allow("bob@example.com", "news@shop.test", Actor("bob@example.com", "local"))
    assert (await f.handle(msg(RAW + b"VIRUS-MARKER"))).startswith("250 2.7.0")
    assert [] == fwd.sent


async def test_allow_entries_that_cannot_be_read_allow_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store whose allow list fails treats the message as without entries, warning once."""
    f, fwd = make(PolicyConfig(spam_destiny=Destiny.DISCARD))
    assert isinstance(f.store, DirectoryStore)
    f.store.allow("bob@example.com", "news@shop.test", Actor("bob@example.com", "local"))

    def broken(recipient: str, senders: object) -> bool:
        raise QuarantineError("allow.sqlite3: disk I/O error")

    f.store.is_allowed = broken  # type: ignore[method-assign]
    for _ in range(3):
        assert (await f.handle(msg(GTUBE))).startswith("250 2.7.0")
    assert [] == fwd.sent
    assert 1 == caplog.text.count("quarantine store not answering")
