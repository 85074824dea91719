"""The typed delivery outcome: what a fake downstream's 250/451/550 per recipient mean."""

from __future__ import annotations

from filter.delivery import Courier, Fate
from filter.message import Message
from filter.metrics import Metrics
from filter.smtp_out import Reply
from tests.filter.fakes import FakeForwarder

DATA = b"From: a@example.net\r\nSubject: x\r\n\r\nbody\r\n"
OK = Reply(250, "2.1.5 Ok")
BUSY = Reply(451, "4.2.0 mailbox busy")
UNKNOWN = Reply(550, "5.1.1 unknown user")


def courier(**replies: Reply) -> tuple[Courier, FakeForwarder, Metrics]:
    """A courier over a fake downstream answering RCPT per local part (``b=UNKNOWN``)."""
    fwd = FakeForwarder(rcpt_replies={f"{k}@example.com": v for k, v in replies.items()})
    metrics = Metrics()
    return Courier(fwd, metrics, "gw.test"), fwd, metrics


def message(*locals_: str, sender: str = "a@example.net") -> Message:
    return Message(sender, tuple(f"{n}@example.com" for n in locals_), DATA)


def failures(metrics: Metrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value("mailfilter_reinject_failures_total", {"kind": kind})


async def test_every_recipient_accepted_is_delivered() -> None:
    """250 for each recipient and for DATA: DELIVERED, nothing refused, no DSN."""
    c, fwd, _ = courier()
    msg = message("b", "c")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.DELIVERED == handoff.fate
    assert ("b@example.com", "c@example.com") == handoff.recipients
    assert Reply(250, "2.0.0 Ok: queued as ABC123") == handoff.downstream
    assert {} == dict(handoff.refused)
    assert 1 == len(fwd.sent)


async def test_one_recipient_refused_for_good_is_delivered_with_our_dsn() -> None:
    """250 and 550: DELIVERED for the group, the 550 recipient reported in our DSN."""
    c, fwd, metrics = courier(c=UNKNOWN)
    msg = message("b", "c")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.DELIVERED == handoff.fate
    assert {"c@example.com": UNKNOWN} == dict(handoff.refused)
    assert handoff.reported
    assert ["a@example.net"] == fwd.sent[-1].recipients  # the DSN
    assert "" == fwd.sent[-1].mail_from
    assert 1.0 == failures(metrics, "partial")


async def test_one_recipient_deferred_defers_the_group() -> None:
    """250 and 451: DEFERRED (Postfix retries; a duplicate rather than a loss), no DSN."""
    c, fwd, metrics = courier(c=BUSY)
    msg = message("b", "c")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.DEFERRED == handoff.fate
    assert "Downstream deferred some recipients: 451 4.2.0 mailbox busy" == handoff.why
    assert 1 == len(fwd.sent)
    assert 1.0 == failures(metrics, "partial")


async def test_deferral_wins_over_a_refusal() -> None:
    """451 and 550 with 250 for a third: DEFERRED; the 550 is not reported yet."""
    c, fwd, _ = courier(c=BUSY, d=UNKNOWN)
    msg = message("b", "c", "d")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.DEFERRED == handoff.fate
    assert 1 == len(fwd.sent)


async def test_whole_message_refused_goes_back_to_postfix() -> None:
    """550 for every recipient of the whole message: REFUSED, unreported, the 550 to answer."""
    c, fwd, metrics = courier(b=UNKNOWN)
    msg = message("b")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.REFUSED == handoff.fate
    assert not handoff.reported
    assert UNKNOWN == handoff.refusal
    assert 1 == len(fwd.sent)
    assert 1.0 == failures(metrics, "permanent")


async def test_a_group_refused_for_good_is_reported_by_our_dsn() -> None:
    """550 for a group that is not the whole message: REFUSED and reported by our DSN."""
    c, fwd, _ = courier(c=UNKNOWN)
    msg = message("b", "c")
    handoff = await c.hand_back(msg, ("c@example.com",), DATA)
    assert Fate.REFUSED == handoff.fate
    assert handoff.reported
    assert {"c@example.com": UNKNOWN} == dict(handoff.refused)
    assert ["a@example.net"] == fwd.sent[-1].recipients


async def test_a_dsn_that_cannot_be_sent_defers() -> None:
    """Our DSN refused by the downstream: DEFERRED, so nothing is lost."""
    c, fwd, _ = courier(c=UNKNOWN)
    fwd.dsn_fails = True
    msg = message("b", "c")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.DEFERRED == handoff.fate
    assert "Could not report refused recipients to the sender" == handoff.why


async def test_the_null_sender_gets_no_dsn() -> None:
    """A refused recipient of a bounce: DELIVERED for the rest, and no bounce of a bounce."""
    c, fwd, _ = courier(c=UNKNOWN)
    msg = message("b", "c", sender="")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.DELIVERED == handoff.fate
    assert 1 == len(fwd.sent)


async def test_a_broken_connection_defers() -> None:
    """No reply at all (connection lost): DEFERRED naming the error, no downstream reply."""
    c, fwd, metrics = courier()
    fwd.error = "timeout: "
    msg = message("b")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert (Fate.DEFERRED, None) == (handoff.fate, handoff.downstream)
    assert "Could not hand the message back to Postfix (timeout: )" == handoff.why
    assert 1.0 == failures(metrics, "connection")


async def test_a_temporary_data_reply_defers() -> None:
    """Every recipient accepted, DATA answered 451: DEFERRED."""
    c, fwd, metrics = courier()
    fwd.data_reply = Reply(451, "4.3.0 try later")
    msg = message("b")
    handoff = await c.hand_back(msg, msg.rcpt_tos, DATA)
    assert Fate.DEFERRED == handoff.fate
    assert "Downstream: 451 4.3.0 try later" == handoff.why
    assert 1.0 == failures(metrics, "temporary")
