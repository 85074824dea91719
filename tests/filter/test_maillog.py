"""filter.maillog: log lines (every frame a gateway writes) as events, from literal lines."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from filter.maillog import (
    MAX_LINE,
    Event,
    Kind,
    Line,
    YearGuess,
    event_of,
    parse_journal,
    parse_line,
)

# Lines as the real gateway (devstack's MailChain) wrote them.
CLIENT_SASL = (
    "Dec 04 21:00:51 gateway postfix/smtpd[15929]: 054DD2307FC: client=localhost[127.0.0.1],"
    " sasl_method=PLAIN, sasl_username=alice@example.com"
)
CLIENT_REINJECTED = (
    "Dec 04 21:00:51 gateway postfix/smtpd[15947]: 25154230806: client=localhost[127.0.0.1],"
    " orig_queue_id=054DD2307FC, orig_client=localhost[127.0.0.1]"
)
MESSAGE_ID = (
    "Dec 04 21:00:51 gateway postfix/cleanup[15939]: 054DD2307FC:"
    " message-id=<d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net>"
)
QUEUED = (
    "Dec 04 21:00:51 gateway postfix/qmgr[15927]: 054DD2307FC: from=<alice@example.com>,"
    " size=356, nrcpt=1 (queue active)"
)
TO_FILTER = (
    "Dec 04 21:00:51 gateway postfix/smtp[15940]: 054DD2307FC: to=<friend@example.org>,"
    " relay=127.0.0.1[127.0.0.1]:40545, delay=0.14, delays=0.01/0.02/0/0.12, dsn=2.0.0,"
    " status=sent (250 2.0.0 Ok, id=e713e3f9b979, from downstream: 250 2.0.0 Ok:"
    " queued as 25154230806)"
)
DEFERRED = (
    "Dec 04 21:00:51 gateway postfix/smtp[15940]: 0753A2307FF: to=<later@example.com>,"
    " relay=127.0.0.1[127.0.0.1]:40545, conn_use=2, delay=0.29, delays=0/0.21/0/0.08,"
    " dsn=4.3.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 451 4.3.0 Downstream:"
    " 554 5.5.1 Error: no valid recipients (id=38abbfc30d6e) (in reply to end of DATA command))"
)
BOUNCED = (
    "Dec 04 21:00:51 gateway postfix/smtp[15952]: 5DAEC230818: to=<gone@example.com>,"
    " relay=127.0.0.1[127.0.0.1]:43463, delay=0.01, delays=0/0/0/0.01, dsn=5.1.1,"
    " status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <gone@example.com>:"
    " Recipient address rejected: User unknown (in reply to RCPT TO command))"
)
NOTICE = (
    "Dec 04 21:00:51 gateway postfix/bounce[15958]: 5DAEC230818:"
    " sender non-delivery notification: 6001023081A"
)
REMOVED = "Dec 04 21:00:51 gateway postfix/qmgr[15927]: 054DD2307FC: removed"
NOQUEUE = (
    "Dec 04 21:00:51 gateway postfix/smtpd[15947]: NOQUEUE: reject: RCPT from"
    " localhost[127.0.0.1]: 450 4.2.0 <later@example.com>: Recipient address rejected:"
    " <later@example.com>: try again later; from=<sender@example.net> to=<later@example.com>"
    " proto=ESMTP helo=<filter.test>"
)
SUMMARY_HELD = (
    "2026-12-04 21:00:51,242 mail-filter[15625]: INFO filter.service: queue_id=06CC62307FE"
    " id=6aa25b99ef9f from=<sender@example.net> to=<user@example.com> size=410 result=virus"
    ' virus="Eicar-Test-Signature-Anywhere.UNOFFICIAL" quarantine=20261204-210051-7922242611'
    ' clamd_ms=19.1 spamd_ms=19.6 reinject_ms=- total_ms=76.0 reply="250 2.7.0 Ok, discarded,'
    " id=6aa25b99ef9f, quarantined as 20261204-210051-7922242611 - INFECTED:"
    ' Eicar-Test-Signature-Anywhere.UNOFFICIAL"'
)
SUMMARY_CLEAN = (
    "2026-12-04 21:00:51,465 mail-filter[15625]: INFO filter.service: queue_id=08417230801"
    " id=9761d95c24f1 from=<sender@example.net> to=<u2@example.com>,<user@example.com>"
    " size=326 result=clean score=1.100 clamd_ms=10.4 spamd_ms=122.3 reinject_ms=2.3"
    ' total_ms=125.5 reply="250 2.0.0 Ok, id=9761d95c24f1, from downstream: 250 2.0.0 Ok:'
    ' queued as 7132623081C"'
)
AUDIT = (
    "2026-12-04 21:00:54,578 mail-filter[16228]: quarantine action=release"
    " id=20261204-210051-3fc94dabf8 by=unix:root from=local to=user@example.com result=ok"
)
DEC_4 = datetime(2026, 12, 4, 21, 0, 51).timestamp()
YEARS = YearGuess(datetime(2026, 12, 5).timestamp())


def event(text: str) -> Event:
    """The event of one line (the test fails if there is none)."""
    line = parse_line(text, YEARS)
    assert line is not None, text
    found = event_of(line)
    assert found is not None, text
    return found


# -- frames ------------------------------------------------------------------------------------


def test_postlogd_frame_with_a_zero_padded_day() -> None:
    """Postfix's own maillog_file: ``Dec 04 21:00:51 host postfix/qmgr[pid]: ...``."""
    assert Line(DEC_4, "gateway", "postfix/qmgr", 15927, "054DD2307FC: removed") == parse_line(
        REMOVED, YEARS
    )


def test_traditional_syslog_frame_with_a_space_padded_day() -> None:
    """rsyslog's traditional format pads the day with a space."""
    line = parse_line("Dec  4 21:00:51 gw postfix/smtpd[1]: connect from x[192.0.2.1]", YEARS)
    assert line is not None
    assert (DEC_4, "gw", "postfix/smtpd") == (line.at, line.host, line.program)


def test_rfc3339_frame_keeps_its_zone_and_fraction() -> None:
    """rsyslog's default on Debian: ``2026-12-04T21:00:51.250000+01:00``."""
    line = parse_line(
        "2026-12-04T21:00:51.250000+01:00 gw postfix/qmgr[7]: 054DD2307FC: removed", YEARS
    )
    expected = datetime(2026, 12, 4, 20, 0, 51, 250000, tzinfo=UTC).timestamp()
    assert line is not None
    assert expected == line.at


def test_journalctl_short_iso_frame() -> None:
    """``journalctl -o short-iso`` writes the offset without a colon."""
    line = parse_line("2026-12-04T21:00:51+0000 gw postfix/qmgr[7]: 054DD2307FC: removed", YEARS)
    assert line is not None
    assert datetime(2026, 12, 4, 21, 0, 51, tzinfo=UTC).timestamp() == line.at


def test_the_filters_own_frame_has_milliseconds_and_no_host() -> None:
    """mail-filter's stderr: ``2026-12-04 21:00:51,242 mail-filter[pid]: INFO ...``."""
    line = parse_line(SUMMARY_HELD, YEARS)
    assert line is not None
    assert ("", "mail-filter", 15625) == (line.host, line.program, line.pid)
    assert DEC_4 + 0.242 == pytest.approx(line.at)


def test_the_filters_line_inside_a_syslog_frame_is_read_too() -> None:
    """Under systemd with rsyslog: the journal's frame around the filter's own."""
    wrapped = "2026-12-04T21:00:51.242+00:00 gw mail-filter[15625]: " + SUMMARY_HELD
    line = parse_line(wrapped, YEARS)
    assert line is not None
    found = event_of(line)
    assert found is not None
    assert (Kind.SCANNED, "06CC62307FE") == (found.kind, found.queue_id)


def test_a_journal_record_in_json() -> None:
    """``journalctl -o json``: identifier, pid, host and the microsecond timestamp."""
    record = json.dumps(
        {
            "__REALTIME_TIMESTAMP": "1796418051250000",
            "SYSLOG_IDENTIFIER": "postfix/qmgr",
            "SYSLOG_PID": "15927",
            "_HOSTNAME": "gw",
            "MESSAGE": "054DD2307FC: removed",
        }
    )
    assert Line(1796418051.25, "gw", "postfix/qmgr", 15927, "054DD2307FC: removed") == (
        parse_journal(record)
    )


def test_a_journal_message_that_is_not_utf8_comes_as_bytes() -> None:
    """journald writes such a MESSAGE as a list of byte values; bad bytes become ``\\xNN``."""
    message = list(b"054DD2307FC: message-id=<\xff@x>")
    record = json.dumps(
        {"__REALTIME_TIMESTAMP": "1", "SYSLOG_IDENTIFIER": "postfix/cleanup", "MESSAGE": message}
    )
    line = parse_journal(record)
    assert line is not None
    assert "054DD2307FC: message-id=<\\xff@x>" == line.text


@pytest.mark.parametrize(
    "record",
    [
        "not json",
        "[1, 2]",
        '{"MESSAGE": "no time"}',
        '{"__REALTIME_TIMESTAMP": "x", "MESSAGE": "m"}',
        '{"__REALTIME_TIMESTAMP": "1", "MESSAGE": null}',
        '{"__REALTIME_TIMESTAMP": "1", "MESSAGE": ["a", "b"], "SYSLOG_IDENTIFIER": "p"}',
    ],
)
def test_malformed_journal_records_are_skipped(record: str) -> None:
    """A record that is not what journalctl writes is None, never an exception."""
    assert parse_journal(record) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "Foo  4 21:00:51 gw postfix/qmgr[1]: 054DD2307FC: removed",
        "Dec 32 21:00:51 gw postfix/qmgr[1]: 054DD2307FC: removed",
        "2026-13-04T21:00:51Z gw postfix/qmgr[1]: 054DD2307FC: removed",
        "2026-12-04 21:00:51,000 mail-filter: no pid",
    ],
)
def test_malformed_lines_are_skipped(text: str) -> None:
    """Lines in no known frame (or with an impossible date) are None."""
    assert parse_line(text, YEARS) is None


def test_an_overlong_line_is_skipped() -> None:
    """A line over MAX_LINE is never parsed (the reader skips it; this is the backstop)."""
    assert parse_line(REMOVED + "x" * MAX_LINE, YEARS) is None
    assert parse_journal("{" + " " * MAX_LINE + "}") is None


# -- the year of a date without one ------------------------------------------------------------


def test_the_year_comes_from_the_files_last_write() -> None:
    """A date up to the file's mtime is this year's."""
    years = YearGuess(datetime(2027, 6, 1).timestamp())
    assert 2027 == time.localtime(years.stamp(5, 31, "23:59:59")).tm_year


def test_december_lines_in_a_file_written_in_january_are_last_years() -> None:
    """mail.log.1 rotated on 2 January: Dec 31 is last year's, Jan 1 this year's."""
    years = YearGuess(datetime(2027, 1, 2, 6, 25).timestamp())
    assert datetime(2026, 12, 31, 23, 59, 59).timestamp() == years.stamp(12, 31, "23:59:59")
    assert datetime(2027, 1, 1, 0, 0, 1).timestamp() == years.stamp(1, 1, "00:00:01")


def test_a_clock_a_little_ahead_is_still_this_year() -> None:
    """A line a few hours after the mtime (another host's clock) is not moved a year back."""
    years = YearGuess(datetime(2027, 3, 1, 12).timestamp())
    assert datetime(2027, 3, 1, 18).timestamp() == years.stamp(3, 1, "18:00:00")


# -- Postfix's lines ---------------------------------------------------------------------------


def test_smtpd_client_with_sasl_login() -> None:
    """``client=...``, ``sasl_method`` and ``sasl_username``: received from whom, as whom."""
    found = event(CLIENT_SASL)
    assert (Kind.CLIENT, "054DD2307FC", "smtpd") == (found.kind, found.queue_id, found.program)
    assert ("localhost[127.0.0.1]", "PLAIN", "alice@example.com", "") == (
        found.text, found.method, found.user, found.prev_id,
    )  # fmt: skip


def test_smtpd_client_of_a_reinjected_message_names_the_first_queue_id() -> None:
    """XFORWARD's ``orig_queue_id``: the re-injected copy B names the front's A."""
    found = event(CLIENT_REINJECTED)
    assert ("25154230806", "054DD2307FC", "") == (found.queue_id, found.prev_id, found.user)


def test_a_sasl_username_with_a_comma_is_kept_whole() -> None:
    """Only the next known field ends the login name."""
    found = event(
        "Dec  4 10:00:00 gw postfix/submission/smtpd[9]: 054DD2307FC: client=a[192.0.2.1],"
        " sasl_method=LOGIN, sasl_username=Doe, John"
    )
    assert ("smtpd", "Doe, John") == (found.program, found.user)


def test_cleanup_message_id_without_brackets() -> None:
    """Message-IDs are compared without their angle brackets."""
    found = event(MESSAGE_ID)
    assert (Kind.MESSAGE_ID, "d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net") == (
        found.kind,
        found.message_id,
    )


def test_qmgr_queued_and_removed() -> None:
    """qmgr's ``from=<>, size=, nrcpt=`` and ``removed``."""
    queued = event(QUEUED)
    assert (Kind.QUEUED, "alice@example.com", 356, "1") == (
        queued.kind, queued.sender, queued.size, queued.text,
    )  # fmt: skip
    assert Kind.REMOVED == event(REMOVED).kind


def test_a_null_sender_is_empty_not_missing() -> None:
    """``from=<>`` (a bounce) is the empty sender."""
    found = event("Dec 04 21:00:51 gw postfix/qmgr[1]: 6001023081A: from=<>, size=2743, nrcpt=1")
    assert "" == found.sender


def test_delivery_to_the_filter_carries_the_next_queue_id() -> None:
    """The filter's reply ``queued as B`` is the re-injected copy's queue id."""
    found = event(TO_FILTER)
    assert (Kind.DELIVERY, ("friend@example.org",), "sent", "25154230806") == (
        found.kind, found.recipients, found.status, found.next_id,
    )  # fmt: skip
    assert "127.0.0.1[127.0.0.1]:40545" == found.relay


def test_a_deferred_reply_loses_host_said_and_in_reply_to() -> None:
    """The relay is shown anyway: the reply is what the server said."""
    found = event(DEFERRED)
    assert "deferred" == found.status
    assert (
        "451 4.3.0 Downstream: 554 5.5.1 Error: no valid recipients (id=38abbfc30d6e)" == found.text
    )


def test_bounced_and_its_notice() -> None:
    """``status=bounced`` and bounce's ``sender non-delivery notification: C``."""
    assert "bounced" == event(BOUNCED).status
    notice = event(NOTICE)
    assert (Kind.NOTIFICATION, "5DAEC230818", "6001023081A") == (
        notice.kind, notice.queue_id, notice.next_id,
    )  # fmt: skip


def test_orig_to_is_a_recipient_too() -> None:
    """After alias expansion the original recipient is kept beside the new one."""
    found = event(
        "Dec  4 10:00:00 gw postfix/local[3]: 054DD2307FC: to=<root@gw.example>,"
        " orig_to=<postmaster>, relay=local, delay=0, delays=0/0/0/0, dsn=2.0.0,"
        " status=sent (delivered to mailbox)"
    )
    assert ("root@gw.example", "postmaster") == found.recipients


def test_noqueue_reject_has_no_queue_id_but_its_envelope() -> None:
    """A refusal before a queue id was given: sender, recipient and the reply."""
    found = event(NOQUEUE)
    assert (Kind.REJECT, "", "reject", "sender@example.net", ("later@example.com",)) == (
        found.kind, found.queue_id, found.status, found.sender, found.recipients,
    )  # fmt: skip
    assert found.text.startswith("RCPT from localhost[127.0.0.1]: 450 4.2.0")


def test_a_header_check_reject_keeps_its_reason() -> None:
    """cleanup's ``reject: header ...; from=<> to=<> proto helo: 5.7.1 reason``."""
    found = event(
        "Dec  4 10:00:00 gw postfix/cleanup[3]: 054DD2307FC: reject: header Subject: win"
        " from a[192.0.2.1]; from=<s@example.net> to=<u@example.com> proto=ESMTP"
        " helo=<a>: 5.7.1 no thanks"
    )
    assert ("reject", "header Subject: win from a[192.0.2.1]: 5.7.1 no thanks") == (
        found.status,
        found.text,
    )


def test_expired_and_postsuper() -> None:
    """qmgr gives up; postsuper holds and deletes."""
    expired = event(
        "Dec  4 10:00:00 gw postfix/qmgr[3]: 054DD2307FC: from=<s@example.net>,"
        " status=expired, returned to sender"
    )
    assert Kind.EXPIRED == expired.kind
    held = event("Dec  4 10:00:00 gw postfix/postsuper[4]: 054DD2307FC: placed on hold")
    assert (Kind.QUEUE_ACTION, "placed on hold") == (held.kind, held.text)
    deleted = event("Dec  4 10:00:00 gw postfix/postsuper[4]: 054DD2307FC: removed")
    assert (Kind.REMOVED, "postsuper") == (deleted.kind, deleted.program)


def test_long_queue_ids_are_queue_ids() -> None:
    """enable_long_queue_ids: ``4Xyz...`` with a ``z`` between its parts."""
    found = event("Dec  4 10:00:00 gw postfix/qmgr[3]: 4QbTsk0Nr3zDfXJ: removed")
    assert "4QbTsk0Nr3zDfXJ" == found.queue_id


@pytest.mark.parametrize(
    "text",
    [
        "warning: hostname x does not resolve to address 192.0.2.1",
        "connect from localhost[127.0.0.1]",
        "statistics: max connection rate 1/60s",
        "054DD2307FC: host x[192.0.2.1] said: 450 try later (in reply to RCPT TO command)",
    ],
)
def test_postfix_lines_about_no_message_are_none(text: str) -> None:
    """Warnings, connections and statistics are not a message's events."""
    line = parse_line(f"Dec  4 10:00:00 gw postfix/smtpd[1]: {text}", YEARS)
    assert line is not None
    assert event_of(line) is None


# -- mail-filter's lines -----------------------------------------------------------------------


def test_the_filters_summary_of_a_held_virus() -> None:
    """result, virus, quarantine id, filter id and the reply."""
    found = event(SUMMARY_HELD)
    assert (Kind.SCANNED, "06CC62307FE", "6aa25b99ef9f", "virus") == (
        found.kind, found.queue_id, found.filter_id, found.status,
    )  # fmt: skip
    assert ("20261204-210051-7922242611",) == found.quarantine_ids
    assert "Eicar-Test-Signature-Anywhere.UNOFFICIAL" == found.extra["virus"]
    assert ("sender@example.net", ("user@example.com",), 410, "") == (
        found.sender, found.recipients, found.size, found.next_id,
    )  # fmt: skip


def test_the_filters_summary_of_a_reinjected_message() -> None:
    """Several recipients; the downstream's ``queued as`` is the next queue id."""
    found = event(SUMMARY_CLEAN)
    assert (("u2@example.com", "user@example.com"), "7132623081C", "1.100") == (
        found.recipients, found.next_id, found.extra["score"],
    )  # fmt: skip


def test_a_tempfail_names_no_next_queue_id() -> None:
    """Only a 250 reply hands the message on."""
    found = event(
        "2026-12-04 21:00:51,323 mail-filter[1]: INFO filter.service: queue_id=0753A2307FF"
        " id=38abbfc30d6e from=<s@example.net> to=<later@example.com> size=352"
        " result=tempfail clamd_ms=8.8 spamd_ms=73.3 reinject_ms=0.8 total_ms=78.6"
        ' reply="451 4.3.0 Downstream: 250 queued as X (id=38abbfc30d6e)"'
    )
    assert ("tempfail", "") == (found.status, found.next_id)


def test_a_retry_already_held_and_a_dsn_note() -> None:
    """The filter's other per-message lines."""
    held = event(
        "2026-12-04 21:00:51,000 mail-filter[1]: INFO filter.service: 0753A2307FF:"
        " already held as 20261204-210051-7922242611 (a retry)"
    )
    assert (Kind.FILTER_NOTE, "0753A2307FF", ("20261204-210051-7922242611",)) == (
        held.kind, held.queue_id, held.quarantine_ids,
    )  # fmt: skip
    dsn = event(
        "2026-12-04 21:00:51,000 mail-filter[1]: INFO filter.delivery: queue_id=0753A2307FF:"
        " sent a DSN to <s@example.net> for refused <x@example.com>"
    )
    assert ("0753A2307FF", "sent a DSN to <s@example.net> for refused <x@example.com>") == (
        dsn.queue_id,
        dsn.text,
    )


def test_an_audit_line_names_the_action_the_actor_and_the_entry() -> None:
    """``quarantine action=release id=... by=... from=... to=... result=ok``."""
    found = event(AUDIT)
    assert (Kind.AUDIT, "release", "unix:root", "local", "ok") == (
        found.kind, found.status, found.user, found.detail, found.text,
    )  # fmt: skip
    assert (("20261204-210051-3fc94dabf8",), ("user@example.com",)) == (
        found.quarantine_ids,
        found.recipients,
    )


def test_an_audit_lines_quoted_values_are_unquoted() -> None:
    """Values that are not plain tokens are JSON strings (filter.qactions)."""
    found = event(
        "Dec  4 10:00:00 gw mail-filter[3]: quarantine action=release"
        ' id=20261204-210051-3fc94dabf8 by="eve \\u001b[31m" from=ssh:192.0.2.7'
        ' result=failed why="release refused: 550 no"'
    )
    assert ("eve \x1b[31m", "release refused: 550 no") == (found.user, found.extra["why"])


def test_an_audit_line_naming_no_entry_is_none() -> None:
    """A refused link names no entry: nothing to attach it to."""
    line = parse_line(
        "Dec  4 10:00:00 gw mail-filter[3]: quarantine action=release by=digest"
        ' from=192.0.2.7 result=refused why="expired"',
        YEARS,
    )
    assert line is not None
    assert event_of(line) is None


def test_another_programs_line_shaped_like_the_filters_is_none() -> None:
    """Only mail-filter's own lines (by their program name) are read as the filter's."""
    line = parse_line("Dec  4 10:00:00 gw someone[3]: " + SUMMARY_HELD.split(": ", 1)[1], YEARS)
    assert line is not None
    assert event_of(line) is None


# -- what senders choose cannot make fields ------------------------------------------------------


def _summary(sender: str, result: str, extra: str = "") -> str:
    """A summary line of the filter's, with the sender and verdict given."""
    return (
        "2026-12-04 21:00:51,242 mail-filter[15625]: INFO filter.service: queue_id=0A1B2C3D4E"
        f" id=6aa25b99ef9f from=<{sender}> to=<user@example.com> size=410 result={result}"
        f"{extra} clamd_ms=1.0 spamd_ms=1.0 reinject_ms=- total_ms=2.0"
        ' reply="250 2.7.0 Ok, discarded, id=6aa25b99ef9f - INFECTED: Eicar"'
    )


# The SMTP client chooses the sender; filter.message.summary only turns '"' into '?'.
FORGING_SENDER = "?x> to=<ceo@example.com> size=1 result=clean y=<?@evil.example"


def test_a_sender_address_cannot_forge_the_filters_verdict_or_recipients() -> None:
    """Fields spelled inside the sender stay the sender's: result and to= are the filter's."""
    found = event(_summary(FORGING_SENDER, "virus", ' virus="Eicar"'))
    assert (Kind.SCANNED, "virus", ("user@example.com",), 410, FORGING_SENDER) == (
        found.kind, found.status, found.recipients, found.size, found.sender,
    )  # fmt: skip


def test_a_sender_address_cannot_name_a_quarantine_entry() -> None:
    """A ``quarantine=`` inside the sender links no entry to the message."""
    victim = "20261204-210051-3fc94dabf8"
    sender = f"?x> to=<u@example.com> size=1 result=clean quarantine={victim} y=<?@evil.example"
    found = event(_summary(sender, "clean"))
    assert ((), "clean", ("user@example.com",)) == (
        found.quarantine_ids, found.status, found.recipients,
    )  # fmt: skip


def test_a_summary_with_a_value_out_of_shape_is_not_the_filters() -> None:
    """A result outside the filter's set, or a quarantine id not of its format, is no summary."""
    for extra, result in ((" quarantine=../../etc", "virus"), ("", "ok")):
        line = parse_line(_summary("a@example.net", result, extra), YEARS)
        assert line is not None
        assert event_of(line) is None


def test_already_held_names_only_a_quarantine_id() -> None:
    """``already held as`` with something else than a quarantine id links nothing."""
    line = parse_line(
        "2026-12-04 21:00:51,000 mail-filter[1]: INFO filter.service: 0753A2307FF:"
        " already held as ../x (a retry)",
        YEARS,
    )
    assert line is not None
    assert event_of(line) is None


def test_a_recipient_address_cannot_forge_a_delivery() -> None:
    """Postfix's fields spelled in a quoted recipient are the address's: status and relay stay."""
    rcpt = (
        '"x>, relay=127.0.0.1[127.0.0.1]:10024, delay=0, delays=0/0/0/0, dsn=2.0.0,'
        ' status=sent (250 id=0123456789ab queued as 5DAEC230818)"@example.com'
    )
    found = event(
        f"Dec 04 21:00:52 gateway postfix/smtp[1]: 1A2B3C4D5E: to=<{rcpt}>,"
        " relay=backend.example.com[10.0.0.2]:25, delay=0.1, delays=0/0/0/0.1, dsn=5.1.1,"
        " status=bounced (host backend.example.com[10.0.0.2] said: 550 5.1.1 no such user)"
    )
    assert ("bounced", "backend.example.com[10.0.0.2]:25", (rcpt,), "") == (
        found.status, found.relay, found.recipients, found.next_id,
    )  # fmt: skip


def test_a_reply_quoting_postfix_fields_does_not_change_the_status() -> None:
    """The next hop's reply comes after Postfix's fields: it cannot stand in for them."""
    found = event(
        "Dec 04 21:00:52 gateway postfix/smtp[1]: 1A2B3C4D5E: to=<a@example.org>,"
        " relay=mx.example.org[192.0.2.9]:25, delay=0.1, delays=0/0/0/0.1, dsn=5.0.0,"
        " status=bounced (host mx.example.org[192.0.2.9] said: 550 <a@example.org>,"
        " relay=127.0.0.1[127.0.0.1]:10024, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent"
        " (250 queued as 5DAEC230818))"
    )
    assert ("bounced", "mx.example.org[192.0.2.9]:25", ("a@example.org",)) == (
        found.status, found.relay, found.recipients,
    )  # fmt: skip
