"""One message on its way through the filter: what Postfix handed us, and what happened to it.

This module owns :class:`Message` (the envelope and bytes as received on
127.0.0.1:10024, or for a large message its head and the spool file holding
it), :class:`Trace` (what each step found and how long it took)
and the one summary log line made from both, which operators and fail2ban
read: its format does not change.  It also reads the two things the pipeline
needs from the header: the front Postfix's queue id and the From addresses.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from filter import headers
from filter.spool import Spool, Tail
from filter.verdicts import Category, Result

# Postfix folds its Received field before "by": the client's HELO (on the first line)
# cannot reach the "by" line, so the id read there is Postfix's own.
_QUEUE_ID_BY = re.compile(rb"\n[ \t]+by [^\r\n]*?\(Postfix\) with \S+ id ([0-9A-Za-z]{6,})\b")
# An unfolded field (another MTA, or one written by hand): the last "id" on it.
_QUEUE_ID = re.compile(rb"\bid\s+([0-9A-Za-z]{6,})\b")


@dataclass(frozen=True)
class Message:
    """One message as Postfix handed it to us."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    smtputf8: bool = False
    helo: str = ""
    peer: str = ""
    xforward: Mapping[str, str] = field(default_factory=dict)
    dot_lines: bool = field(default=True, compare=False)  # a hint, not the message
    """False when no line of ``data`` starts with a dot (as the DATA decoder saw it); our
    marks never start one, so the re-injection need not look for them."""
    spool: Spool | None = field(default=None, compare=False)
    """A message over ``server.spool_threshold``: the whole message is in this file, and
    ``data`` holds only its head (:func:`filter.spool.head_length`)."""

    @property
    def size(self) -> int:
        """The whole message's size in bytes (``data`` may be only its head)."""
        return self.spool.size if self.spool is not None else len(self.data)

    @property
    def source(self) -> bytes | Spool:
        """The whole message as a scanner reads it: the bytes, or the spool file."""
        return self.spool if self.spool is not None else self.data

    @property
    def head_cut(self) -> bool:
        """Whether ``data`` ends inside the header section: a spooled message whose header
        section is longer than :data:`filter.spool.HEAD_LIMIT`."""
        if self.spool is None or len(self.data) >= self.spool.size:
            return False
        header, rest = headers.split(self.data)
        return bool(header) and not rest

    def tail(self, remove_prefixes: tuple[bytes, ...] = ()) -> Tail | None:
        """What follows ``data`` in a spooled message (None for one held in memory).

        ``remove_prefixes``: the field names marking removes from the head, removed from
        the tail too when the head was cut inside the header section."""
        if self.spool is None:
            return None
        return Tail(self.spool, len(self.data), remove_prefixes if self.head_cut else ())

    def whole(self) -> bytes:
        """The whole message in memory: read back from the spool only when asked (spamd,
        within its size limit)."""
        if self.spool is None:
            return self.data
        return self.spool.read(0, self.spool.size)


@dataclass
class Trace:
    """What happened to one message, for the summary log line."""

    queue_id: str = "-"
    filter_id: str = ""
    virus: str = ""
    unchecked: str = ""  # what could not be inspected, when that decided the category
    score: float | None = None
    spam_note: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    downstream: str = ""
    quarantine_id: str = ""
    category: Category = Category.CLEAN


def queue_id_of(data: bytes) -> str:
    """The front Postfix's queue id, from the topmost Received field (``... id 4Xyz...``)."""
    received = headers.first_field(data, b"received")
    if received:
        match = _QUEUE_ID_BY.search(received)
        if match is None:
            ids = _QUEUE_ID.findall(received.split(b"\n", 1)[0])
            return ids[-1].decode("ascii") if ids else "-"
        return match.group(1).decode("ascii")
    return "-"


def from_addresses(data: bytes) -> list[str]:
    """Addresses in the From field(s), for list lookups (never raises)."""
    field = headers.first_field(data, b"from")
    if field is None:
        return []
    value = field.split(b":", 1)[1].decode("latin-1")
    return [addr for _, addr in email.utils.getaddresses([value]) if "@" in addr]


def summary(msg: Message, trace: Trace, result: Result, reply: str) -> str:
    """The one log line per message (``queue_id=... result=... reply="..."``)."""
    ms = {k: f"{v * 1000:.1f}" for k, v in trace.timings.items()}
    rcpts = ",".join(f"<{_clean(r)}>" for r in msg.rcpt_tos)
    virus = f' virus="{_clean(trace.virus)}"' if trace.virus else ""
    if trace.unchecked:
        virus += f' unchecked="{_clean(trace.unchecked)}"'
    held = f" quarantine={trace.quarantine_id}" if trace.quarantine_id else ""
    score = f" score={trace.score:.3f}" if trace.score is not None else ""
    spam = f' spam="{trace.spam_note}"' if trace.spam_note else ""
    return (
        f"queue_id={trace.queue_id} id={trace.filter_id} from=<{_clean(msg.mail_from)}>"
        f" to={rcpts} size={msg.size} result={result.value}{virus}{held}{score}{spam}"
        f" clamd_ms={ms.get('clamd', '-')} spamd_ms={ms.get('spamd', '-')}"
        f" reinject_ms={ms.get('reinject', '-')} total_ms={ms.get('total', '-')}"
        f' reply="{_clean(reply)}"'
    )


def _clean(text: str) -> str:
    if text.isprintable() and '"' not in text:
        return text  # the usual case, without a loop over the characters
    return "".join(c if c.isprintable() and c != '"' else "?" for c in text)
