"""The per-message pipeline with fake scanners and a fake downstream: every answer."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import tempfile
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from filter.config import Config, PolicyConfig, ServerConfig, SpamdConfig
from filter.message import Message, queue_id_of
from filter.qdir import DirectoryStore
from filter.qstore import Query
from filter.service import Filter
from filter.smtp_out import Reply
from filter.verdicts import Destiny
from tests.filter.fakes import FakeClamd, FakeForwarder, FakeSpamd

BODY = b"\r\nHello,\r\n.this line starts with a dot\r\n\xc3\xa9 8-bit\r\n"
RAW = (
    b"Received: from client (client [192.0.2.9]) by gw (Postfix) with ESMTP id 4AbCdEf123\r\n"
    b"From: a@example.net\r\nTo: b@example.com\r\nSubject: test\r\n" + BODY
)


_QUARANTINES = tempfile.TemporaryDirectory(prefix="mfq")  # removed at exit


def make(
    cfg: Config | None = None, score: float = 0.5
) -> tuple[Filter, FakeClamd, FakeSpamd, FakeForwarder]:
    clam, spam, fwd = FakeClamd(), FakeSpamd(score), FakeForwarder()
    cfg = cfg or Config(server=ServerConfig(hostname="gw.test"))
    store = DirectoryStore(Path(tempfile.mkdtemp(prefix="q", dir=_QUARANTINES.name)))
    return Filter(cfg, clam, spam, fwd, store=store), clam, spam, fwd


def message(
    data: bytes = RAW, rcpts: tuple[str, ...] = ("b@example.com",), sender: str = "a@example.net"
) -> Message:
    options = ("SIZE=100", "BODY=8BITMIME")
    xforward = {"ADDR": "192.0.2.9"}
    return Message(sender, rcpts, data, options, False, "client.test", "127.0.0.1", xforward)


async def test_clean_mail_is_marked_and_passed_byte_identical() -> None:
    """Clean mail gets Received and X-Virus-Scanned; the original bytes follow unchanged."""
    f, _, _, fwd = make()
    reply = await f.handle(message())
    assert reply.startswith("250 2.0.0 Ok")
    assert "queued as ABC123" in reply
    out = fwd.sent[0].data
    assert out.endswith(RAW)
    assert out.startswith(b"Received: from client.test ([127.0.0.1]) by gw.test (mail-filter)")
    assert b"X-Virus-Scanned: by mail-filter at gw.test\r\n" in out
    assert b"X-Spam-Flag" not in out  # below the tag level


async def test_envelope_and_xforward_are_preserved() -> None:
    """Sender, recipients, SIZE (new), BODY and XFORWARD attributes go downstream."""
    f, _, _, fwd = make()
    await f.handle(message(rcpts=("b@example.com", "c@example.com")))
    sent = fwd.sent[0]
    assert ("a@example.net", ["b@example.com", "c@example.com"]) == (
        sent.mail_from,
        sent.recipients,
    )
    assert f"SIZE={len(sent.data)}" == sent.mail_params[0]
    assert "BODY=8BITMIME" in sent.mail_params
    assert {"ADDR": "192.0.2.9"} == sent.xforward


async def test_virus_is_discarded_and_quarantined_by_default() -> None:
    """amavisd-new's default: a virus is discarded (250 2.7.0 naming it) and quarantined."""
    f, _, _, fwd = make()
    reply = await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))
    assert reply.startswith("250 2.7.0 Ok, discarded")
    assert "INFECTED: Fake.Virus" in reply
    assert [] == fwd.sent
    assert f.store is not None
    [entry] = list(f.store.search(Query()).entries)
    assert ("virus", ["b@example.com"]) == (entry.category, entry.recipients)
    assert f.store.message(entry.id).endswith(RAW + b"VIRUS-MARKER\r\n")


async def test_virus_can_be_rejected_with_its_name() -> None:
    """virus_destiny = reject answers 554 naming the virus."""
    f, _, _, fwd = make(Config(policy=PolicyConfig(virus_destiny=Destiny.REJECT)))
    reply = await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))
    assert reply.startswith("554 5.7.1 Rejected")
    assert "INFECTED: Fake.Virus" in reply
    assert [] == fwd.sent


async def test_virus_cancels_the_spam_scan() -> None:
    """spamd's work is abandoned once clamd finds a virus."""
    f, _, spam, _ = make()
    spam.delay = 5
    reply = await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))
    assert "INFECTED" in reply
    await asyncio.sleep(0)  # let the cancellation be delivered
    assert spam.cancelled


@pytest.mark.parametrize("kind", ["connect", "timeout", "protocol"])
async def test_clamd_down_is_451(kind: str) -> None:
    """No virus verdict means 451, never unscanned mail."""
    f, clam, _, fwd = make()
    clam.fail = kind
    assert (await f.handle(message())).startswith("451 4.3.0 Virus scanner unavailable")
    assert [] == fwd.sent


async def test_clamd_error_reply_is_451() -> None:
    """clamd's own ERROR reply (e.g. its size limit) is 'not scanned': 451."""
    f, clam, _, fwd = make()
    clam.error_reply = True
    assert (await f.handle(message())).startswith("451")
    assert [] == fwd.sent


async def test_spamd_down_is_451() -> None:
    """No spam verdict also means 451."""
    f, _, spam, fwd = make()
    spam.fail = "connect"
    assert (await f.handle(message())).startswith("451 4.3.0 Spam scanner unavailable")
    assert [] == fwd.sent


async def test_spam_is_tagged_in_amavis_format() -> None:
    """At tag2 the flag is YES, the subject is prefixed, and the status lists the rules."""
    f, _, _, fwd = make()
    reply = await f.handle(message(RAW.replace(b"Hello", b"GTUBE")))
    assert reply.startswith("250")
    out = fwd.sent[0].data
    assert b"X-Spam-Flag: YES\r\n" in out
    assert b"X-Spam-Score: 1000.000\r\n" in out
    assert b"X-Spam-Level: " + b"*" * 64 + b"\r\n" in out
    assert b"X-Spam-Status: Yes, score=1000.000 tagged_above=2 required=6.31 tests=[GTUBE]" in out
    assert b"Subject: ***SPAM*** test\r\n" in out
    assert out.endswith(
        RAW.replace(b"Hello", b"GTUBE").replace(b"Subject: test", b"Subject: ***SPAM*** test")
    )


async def test_between_tag_and_tag2_headers_but_no_prefix() -> None:
    """A score between tag and tag2 gets X-Spam headers with flag NO and no prefix."""
    f, _, _, fwd = make(score=3.2)
    await f.handle(message())
    out = fwd.sent[0].data
    assert b"X-Spam-Flag: NO\r\nX-Spam-Score: 3.200\r\nX-Spam-Level: ***\r\n" in out
    assert b"Subject: test\r\n" in out


async def test_forged_spam_headers_are_stripped() -> None:
    """A sender's own X-Spam-Flag: NO does not survive."""
    f, _, _, fwd = make()
    await f.handle(message(b"X-Spam-Flag: NO\r\n" + RAW))
    assert b"X-Spam-Flag: NO" not in fwd.sent[0].data


async def test_large_message_skips_spam_scan_and_says_so() -> None:
    """Over spamd.max_size, spamd is not asked and a header says why."""
    cfg = Config(server=ServerConfig(hostname="gw.test"), spamd=SpamdConfig(max_size=100))
    f, _, spam, fwd = make(cfg)
    assert (await f.handle(message())).startswith("250")
    assert 0 == spam.calls
    assert b"X-Spam-Skipped: message of" in fwd.sent[0].data


async def test_message_deadline_is_451() -> None:
    """A scan outliving the per-message deadline answers 451."""
    cfg = Config(server=ServerConfig(hostname="gw.test", message_timeout=1))
    f, clam, _, fwd = make(cfg)
    clam.delay = 3
    assert (await f.handle(message())).startswith("451 4.4.7")
    assert [] == fwd.sent


async def test_downstream_tempfail_is_451() -> None:
    """A 4xx after DATA downstream is a 451 here."""
    f, _, _, fwd = make()
    fwd.data_reply = Reply(451, "4.3.0 queue file write error")
    assert (await f.handle(message())).startswith("451 4.3.0 Downstream: 451")


async def test_downstream_unreachable_is_451() -> None:
    """Connection trouble downstream is a 451."""
    f, _, _, fwd = make()
    fwd.error = "ConnectionRefusedError: refused"
    assert (await f.handle(message())).startswith("451 4.3.0 Could not hand the message back")


async def test_downstream_5xx_for_all_is_the_same_5xx() -> None:
    """Every recipient refused for good: Postfix gets that 5xx and bounces."""
    f, _, _, fwd = make()
    fwd.rcpt_replies["b@example.com"] = Reply(550, "5.1.1 <b@example.com>: unknown user")
    assert "550 5.1.1 <b@example.com>: unknown user" == await f.handle(message())


async def test_partial_5xx_sends_a_dsn_and_accepts() -> None:
    """One recipient refused for good, one accepted: 250, and a DSN reports the refused one."""
    f, _, _, fwd = make()
    fwd.rcpt_replies["c@example.com"] = Reply(550, "5.1.1 unknown user")
    reply = await f.handle(message(rcpts=("b@example.com", "c@example.com")))
    assert reply.startswith("250")
    dsn = fwd.sent[1]
    assert ("", ["a@example.net"]) == (dsn.mail_from, dsn.recipients)
    assert b"Final-Recipient: rfc822; c@example.com" in dsn.data
    assert b"Status: 5.1.1" in dsn.data
    assert b"b@example.com>: " not in dsn.data.split(b"text/rfc822-headers")[0]


async def test_partial_5xx_with_failed_dsn_is_451() -> None:
    """If the DSN cannot be handed over, Postfix must retry: 451."""
    f, _, _, fwd = make()
    fwd.rcpt_replies["c@example.com"] = Reply(550, "5.1.1 unknown user")
    fwd.dsn_fails = True
    assert (await f.handle(message(rcpts=("b@example.com", "c@example.com")))).startswith("451")


async def test_partial_4xx_is_451() -> None:
    """A deferred recipient means 451 for the message (a duplicate beats a loss)."""
    f, _, _, fwd = make()
    fwd.rcpt_replies["c@example.com"] = Reply(450, "4.2.0 mailbox busy")
    assert (await f.handle(message(rcpts=("b@example.com", "c@example.com")))).startswith("451")


async def test_no_dsn_for_the_null_sender() -> None:
    """A bounce whose recipient is refused is not bounced again."""
    f, _, _, fwd = make()
    fwd.rcpt_replies["c@example.com"] = Reply(550, "5.1.1 unknown user")
    reply = await f.handle(message(rcpts=("b@example.com", "c@example.com"), sender=""))
    assert reply.startswith("250")
    assert 1 == len(fwd.sent)


async def test_metrics_count_outcomes() -> None:
    """Messages are counted by outcome."""
    f, clam, _, _ = make()
    await f.handle(message())
    await f.handle(message(RAW + b"VIRUS-MARKER"))
    clam.fail = "connect"
    await f.handle(message())
    sample = f.metrics.registry.get_sample_value
    assert 1.0 == sample("mailfilter_messages_total", {"outcome": "clean"})
    assert 1.0 == sample("mailfilter_messages_total", {"outcome": "virus"})
    assert 1.0 == sample("mailfilter_messages_total", {"outcome": "tempfail"})
    assert 1.0 == sample("mailfilter_scanner_errors_total", {"scanner": "clamd", "kind": "connect"})


def test_policy_defaults_follow_amavis() -> None:
    """tag 2.0, tag2 6.31, prefix ***SPAM***."""
    p = PolicyConfig()
    assert (2.0, 6.31, "***SPAM*** ") == (p.tag_level, p.tag2_level, p.subject_prefix)


@pytest.mark.parametrize(
    ("zipped", "padding"),
    [(False, 0), (True, 0), (False, 200 * 1024), (True, 200 * 1024)],
    ids=["small", "small-zip", "large", "large-zip"],
)
async def test_banned_attachments_are_found_small_or_large_zipped_or_not(
    zipped: bool, padding: int
) -> None:
    """An .exe is banned whether checked on the event loop, or in a thread (big or zipped)."""
    f, _, _, fwd = make()
    exe = b"MZ payload"
    if zipped:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("evil.exe", exe)
        exe = buf.getvalue()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.net", "b@example.com", "attachment"
    msg.set_content("see attached\n" + "x" * padding)
    name = "d.zip" if zipped else "evil.exe"
    msg.add_attachment(exe, maintype="application", subtype="octet-stream", filename=name)
    reply = await f.handle(message(msg.as_bytes()))
    assert reply.startswith("250 2.7.0 Ok, discarded")
    assert "evil.exe" in reply
    assert [] == fwd.sent


def test_log_text_is_cleaned_of_quotes_and_controls() -> None:
    """Quotes and unprintable characters become "?" in log fields; plain text is unchanged."""
    from filter.message import _clean

    assert "a?b?c" == _clean('a"b\x00c')
    assert "a@example.test" == _clean("a@example.test")


def test_received_date_is_formatdate_of_this_second() -> None:
    """The cached date is exactly email.utils.formatdate(localtime=True) of the current second."""
    import email.utils
    import time

    from filter.marks import _date_now

    for _ in range(3):  # a second may tick between the two calls
        second = int(time.time())
        date = _date_now()
        if int(time.time()) == second:
            assert email.utils.formatdate(second, localtime=True) == date
            return
    raise AssertionError("the clock ticked every time")


@pytest.mark.parametrize("remove", [True, False])
async def test_a_dot_line_made_by_marking_is_still_stuffed(remove: bool) -> None:
    """A forged X-Spam field ending in a lone CR, removed by marking, joins that CR to a
    following '.' line: the re-injected payload must stuff it, never end the data there."""
    policy = PolicyConfig(remove_existing_spam_headers=remove)
    f, _, _, fwd = make(Config(server=ServerConfig(hostname="gw.test"), policy=policy))
    raw = (
        b"Subject: hi\r\nX-Spam-Flag: YES\r.\r\nMAIL FROM:<x@evil.test>\r\n"
        b"From: a@example.net\r\n\r\nbody\r\n"
    )
    msg = dataclasses.replace(message(raw), dot_lines=False)  # as the decoder saw it
    assert (await f.handle(msg)).startswith("250")
    [payload] = fwd.payloads
    assert len(payload) - 5 == payload.find(b"\r\n.\r\n")  # only the real end line
    assert b"\r\n.\r\nMAIL FROM" not in payload


_HEAD_PIECES = st.sampled_from(
    [b"X-Spam-Flag: YES", b"X-Spam-Status: No", b"Subject: s", b".", b".x", b"..", b" cont",
     b"From: a@example.net", b"x"]
)  # fmt: skip
_ENDS = st.sampled_from([b"\r\n", b"\r", b"\n"])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(_HEAD_PIECES, _ENDS), max_size=6),
    st.lists(st.sampled_from([b"body", b".", b".x", b""]), max_size=3),
    st.booleans(),
)
@example([(b"Subject: s", b"\r\n"), (b"X-Spam-Flag: YES", b"\r"), (b".", b"\r\n")], [], True)
def test_no_line_of_a_marked_message_starts_with_a_lone_dot(
    head: list[tuple[bytes, bytes]], body: list[bytes], remove: bool
) -> None:
    """Any header lines, lone CRs and dots, any marking: every line of the re-injected
    payload that starts with a dot starts with two, but the final end line."""
    raw = b"".join(a + b for a, b in head) + b"\r\n" + b"".join(line + b"\r\n" for line in body)
    dotted = raw.startswith(b".") or b"\r\n." in raw  # what the DATA decoder reports
    policy = PolicyConfig(remove_existing_spam_headers=remove)
    f, _, _, fwd = make(Config(server=ServerConfig(hostname="gw.test"), policy=policy))
    msg = dataclasses.replace(message(raw), dot_lines=dotted)
    assert asyncio.run(f.handle(msg)).startswith("250")
    [payload] = fwd.payloads
    assert payload.endswith(b"\r\n.\r\n")
    for line in payload[:-3].split(b"\n"):
        assert not line.startswith(b".") or line.startswith(b".."), payload


async def test_a_retry_after_a_lost_250_is_held_once() -> None:
    """Postfix retrying a held message (its 250 lost) gets the first entry's id, not a second."""
    f, _, _, _ = make()
    first = await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))
    again = await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))
    assert f.store is not None
    [entry] = f.store.search(Query()).entries
    assert entry.id in first
    assert entry.id in again


async def test_holds_are_counted_by_category_once_each() -> None:
    """mailfilter_quarantined_total counts new entries by category; a retry adds none."""
    f, _, _, _ = make()
    sample = f.metrics.registry.get_sample_value
    assert 0.0 == sample("mailfilter_quarantined_total", {"category": "virus"})
    await f.handle(message())
    await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))
    await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))  # Postfix's retry: held before
    assert 1.0 == sample("mailfilter_quarantined_total", {"category": "virus"})
    assert 0.0 == sample("mailfilter_quarantined_total", {"category": "clean"})


async def test_a_retry_after_a_451_following_the_hold_is_held_once() -> None:
    """Held, then a deferred re-injection made it 451: the retry delivers under the same id."""
    cfg = Config(policy=PolicyConfig(virus_destiny=Destiny.PASS))
    f, _, _, fwd = make(cfg)
    fwd.data_reply = Reply(451, "4.3.0 try later")
    assert (await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))).startswith("451")
    fwd.data_reply = Reply(250, "2.0.0 Ok: queued as ABC123")
    assert (await f.handle(message(RAW + b"VIRUS-MARKER\r\n"))).startswith("250")
    assert f.store is not None
    [entry] = f.store.search(Query()).entries
    assert f"X-Quarantine-ID: <{entry.id}>".encode() in fwd.sent[-1].data


async def test_two_messages_alike_but_for_the_queue_id_are_two_entries() -> None:
    """Another queue id (or none at all) is another message: each is held."""
    f, _, _, _ = make()
    other = RAW.replace(b"id 4AbCdEf123", b"id 4ZzZzZz999")
    no_received = RAW.split(b"\r\n", 1)[1]
    for data in (RAW, other, no_received, no_received):
        await f.handle(message(data + b"VIRUS-MARKER\r\n"))
    assert f.store is not None
    assert 4 == f.store.count(Query())


def test_the_queue_id_is_postfixs_not_one_in_the_clients_helo() -> None:
    """Postfix's folded Received: the id on its "by" line, whatever the HELO says."""
    data = (
        b"Received: from x id FORGED1 (client.example [192.0.2.9])\r\n"
        b"\tby gw.example (Postfix) with ESMTP id 4AbCdEf123\r\n"
        b"\tfor <b@example.com>; Mon, 1 Jan 2029 00:00:00 +0000 (UTC)\r\n"
        b"Subject: s\r\n\r\nbody\r\n"
    )
    assert "4AbCdEf123" == queue_id_of(data)
    assert "4AbCdEf123" == queue_id_of(RAW)
    assert "-" == queue_id_of(b"Received: from a by b; date\r\n\r\n")
