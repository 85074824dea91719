"""The marks: every header field the filter adds to or removes from a message it passes.

This module owns what the marks say and how they look: our ``Received``
line, ``X-Virus-Scanned``, ``X-Quarantine-ID`` on held copies, the
``X-Spam-*`` fields in amavisd-new's formats, the subject tag, and the removal
of every field of those families a sender put in (:data:`SPAM_PREFIXES`,
:data:`OWN_PREFIXES`) before ours are added.  Which of them a recipient's copy gets
is :mod:`filter.policy`'s decision; the byte-level editing is
:mod:`filter.headers`'.  Marking touches only the header section, which is
why the re-injection's dot-stuffing hint survives it (:func:`dot_lines`).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence

from filter import headers
from filter.config import PolicyConfig
from filter.message import Message

Fields = tuple[tuple[str, str], ...]

SPAM_HEADERS = (
    b"x-spam-flag",
    b"x-spam-score",
    b"x-spam-level",
    b"x-spam-status",
    b"x-spam-skipped",
)
"""The X-Spam-* fields we write (kept for callers; removal goes by :data:`SPAM_PREFIXES`)."""

SPAM_PREFIXES = (b"x-spam-",)
"""Removed from incoming mail with ``policy.remove_existing_spam_headers`` (the default):
every X-Spam-* field, not only the ones we write, since SpamAssassin and amavisd-new
write others (X-Spam-Report, X-Spam-Checker-Version) that mail clients also trust."""
OWN_PREFIXES = (b"x-virus-", b"x-quarantine-")
"""Always removed from incoming mail: X-Virus-Scanned and X-Quarantine-ID are ours to
write, and a forged one would claim a scan or a quarantine entry that never happened.
Every field :class:`Marker` adds except Received (one per hop, RFC 5321 4.4) and
Subject (tagged in place) matches one of these prefixes or :data:`SPAM_PREFIXES`
(``tests/filter/test_headers.py`` checks)."""


def spam_headers(
    score: float,
    rules: Sequence[str],
    spam_at: float,
    tag: float,
    tag2: float,
    note: str = "",
) -> Fields:
    """X-Spam-Flag, -Score, -Level and -Status in amavisd-new's formats.

    ``spam_at`` is the score from which the flag says YES (tag2, or +-inf for
    black- and whitelisted senders); ``tag`` is what ``tagged_above=`` shows and
    ``tag2`` what ``required=`` shows (the recipient's levels).
    """
    is_spam = score >= spam_at
    stars = "*" * max(0, min(64, int(score)))
    tests = ", ".join(rules)
    status = (
        f"{'Yes' if is_spam else 'No'}, score={score:.3f} tagged_above={tag:g}"
        f" required={tag2:g} tests=[{tests}]{' ' + note if note else ''}"
    )
    return (
        ("X-Spam-Flag", "YES" if is_spam else "NO"),
        ("X-Spam-Score", f"{score:.3f}"),
        ("X-Spam-Level", stars),
        ("X-Spam-Status", status),
    )


UNCHECKED_HEADER = "X-Virus-Unchecked"
"""Says why a message passed to an unchecked lover, or held, was not fully inspected."""


def unchecked_headers(reason: str) -> Fields:
    """Our field naming what could not be inspected (control characters made spaces)."""
    return ((UNCHECKED_HEADER, "".join(c if c.isprintable() else " " for c in reason)[:300]),)


class Marker:
    """Marks copies of messages for one configuration."""

    def __init__(self, policy: PolicyConfig, hostname: str) -> None:
        self.hostname = hostname
        self.scanner_name = policy.scanner_name
        self.scanned = f"by {policy.scanner_name} at {hostname}"
        self.remove_prefixes = OWN_PREFIXES + (
            SPAM_PREFIXES if policy.remove_existing_spam_headers else ()
        )

    def mark(
        self,
        msg: Message,
        filter_id: str,
        fields: Fields = (),
        subject_prefix: str = "",
        quarantine_id: str = "",
    ) -> bytes:
        """The message with our fields on top (``fields``: policy's X-Spam-*), tagged subject."""
        prepend = [
            ("Received", self.received(msg, filter_id)),
            ("X-Virus-Scanned", self.scanned),
        ]
        if quarantine_id:
            prepend.append(("X-Quarantine-ID", f"<{quarantine_id}>"))
        prepend += fields
        return headers.edit(
            msg.data, prepend, subject_prefix=subject_prefix, remove_prefixes=self.remove_prefixes
        )

    def received(self, msg: Message, filter_id: str) -> str:
        """Our Received field's value (RFC 5321 4.4): the hop from Postfix through us."""
        peer_ip = msg.peer.strip("[]")
        helo = _printable(msg.helo) or "unknown"
        rcpt = f" for <{_printable(msg.rcpt_tos[0])}>" if len(msg.rcpt_tos) == 1 else ""
        return (
            f"from {helo} ([{peer_ip}]) by {self.hostname} ({self.scanner_name})"
            f" with ESMTP id {filter_id}{rcpt}; {_date_now()}"
        )


def _printable(text: str) -> str:
    """``text`` with every character that is not printable as ``?``.

    The EHLO name is the client's to choose: a CR, LF or NUL (or another control
    character, or a byte that was not UTF-8) copied into our Received field would
    end the field or start a forged one (RFC 5322 2.2 forbids CR and LF there).
    """
    if text.isprintable():
        return text  # the usual case, without a loop over the characters
    return "".join(c if c.isprintable() else "?" for c in text)


def dot_lines(msg: Message, marked: bytes) -> bool:
    """Whether a line of the marked message may start with a dot (see smtp_out.dot_stuff).

    Marking rewrites only the header section and keeps the rest byte for byte, so
    a new line start can only appear there: where a removed field had ended in a
    lone CR, say, which joins ``\r`` and a following ``.`` line into CRLF-dot.
    """
    if msg.dot_lines:
        return True
    rest = headers.split(msg.data)[1]
    return marked.find(b"\r\n.", 0, len(marked) - len(rest) + 2) >= 0


_date_cache: tuple[int, str] = (-1, "")


def _date_now() -> str:
    """``email.utils.formatdate(localtime=True)``, computed once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(second, localtime=True))
    return _date_cache[1]
