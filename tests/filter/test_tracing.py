"""filter.tracing: one timeline per message from the real gateway's lines, in bounded memory."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from datetime import datetime
from operator import attrgetter

import pytest

from filter import tracing
from filter.maillog import Event, Kind, YearGuess, event_of, parse_line
from filter.tracing import Criteria, Lookup, Timeline, Tracer, as_json, criteria_for, render
from tests.filter.trace_samples import AUDIT_LOG, FILTER_LOG, MAILLOG

YEARS = YearGuess(datetime(2026, 12, 5).timestamp())
SPAM_HELD = "20261204-210051-3fc94dabf8"
VIRUS_HELD = "20261204-210051-7922242611"


def events(text: str) -> Iterator[Event]:
    """The events of a log's literal text."""
    for raw in text.splitlines():
        line = parse_line(raw, YEARS)
        found = event_of(line) if line is not None else None
        if found is not None:
            yield found


def trace(
    query: str | Criteria,
    logs: Sequence[str] = (MAILLOG, FILTER_LOG, AUDIT_LOG),
    lookup: Lookup | None = None,
) -> list[Timeline]:
    """Feed the logs, merged by time as the command does, to a tracer; its timelines."""
    criteria = criteria_for(query) if isinstance(query, str) else query
    tracer = Tracer(criteria, lookup=lookup)
    for event in heapq.merge(*(events(log) for log in logs), key=attrgetter("at")):
        tracer.add(event)
    return tracer.finish()


def one(query: str | Criteria, lookup: Lookup | None = None) -> Timeline:
    """The one timeline a query finds."""
    found = trace(query, lookup=lookup)
    assert 1 == len(found), [t.queue_ids for t in found]
    return found[0]


def steps(timeline: Timeline) -> list[str]:
    """A timeline's steps as ``where: what``."""
    return [f"{s.where}: {s.what}" for s in timeline.steps]


# -- what a query names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (SPAM_HELD, Criteria(quarantine_ids=frozenset([SPAM_HELD]))),
        ("<A@B.example>", Criteria(message_ids=frozenset(["a@b.example"]))),
        (
            "Alice@Example.com",
            Criteria(
                message_ids=frozenset(["alice@example.com"]), addresses=("alice@example.com",)
            ),
        ),
        ("@example.com", Criteria(addresses=("@example.com",))),
        ("054DD2307FC", Criteria(ids=frozenset(["054DD2307FC"]))),
    ],
)
def test_a_query_is_told_apart_by_its_shape(query: str, expected: Criteria) -> None:
    """Quarantine id, <Message-ID>, address (or bare Message-ID), @domain, else a queue id."""
    assert expected == criteria_for(query)


# -- following one message ---------------------------------------------------------------------


def test_a_clean_message_from_an_authenticated_user_through_the_filter() -> None:
    """Front queue id A, the filter's verdict, re-injected as B, delivered: one timeline."""
    found = one("054DD2307FC")
    assert ("054DD2307FC", "25154230806") == found.queue_ids
    assert ("d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net",) == found.message_ids
    assert ("alice@example.com", ("friend@example.org",), 356) == (
        found.sender, found.recipients, found.size,
    )  # fmt: skip
    assert [
        "054DD2307FC: received from localhost[127.0.0.1], authenticated as alice@example.com"
        " (PLAIN)",
        "filter: scanned: clean, score 1.100, re-injected as 25154230806 (id e713e3f9b979)",
        "25154230806: re-injected by the filter (was 054DD2307FC), from localhost[127.0.0.1]",
        "25154230806: delivered <friend@example.org> via 127.0.0.1[127.0.0.1]:43463:"
        " 250 2.0.0 Ok: queued as SINK1",
    ] == steps(found)
    assert (("friend@example.org", "delivered via 127.0.0.1[127.0.0.1]:43463"),) == found.outcome


@pytest.mark.parametrize(
    "query",
    [
        "25154230806",  # the re-injected copy's queue id
        "SINK1",  # the internal server's, from its "queued as"
        "<d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net>",
        "d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net",
        "alice@example.com",  # the SASL login and sender
        "friend@example.org",
        "@example.org",
    ],
)
def test_every_name_of_a_message_finds_the_same_timeline(query: str) -> None:
    """Either queue id, the next hop's, the Message-ID, an address or a domain."""
    assert ("054DD2307FC", "25154230806") == one(query).queue_ids


def test_a_virus_held_in_the_quarantine() -> None:
    """The verdict names the virus and the quarantine id; the outcome says held."""
    found = one(VIRUS_HELD)
    assert ("06CC62307FE",) == found.queue_ids
    assert (
        "filter: scanned: virus, Eicar-Test-Signature-Anywhere.UNOFFICIAL,"
        f" held as {VIRUS_HELD}, discarded (id 6aa25b99ef9f)"
    ) in steps(found)
    virus = "Eicar-Test-Signature-Anywhere.UNOFFICIAL"
    held = f"held in the quarantine as {VIRUS_HELD} (virus {virus})"
    assert (("user@example.com", held),) == found.outcome


def test_a_held_spam_released_later_is_followed_to_its_delivery() -> None:
    """The audit line joins by quarantine id; the release's queue id joins by the quarantine's
    record of its reply (lookup)."""

    def lookup(held: str) -> list[Event]:
        if held != SPAM_HELD:
            return []
        at = datetime(2026, 12, 4, 21, 0, 54).timestamp()
        released = Event(
            at, Kind.RELEASED, line="r", quarantine_ids=(held,),
            recipients=("user@example.com",), next_id="8B511230922", text="released",
        )  # fmt: skip
        return [released]

    found = one(SPAM_HELD, lookup=lookup)
    assert ("064692307FD", "8B511230922") == found.queue_ids
    assert "quarantine: release by unix:root from local to user@example.com: ok" in steps(found)
    assert "8B511230922: re-injected from the quarantine, from localhost[127.0.0.1]" in (
        steps(found)
    )
    assert (("user@example.com", "delivered via 127.0.0.1[127.0.0.1]:43463"),) == found.outcome


def test_without_the_quarantine_a_release_is_its_audit_line() -> None:
    """No lookup: the released copy is not linked, the audit line still shows."""
    found = one(SPAM_HELD)
    assert ("064692307FD",) == found.queue_ids
    assert "quarantine: release by unix:root from local to user@example.com: ok" in steps(found)


def test_deferred_by_the_filter_and_still_in_the_queue() -> None:
    """The filter's 451 is the step; the outcome says it waits in the queue."""
    found = one("0753A2307FF")
    assert [
        "0753A2307FF: received from localhost[127.0.0.1]",
        "filter: scanned: tempfail, score 1.100, deferred: 451 4.3.0 Downstream: 554 5.5.1"
        " Error: no valid recipients (id=38abbfc30d6e)",
    ] == steps(found)
    rcpt, state = found.outcome[0]
    assert "later@example.com" == rcpt
    assert state.startswith("deferred by the filter: 451 4.3.0")
    assert state.endswith("; still in the queue")
    assert found.queued


def test_bounced_by_the_internal_server_with_the_notice_to_the_sender() -> None:
    """A -> B -> notice C; the outcome is the recipient's bounce, not the notice's delivery."""
    found = one("gone@example.com")
    assert ("07D0E230800", "5DAEC230818", "6001023081A") == found.queue_ids
    assert "5DAEC230818: sender non-delivery notification queued as 6001023081A" in steps(found)
    assert 1 == len(found.outcome)
    rcpt, state = found.outcome[0]
    assert ("gone@example.com", True) == (rcpt, state.startswith("bounced via 127.0.0.1"))


def test_two_recipients_two_deliveries_one_timeline() -> None:
    """Each recipient has its outcome."""
    found = one("<d1a0eba2c59e4864831d4e46d17012aa@test.example.net>")
    assert ("u2@example.com", "user@example.com") == found.recipients
    assert all(state.startswith("delivered") for _, state in found.outcome)


def test_a_refusal_before_queueing_is_a_timeline_of_its_own() -> None:
    """NOQUEUE lines have no queue id: shown for an address, never joined to a message."""
    found = trace("later@example.com")
    assert [(), ("0753A2307FF",)] == [t.queue_ids for t in found]
    assert "never queued" in render(found[0])[0]
    assert ("sender@example.net", ("later@example.com",)) == (found[0].sender, found[0].recipients)


def test_from_and_to_together_narrow_to_the_mail_from_x_to_y() -> None:
    """--from and --to: both must hold."""
    both = Criteria(senders=("sender@example.net",), recipients=("u2@example.com",))
    assert [("08417230801", "7132623081C")] == [t.queue_ids for t in trace(both)]
    nobody = Criteria(senders=("alice@example.com",), recipients=("u2@example.com",))
    assert [] == trace(nobody)


def test_a_domain_matches_every_address_in_it() -> None:
    """``@example.net`` as a sender: every message but the authenticated user's (the released
    copy is a message of its own without the quarantine's record of the release)."""
    assert 7 == len(trace(Criteria(senders=("@example.net",))))


def test_the_time_window_keeps_messages_with_a_line_inside() -> None:
    """since/until: the release at :54 (its audit line, its delivery) is all after :52."""
    after = datetime(2026, 12, 4, 21, 0, 52).timestamp()
    found = trace(Criteria(recipients=("@example.com",), since=after))
    assert [("064692307FD",), ("8B511230922",)] == [t.queue_ids for t in found]
    before = trace(Criteria(recipients=("@example.com",), until=after))
    assert 6 == len(before)


def test_within_one_second_the_verdict_comes_before_the_reinjected_copy() -> None:
    """Postfix logs whole seconds, the filter milliseconds: causal order, not clock order."""
    kinds = [s.event.kind for s in one("054DD2307FC").steps]
    assert [Kind.CLIENT, Kind.SCANNED, Kind.CLIENT, Kind.DELIVERY] == kinds


# -- lines from several sources ----------------------------------------------------------------


def test_a_line_read_twice_is_shown_once() -> None:
    """The same lines from a file and the journal: one step each."""
    found = trace("054DD2307FC", logs=(MAILLOG, MAILLOG, FILTER_LOG, FILTER_LOG))
    assert 4 == len(found[0].steps)


def test_without_xforward_the_filters_reply_links_the_copy() -> None:
    """No ``orig_queue_id``: the delivery's ``queued as`` at the filter's address links A to B,
    whatever the content filter's reply looks like (here amavisd-new's)."""
    log = (
        "Dec  4 10:00:00 gw postfix/smtpd[1]: 1111111111: client=a[192.0.2.1]\n"
        "Dec  4 10:00:01 gw postfix/smtpd[2]: 2222222222: client=localhost[127.0.0.1]\n"
        "Dec  4 10:00:01 gw postfix/smtp[3]: 1111111111: to=<u@example.com>,"
        " relay=127.0.0.1[127.0.0.1]:10024, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent"
        " (250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 2222222222)\n"
        "Dec  4 10:00:02 gw postfix/smtp[4]: 2222222222: to=<u@example.com>,"
        " relay=10.0.0.2[10.0.0.2]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent"
        " (250 2.0.0 Ok: queued as 3333333333)\n"
        "Dec  4 10:00:03 gw postfix/smtpd[5]: 3333333333: client=x[10.0.0.2]\n"
    )
    found = trace("1111111111", logs=(log,))
    assert [("1111111111", "2222222222")] == [t.queue_ids for t in found]
    assert "3333333333" not in found[0].queue_ids  # the next hop's id is another server's


VICTIM = "5DAEC230818"  # another message of this gateway's, nothing to do with the other one


def _queued(qid: str, sender: str, at: str) -> str:
    """A message received and queued at ``at`` (smtpd's and qmgr's lines)."""
    return (
        f"Dec 04 {at} gateway postfix/smtpd[2]: {qid}: client=mx.evil.example[192.0.2.1]\n"
        f"Dec 04 {at} gateway postfix/qmgr[3]: {qid}: from=<{sender}>, size=100, nrcpt=1"
        " (queue active)\n"
    )


def _delivered(rcpt: str, relay: str, status: str, reply: str) -> str:
    """A delivery of 1A2B3C4D5E's, as smtp logs it."""
    return (
        f"Dec 04 21:00:52 gateway postfix/smtp[1]: 1A2B3C4D5E: to=<{rcpt}>, relay={relay},"
        f" delay=0.1, delays=0/0/0/0.1, dsn=5.0.0, status={status} ({reply})\n"
    )


def test_a_remote_servers_reply_of_the_filters_shape_is_not_the_filter_hop() -> None:
    """A far server's ``id=<12 hex> ... queued as X`` links nothing: the hop is the relay."""
    log = (
        _queued(VICTIM, "boss@example.com", "21:00:49")
        + _queued("1A2B3C4D5E", "a@example.com", "21:00:50")
        + _delivered(
            "someone@evil.example", "mx.evil.example[192.0.2.9]:25", "sent",
            f"250 2.0.0 Ok id=0123456789ab queued as {VICTIM}",
        )
    )  # fmt: skip
    assert [(VICTIM,)] == [t.queue_ids for t in trace(VICTIM, logs=(log,))]


def test_a_recipient_spelling_a_delivery_links_no_other_message() -> None:
    """A quoted recipient holding ``relay=... status=sent (... queued as X)`` does not join X."""
    rcpt = (
        '"x>, relay=127.0.0.1[127.0.0.1]:10024, status=sent (250 id=0123456789ab queued as'
        f' {VICTIM})"@example.com'
    )
    log = (
        _queued(VICTIM, "boss@example.com", "21:00:49")
        + _queued("1A2B3C4D5E", "a@evil.example", "21:00:50")
        + _delivered(
            rcpt, "backend.example.com[10.0.0.2]:25", "bounced",
            "host backend.example.com[10.0.0.2] said: 550 5.1.1 no such user",
        )
    )  # fmt: skip
    assert [(VICTIM,)] == [t.queue_ids for t in trace(VICTIM, logs=(log,))]


def test_with_the_listen_address_only_a_delivery_there_is_the_filter_hop() -> None:
    """Configured: the relay's host and port decide; the reply's shape does not."""
    hop = Event(
        0.0, Kind.DELIVERY, "1A2B3C4D5E", relay="127.0.0.1[127.0.0.1]:10026",
        text="250 Ok, id=0123456789ab, queued as 2B3C4D5E6F", status="sent",
    )  # fmt: skip
    assert Tracer(Criteria(), filter_addresses=["127.0.0.1:10026"]).filter_hop(hop)
    assert not Tracer(Criteria(), filter_addresses=["127.0.0.1:10024"]).filter_hop(hop)


def test_a_matched_message_merged_into_a_bigger_group_is_still_found() -> None:
    """The group that absorbs a kept one is kept in its place (the query still finds it)."""
    log = (
        "Dec  4 10:00:00 gw postfix/smtpd[1]: 1111111111: client=a[192.0.2.1]\n"
        "Dec  4 10:00:01 gw postfix/smtpd[2]: 2222222222: client=localhost[127.0.0.1]\n"
        "Dec  4 10:00:01 gw postfix/cleanup[2]: 2222222222: message-id=<m@example.com>\n"
        "Dec  4 10:00:01 gw postfix/qmgr[2]: 2222222222: from=<s@example.com>, size=1, nrcpt=1\n"
        "Dec  4 10:00:01 gw postfix/smtp[3]: 1111111111: to=<u@example.com>,"
        " relay=127.0.0.1[127.0.0.1]:10024, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent"
        " (250 2.0.0 Ok: queued as 2222222222)\n"
    )
    assert [("1111111111", "2222222222")] == [t.queue_ids for t in trace("1111111111", (log,))]


def test_a_query_of_only_space_names_nothing() -> None:
    """Blank is no queue id: the criteria are empty (the command refuses them)."""
    assert criteria_for("  \t ").empty


def test_a_bulk_delete_does_not_make_two_messages_one() -> None:
    """An audit line naming many entries belongs to each, joining none."""
    log = (
        "2026-12-04 21:00:59,000 mail-filter[9]: quarantine action=delete"
        f" id={SPAM_HELD},{VIRUS_HELD} by=unix:root from=local result=ok\n"
    )
    found = trace("@example.com", logs=(MAILLOG, FILTER_LOG, log))
    held = [t for t in found if t.quarantine_ids]
    assert [(SPAM_HELD,), (VIRUS_HELD,)] == sorted(t.quarantine_ids for t in held)
    for timeline in held:
        assert timeline.outcome[0][1] == "deleted from the quarantine by unix:root"


def test_the_quarantine_is_asked_only_about_matching_messages() -> None:
    """lookup is called for the held message asked for, not for the other one."""
    asked: list[str] = []

    def lookup(held: str) -> list[Event]:
        asked.append(held)
        return []

    one(SPAM_HELD, lookup=lookup)
    assert [SPAM_HELD] == asked


def test_a_quarantine_entry_seeded_before_reading_pulls_its_lines_in() -> None:
    """seed(): the entry's queue id finds the front Postfix's lines without the filter's log."""
    at = datetime(2026, 12, 4, 21, 0, 51).timestamp()
    entry = Event(
        at, Kind.HELD, queue_id="06CC62307FE", line="e", quarantine_ids=(VIRUS_HELD,),
        recipients=("user@example.com",), text=f"held as {VIRUS_HELD}: virus",
    )  # fmt: skip
    tracer = Tracer(criteria_for(VIRUS_HELD))
    tracer.seed([entry])
    for event in events(MAILLOG):
        tracer.add(event)
    [found] = tracer.finish()
    assert "06CC62307FE: received from localhost[127.0.0.1]" in steps(found)


def test_a_quarantine_entry_alone_is_a_timeline() -> None:
    """Its lines rotated away: the entry still answers."""
    entry = Event(
        1.0, Kind.HELD, queue_id="06CC62307FE", line="e", quarantine_ids=(VIRUS_HELD,),
        recipients=("user@example.com",), text=f"held as {VIRUS_HELD}: virus",
    )  # fmt: skip
    tracer = Tracer(criteria_for(VIRUS_HELD))
    tracer.seed([entry])
    [found] = tracer.finish()
    assert [f"quarantine: held as {VIRUS_HELD}: virus"] == steps(found)


# -- bounds ------------------------------------------------------------------------------------


def _message(n: int, at: float, removed: bool = True) -> list[Event]:
    qid = f"{n:010X}"
    made = [
        Event(at, Kind.CLIENT, qid, "smtpd", 1, f"{qid}: client=a", text="a"),
        Event(at, Kind.QUEUED, qid, "qmgr", 2, f"{qid}: from=<s>", sender=f"s{n}@example.net"),
    ]
    if removed:
        made.append(Event(at + 1, Kind.REMOVED, qid, "qmgr", 2, f"{qid}: removed"))
    return made


def test_messages_done_with_are_dropped_as_the_log_goes_on() -> None:
    """20,000 messages a second apart: only the last few minutes' stay in memory."""
    tracer = Tracer(criteria_for("s19999@example.net"))
    for n in range(20_000):
        for event in _message(n, 1_000_000.0 + n):
            tracer.add(event)
    assert tracer.in_flight <= tracing.SWEEP_EVERY + tracing.LINGER + 10
    assert [("0000004E1F",)] == [t.queue_ids for t in tracer.finish()]


def test_messages_never_removed_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_GROUPS the oldest unmatched messages in flight are dropped."""
    monkeypatch.setattr(tracing, "MAX_GROUPS", 100)
    monkeypatch.setattr(tracing, "SWEEP_EVERY", 50)
    tracer = Tracer(criteria_for("s0@example.net"))
    for n in range(1_000):
        for event in _message(n, 1_000_000.0 + n, removed=False):
            tracer.add(event)
    assert tracer.in_flight <= 100 + 50
    assert [("0000000000",)] == [t.queue_ids for t in tracer.finish()]  # matched: kept


def test_a_message_deferred_for_days_keeps_its_first_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAX_EVENTS per message; the rest are counted and said."""
    monkeypatch.setattr(tracing, "MAX_EVENTS", 10)
    tracer = Tracer(criteria_for("AAAAAAAAAA"))
    for n in range(30):
        retry = Event(
            1_000_000.0 + n * 600, Kind.DELIVERY, "AAAAAAAAAA", "smtp", n, f"try {n}",
            recipients=("u@example.com",), relay="none", status="deferred", text="later",
        )  # fmt: skip
        tracer.add(retry)
    [found] = tracer.finish()
    assert (10, 20) == (len(found.steps), found.dropped)
    assert "  (20 more lines of this message not kept)" in render(found)


def test_past_the_limit_matches_are_counted_not_kept() -> None:
    """limit: the first messages found are shown, the others counted."""
    tracer = Tracer(Criteria(senders=("@example.net",)), limit=2)
    for event in heapq.merge(events(MAILLOG), events(FILTER_LOG), key=attrgetter("at")):
        tracer.add(event)
    assert (2, 5) == (len(tracer.finish()), tracer.more)


# -- output ------------------------------------------------------------------------------------


def test_the_text_names_ids_envelope_steps_and_outcome() -> None:
    """Header, envelope line, one line per step, ``=>`` per recipient."""
    text = render(one("054DD2307FC"), lines=True)
    assert (
        "message 054DD2307FC -> 25154230806"
        "  Message-ID <d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net>"
    ) == text[0]
    assert "  from <alice@example.com> to <friend@example.org>, 356 bytes" == text[1]
    assert (
        "      | 054DD2307FC: client=localhost[127.0.0.1], sasl_method=PLAIN,"
        " sasl_username=alice@example.com"
    ) == text[3]
    assert "  => <friend@example.org>: delivered via 127.0.0.1[127.0.0.1]:43463" == text[-1]


def test_json_has_the_same_facts() -> None:
    """--json: ids, envelope, steps with their kind and line, outcome by recipient."""
    found = as_json(one("054DD2307FC"))
    assert ["054DD2307FC", "25154230806"] == found["queue_ids"]
    assert {"friend@example.org": "delivered via 127.0.0.1[127.0.0.1]:43463"} == found["outcome"]
    first = found["steps"][0]  # type: ignore[index]
    assert ("054DD2307FC", "client") == (first["id"], first["kind"])
