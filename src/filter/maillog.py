"""Mail log lines as events: the parsing half of ``mail-filter trace``, without I/O.

This module owns turning one line of text into what ``trace`` follows.  First
the line's frame (:func:`parse_line`, :func:`parse_journal`): when, which host,
which program and pid, and the message.  It reads every frame a gateway writes:

- traditional syslog, ``Dec  4 20:10:16 gw postfix/smtpd[123]: ...`` (no year:
  :class:`YearGuess` supplies it), and Postfix's own ``maillog_file``
  (``Dec 04 20:10:16 ...``, as ``postlogd`` writes it);
- RFC 3339 syslog (rsyslog's default on Debian), ``2026-12-04T20:10:16.123456+00:00 gw ...``,
  and ``journalctl -o short-iso``;
- the filter's own log file (its stderr), ``2026-12-04 20:10:16,123 mail-filter[9]: INFO
  filter.service: ...``, also when syslog or the journal wrapped it in a frame of theirs;
- one record of ``journalctl -o json``.

Then the message (:func:`event_of`): the Postfix lines that carry a queue id
(smtpd's ``client=``, cleanup's ``message-id=``, qmgr's ``from=`` and
``removed``, every delivery agent's ``to=... status=``, bounce's notices,
postsuper's actions, rejects) and mail-filter's (the one summary line per
message, ``already held``, DSN notes, the quarantine's audit lines), each as an
:class:`Event`.  Everything else is None: most log lines say nothing about a
message.  Log lines are written by programs but carry what senders chose
(addresses, Message-IDs, replies quoting them): nothing here trusts them, and
whoever prints them escapes them.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

MAX_LINE = 64 * 1024
"""The longest line read whole (bytes); a longer one is skipped (a Postfix line is under 2 KiB)."""

SKEW = 86400.0
"""How far a line's date may lie after its file's last write before it is taken as last year's
(clocks and time zones differ; a year-less date is at most a year old in a rotated log)."""

# syslog writes English month names whatever the locale (RFC 3164 4.1.2).
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_PROGRAM = r"(?P<host>\S+) (?P<program>[^\s\[\]:]+)(?:\[(?P<pid>\d{1,10})\])?: (?P<text>.*)"
_TRADITIONAL = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d)(?:\.\d{1,9})? "
    + _PROGRAM
)
_ISO = re.compile(
    r"(?P<stamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) " + _PROGRAM
)
# The filter's own format (mailgate.logs): local time, milliseconds, no host.
_OWN = re.compile(
    r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) "
    r"(?P<program>[^\s\[\]:]+)\[(?P<pid>\d{1,10})\]: (?P<text>.*)"
)
# What follows the filter's prefix: "INFO filter.service: <message>".
_LEVEL = re.compile(r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<logger>[\w.]+): (?P<text>.*)")


@dataclass(frozen=True, slots=True)
class Line:
    """One log line's frame: when (Unix time), where, who, and what it says."""

    at: float
    host: str
    program: str
    pid: int
    text: str


class YearGuess:
    """The year of a syslog date that has none, from when its file was last written.

    A line is never written after its file's last write (``reference``, the
    file's mtime), so a date later than that (by more than :data:`SKEW`) is last
    year's: a ``mail.log.1`` rotated on 2 January holds ``Dec 31`` lines of the
    year before and ``Jan  1`` lines of the new one.  Dates are local time, as
    syslog and Postfix's ``postlogd`` write them.
    """

    def __init__(self, reference: float) -> None:
        self.reference = reference
        self._year = time.localtime(reference).tm_year
        self._last: tuple[str, float] = ("", 0.0)

    def stamp(self, month: int, day: int, hms: str) -> float:
        """The Unix time of ``month``/``day`` ``HH:MM:SS``, this year or last."""
        hour, minute, second = (int(part) for part in hms.split(":"))
        when = time.mktime((self._year, month, day, hour, minute, second, 0, 0, -1))
        if when > self.reference + SKEW:
            when = time.mktime((self._year - 1, month, day, hour, minute, second, 0, 0, -1))
        return when

    def parse(self, mon: str, day: str, hms: str) -> float | None:
        """:meth:`stamp` for a line's text fields (None for a month that is not one)."""
        key = f"{mon} {day} {hms}"
        if key == self._last[0]:  # lines come in bursts within one second
            return self._last[1]
        month = _MONTHS.get(mon)
        if month is None or not 1 <= int(day) <= 31:
            return None
        when = self.stamp(month, int(day), hms)
        self._last = (key, when)
        return when


def parse_line(text: str, years: YearGuess) -> Line | None:
    """A line of a log file (syslog, Postfix's ``maillog_file``, the filter's own), or None."""
    if len(text) > MAX_LINE:
        return None
    text = text.rstrip("\r\n")
    if (match := _TRADITIONAL.fullmatch(text)) is not None:
        at = years.parse(match["mon"], match["day"], match["hms"])
        if at is None:
            return None
    elif (match := _ISO.fullmatch(text)) is not None:
        try:
            at = datetime.fromisoformat(match["stamp"].replace(",", ".")).timestamp()
        except ValueError:
            return None
    elif (own := _OWN.fullmatch(text)) is not None:
        at = _own_stamp(own["stamp"], own["ms"])
        if at is None:
            return None
        return Line(at, "", own["program"], int(own["pid"]), own["text"])
    else:
        return None
    return Line(at, match["host"], match["program"], int(match["pid"] or 0), match["text"])


def _own_stamp(stamp: str, ms: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp() + int(ms) / 1000
    except ValueError:
        return None


def parse_journal(record: str) -> Line | None:
    """One line of ``journalctl -o json``, or None (not JSON, no message, a field missing).

    A message that was not UTF-8 comes as a list of byte values; it is decoded
    with each bad byte as ``\\xNN`` text.
    """
    if len(record) > MAX_LINE:
        return None
    try:
        fields = json.loads(record)
        micros = int(fields["__REALTIME_TIMESTAMP"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(fields, dict):
        return None
    message = fields.get("MESSAGE")
    if isinstance(message, list) and all(isinstance(b, int) and 0 <= b < 256 for b in message):
        message = bytes(message).decode("utf-8", "backslashreplace")
    program = fields.get("SYSLOG_IDENTIFIER") or fields.get("_COMM") or ""
    pid = fields.get("SYSLOG_PID") or fields.get("_PID") or "0"
    host = fields.get("_HOSTNAME") or ""
    if not (isinstance(message, str) and isinstance(program, str) and isinstance(host, str)):
        return None
    try:
        number = int(pid) if isinstance(pid, str) else 0
    except ValueError:
        number = 0
    return Line(micros / 1e6, host, program, number, message.rstrip("\n"))


_NOTHING: Mapping[str, str] = MappingProxyType({})  # one empty, read-only mapping for all


class Kind(enum.Enum):
    """What one event says about a message."""

    CLIENT = "client"
    """smtpd took a message from a client: ``text`` the client, ``user`` the SASL login,
    ``prev_id`` the queue id it had before (XFORWARD's ``orig_queue_id``: re-injected)."""
    PICKUP = "pickup"
    """Submitted on this host (``sendmail``): ``text`` the uid."""
    MESSAGE_ID = "message-id"
    QUEUED = "queued"
    """qmgr has it: ``sender``, ``size``, ``text`` the recipient count."""
    DELIVERY = "delivery"
    """One recipient's attempt: ``status`` sent, deferred, bounced, expired, undeliverable;
    ``relay``; ``text`` the reply; ``next_id`` the queue id in a ``queued as`` reply."""
    EXPIRED = "expired"
    """qmgr gave up on the message (``maximal_queue_lifetime``) and returned it."""
    NOTIFICATION = "notification"
    """bounce sent a notice about it (``text`` which) as the new message ``next_id``."""
    REMOVED = "removed"
    """It left the queue (qmgr: done; postsuper: deleted by an administrator)."""
    QUEUE_ACTION = "queue-action"
    """postsuper: ``text`` "placed on hold", "released from hold" or "requeued"."""
    REJECT = "reject"
    """smtpd or cleanup refused, discarded, held or redirected it (``status`` the action,
    ``text`` what and why); with the queue id "" when it never got one (``NOQUEUE``)."""
    SCANNED = "scanned"
    """mail-filter's summary line: ``status`` the result, ``text`` the reply to Postfix."""
    FILTER_NOTE = "filter-note"
    """Another mail-filter line about the message (a retry already held, a DSN sent)."""
    AUDIT = "audit"
    """A quarantine action (``status`` the action, ``text`` the result), ``user`` by whom."""
    HELD = "held"
    """Read from the quarantine, not the log: what the entry says."""
    RELEASED = "released"
    """Read from the quarantine: a recorded release (``text`` the server's reply)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a message; fields a kind does not use stay empty."""

    at: float
    kind: Kind
    queue_id: str = ""
    program: str = ""
    pid: int = 0
    line: str = ""
    """The log line's message as written (for ``--lines`` and to drop duplicates)."""
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    text: str = ""
    status: str = ""
    relay: str = ""
    user: str = ""
    method: str = ""
    message_id: str = ""
    next_id: str = ""
    prev_id: str = ""
    quarantine_ids: tuple[str, ...] = ()
    filter_id: str = ""
    detail: str = ""
    size: int | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: _NOTHING)
    """What else a line says (the filter's ``virus=``, ``score=``; an audit line's ``why=``)."""


# Postfix queue ids: short ones are upper-case hex; long ones (enable_long_queue_ids) use
# digits and consonants, with "z" between the time and the inode part (postconf(5)).
_LONG = "0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y"
QUEUE_ID = re.compile(rf"[0-9A-F]{{6,16}}|[{_LONG}]{{6,}}z[{_LONG}]{{2,}}")
QUARANTINE_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{10}")
_QUEUE_PREFIX = re.compile(rf"(?P<qid>{QUEUE_ID.pattern}|NOQUEUE): (?P<rest>.*)")
_CLIENT = re.compile(r"client=(?P<client>[^,]*)(?P<rest>.*)")
_SASL_METHOD = re.compile(r", sasl_method=(?P<v>[^,]*)")
_SASL_USER = re.compile(r", sasl_username=(?P<v>.*?)(?=, (?:sasl_sender|orig_queue_id)=|$)")
_ORIG_QUEUE_ID = re.compile(rf", orig_queue_id=(?P<v>{QUEUE_ID.pattern})(?=,|$)")
_PICKUP = re.compile(r"uid=(?P<uid>\d+) from=<(?P<sender>.*)>")
_MESSAGE_ID = re.compile(r"message-id=(?P<id>.*)")
_QUEUED = re.compile(r"from=<(?P<sender>.*)>, size=(?P<size>\d+), nrcpt=(?P<n>\d+)(?: .*)?")
_EXPIRED = re.compile(r"from=<(?P<sender>.*)>, status=expired, returned to sender")
# An address as Postfix logs it: a local part with specials ("<", ">", ",", space) is quoted
# (RFC 5321 4.1.2, Postfix's quote_822_local), so text that looks like Postfix's own fields
# can only stand inside quotes, and a quoted string is taken whole.
_ADDRESS = r'(?:"(?:[^"\\]|\\.)*"|[^"])*?'
# Postfix's fields after the recipient, in the order it writes them (postfix/src/global/
# log_adhoc.c): each value of a fixed shape, so the status is the delivery agent's and
# text quoted from the next hop (the reply, last) cannot stand in for it.
_DELIVERY = re.compile(
    rf"to=<(?P<to>{_ADDRESS})>, (?:orig_to=<(?P<orig>{_ADDRESS})>, )?relay=(?P<relay>[^,]*), "
    r"(?:conn_use=\d+, )?delay=[\d.]+, delays=[\d./]+, dsn=\d\.\d{1,3}\.\d{1,3}, "
    r"status=(?P<status>sent|deferred|bounced|expired|undeliverable|deliverable)"
    r"(?: \((?P<reply>.*)\))?"
)
_NOTIFICATION = re.compile(
    rf"(?P<what>(?:sender|postmaster) (?:non-delivery|delivery status|delay) notification): "
    rf"(?P<id>{QUEUE_ID.pattern})"
)
_ACTION = re.compile(
    r"(?P<action>reject|milter-reject|discard|milter-discard|hold|milter-hold|redirect|filter): "
    r"(?P<what>.*?)(?:; from=<(?P<sender>.*?)> to=<(?P<to>.*?)>"
    r"(?: proto=\S+)?(?: helo=<[^>]*>)?(?:: (?P<tail>.*))?)?"
)
_QUEUED_AS = re.compile(r"\bqueued as (?P<id>[0-9A-Za-z.@_-]{1,64})")
_SAID = re.compile(r"^host \S+ said: (?P<reply>.*?)(?: \(in reply to [^)]*\))?$")

# mail-filter's summary line (filter.message.summary): its format does not change.  The sender
# and recipients are the SMTP client's choice and may hold text like the fields after them
# (the writer only turns '"' into '?').  So the line is read from both ends: the head and
# the tail (size= to reply=) have values of fixed shapes, the tail's quoted values hold no
# '"' and the reply ends the line; no complete tail can start inside an address, since an
# address is followed by '>' and a '"' written by the filter.  What lies between is
# "from=<SENDER> to=<RCPT>,<RCPT>", split at its last "> to=<".
_RESULTS = "clean|spam|virus|banned|unchecked|tempfail|rejected"  # filter.verdicts.Result
_MS = r"(?:\d+\.\d+|-)"
_FILTER_QID = r"[0-9A-Za-z]{1,64}"  # as filter.message.queue_id_of reads it, or "-"
_SUMMARY_HEAD = re.compile(rf"queue_id=(?P<qid>{_FILTER_QID}|-) id=(?P<fid>[0-9a-f]{{12}}) from=<")
_SUMMARY_TAIL = re.compile(
    rf"> size=(?P<size>\d+) result=(?P<result>{_RESULTS})"
    r'(?: virus="(?P<virus>[^"]*)")?(?: unchecked="(?P<unchecked>[^"]*)")?'
    rf"(?: quarantine=(?P<quarantine>{QUARANTINE_ID.pattern}))?"
    r'(?: score=(?P<score>-?\d+\.\d+|-?inf|nan))?(?: spam="(?P<spam>[^"]*)")?'
    rf" clamd_ms={_MS} spamd_ms={_MS} reinject_ms={_MS} total_ms={_MS}"
    r' reply="(?P<reply>[^"]*)"\Z'
)
_SUMMARY_FIELDS = ("virus", "unchecked", "quarantine", "score", "spam")
_HELD_RETRY = re.compile(
    rf"(?P<qid>{_FILTER_QID}|-): already held as (?P<held>{QUARANTINE_ID.pattern})"
    r" \(a retry\)"
)
_FILTER_QID_NOTE = re.compile(rf"queue_id=(?P<qid>{_FILTER_QID}): (?P<note>.*)")
_AUDIT = re.compile(r"quarantine (?P<fields>action=.*)")
_AUDIT_FIELD = re.compile(r'(?P<k>[a-z_]+)=(?P<v>"(?:[^"\\]|\\.)*"|\S*)')


def event_of(line: Line) -> Event | None:
    """The event a Postfix or mail-filter line records, or None if it records none."""
    program = line.program
    if program.startswith("postfix"):  # postfix/smtpd, postfix/submission/smtpd, postfix-b/qmgr
        return _postfix(line, program.rsplit("/", 1)[-1])
    if program.startswith("mail-filter"):  # the daemon, the portal, the CLI's audit lines
        return _filter(line)
    return None  # another program's line is never taken for the filter's, whatever it says


def _postfix(line: Line, daemon: str) -> Event | None:
    # Events are built field by field, not with dataclasses.replace: this runs for every
    # line of a log, and replace() cost as much as the parsing.
    match = _QUEUE_PREFIX.fullmatch(line.text)
    if match is None:
        return None
    qid = "" if match["qid"] == "NOQUEUE" else match["qid"]
    rest, at, pid, raw = match["rest"], line.at, line.pid, line.text
    if (action := _ACTION.fullmatch(rest)) is not None:
        what = action["what"] + (f": {action['tail']}" if action["tail"] else "")
        to = (action["to"],) if action["to"] else ()
        return Event(
            at, Kind.REJECT, qid, daemon, pid, raw, status=action["action"], text=what,
            sender=action["sender"], recipients=to,
        )  # fmt: skip
    if not qid:
        return None
    if (delivery := _DELIVERY.fullmatch(rest)) is not None:
        return _delivery(delivery, line, qid, daemon)
    if rest == "removed":
        return Event(at, Kind.REMOVED, qid, daemon, pid, raw)
    if daemon == "smtpd" and (client := _CLIENT.fullmatch(rest)) is not None:
        more = client["rest"]
        method, user, orig = (p.search(more) for p in (_SASL_METHOD, _SASL_USER, _ORIG_QUEUE_ID))
        return Event(
            at, Kind.CLIENT, qid, daemon, pid, raw, text=client["client"],
            method=method["v"] if method else "", user=user["v"] if user else "",
            prev_id=orig["v"] if orig else "",
        )  # fmt: skip
    if (queued := _QUEUED.fullmatch(rest)) is not None:
        return Event(
            at, Kind.QUEUED, qid, daemon, pid, raw, sender=queued["sender"],
            size=int(queued["size"]), text=queued["n"],
        )  # fmt: skip
    if (mid := _MESSAGE_ID.fullmatch(rest)) is not None:
        message_id = normal_message_id(mid["id"])
        return Event(at, Kind.MESSAGE_ID, qid, daemon, pid, raw, message_id=message_id)
    if (expired := _EXPIRED.fullmatch(rest)) is not None:
        return Event(at, Kind.EXPIRED, qid, daemon, pid, raw, sender=expired["sender"])
    if (notice := _NOTIFICATION.fullmatch(rest)) is not None:
        return Event(
            at, Kind.NOTIFICATION, qid, daemon, pid, raw, text=notice["what"],
            next_id=notice["id"],
        )  # fmt: skip
    if daemon == "pickup" and (pickup := _PICKUP.fullmatch(rest)) is not None:
        return Event(
            at, Kind.PICKUP, qid, daemon, pid, raw, text=pickup["uid"], sender=pickup["sender"]
        )
    if rest in ("placed on hold", "released from hold", "requeued"):
        return Event(at, Kind.QUEUE_ACTION, qid, daemon, pid, raw, text=rest)
    return None


def _delivery(match: re.Match[str], line: Line, qid: str, daemon: str) -> Event:
    reply = match["reply"] or ""
    said = _SAID.match(reply)
    if said is not None:
        reply = said["reply"]  # the relay is shown anyway; "host X said:" only repeats it
    queued = _QUEUED_AS.search(reply)
    recipients = (match["to"],) if not match["orig"] else (match["to"], match["orig"])
    return Event(
        line.at, Kind.DELIVERY, qid, daemon, line.pid, line.text, recipients=recipients,
        relay=match["relay"], status=match["status"], text=reply,
        next_id=queued["id"].rstrip(".") if queued else "",
    )  # fmt: skip


def _filter(line: Line) -> Event | None:
    text = line.text
    if (own := _OWN.fullmatch(text)) is not None:  # the filter's stderr inside a syslog frame
        text = own["text"]
    level = _LEVEL.fullmatch(text)
    message = level["text"] if level is not None else text
    if (scanned := _summary(message, line)) is not None:
        return scanned
    if (audit := _AUDIT.fullmatch(message)) is not None:
        return _audit(audit["fields"], line, message)
    if level is None:
        return None
    if (held := _HELD_RETRY.fullmatch(message)) is not None:
        qid = held["qid"] if held["qid"] != "-" else ""
        return Event(
            line.at, Kind.FILTER_NOTE, qid, "mail-filter", line.pid, message,
            quarantine_ids=(held["held"],), text=f"a retry, already held as {held['held']}",
        )  # fmt: skip
    if (note := _FILTER_QID_NOTE.fullmatch(message)) is not None:
        return Event(
            line.at, Kind.FILTER_NOTE, note["qid"], "mail-filter", line.pid, message,
            text=note["note"],
        )  # fmt: skip
    return None


def _summary(message: str, line: Line) -> Event | None:
    """The summary line's event, or None if ``message`` is not one (see ``_SUMMARY_TAIL``)."""
    head = _SUMMARY_HEAD.match(message)
    if head is None:
        return None
    tail = _SUMMARY_TAIL.search(message, head.end())
    if tail is None:
        return None
    sender, split, to = message[head.end() : tail.start()].rpartition("> to=<")
    if not split:
        return None
    fields = {key: tail[key] for key in _SUMMARY_FIELDS if tail[key] is not None}
    reply = tail["reply"]
    queued = _QUEUED_AS.search(reply) if reply.startswith("250") else None
    held = fields.get("quarantine", "")
    return Event(
        line.at, Kind.SCANNED, head["qid"] if head["qid"] != "-" else "", "mail-filter",
        line.pid, message, sender=sender, recipients=tuple(to.split(">,<")),
        size=int(tail["size"]), status=tail["result"], text=reply, filter_id=head["fid"],
        quarantine_ids=(held,) if held else (), next_id=queued["id"] if queued else "",
        extra=fields,
    )  # fmt: skip


def _audit(text: str, line: Line, message: str) -> Event | None:
    fields: dict[str, str] = {}
    for found in _AUDIT_FIELD.finditer(text):
        value = found["v"]
        if value.startswith('"'):
            try:
                value = str(json.loads(value))
            except ValueError:
                continue
        fields[found["k"]] = value
    ids = tuple(i for i in fields.get("id", "").split(",") if QUARANTINE_ID.fullmatch(i))
    if not ids:
        return None  # a refused link names no entry
    return Event(
        line.at, Kind.AUDIT, "", "mail-filter", line.pid, message,
        status=fields.get("action", ""), text=fields.get("result", ""),
        user=fields.get("by", ""), detail=fields.get("from", ""), quarantine_ids=ids,
        recipients=tuple(a for a in fields.get("to", "").split(", ") if a),
        extra={k: v for k, v in fields.items() if k in ("why", "refused")},
    )  # fmt: skip


def normal_message_id(text: str) -> str:
    """A Message-ID as compared: without its angle brackets and surrounding space."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return text.strip()
