"""The enums that cross the filter's layers: what a message is, what becomes of it, the result.

This module owns three small fixed sets.  :class:`Category` is what the
scanners found (amavisd-new's ranking); :class:`Destiny` is what policy does
with it for one recipient (``[policy] *_destiny`` in ``conf/filter.toml``,
parsed to this enum when the file is loaded); :class:`Result` is the answer's
label in the summary log line (``result=``) and the ``outcome`` label of
``mailfilter_messages_total``.  Their values are the strings on disk, in logs
and in metrics, so none of those change.  Pure: no imports from the filter.
"""

from __future__ import annotations

import enum


class Category(enum.Enum):
    """What a message is, most severe first, as amavisd-new ranks them."""

    VIRUS = "virus"
    BANNED = "banned"
    UNCHECKED = "unchecked"
    """Part of it could not be fully inspected (limits, encryption, unreadable archive or MIME)."""
    SPAM = "spam"
    SPAMMY = "spammy"
    BAD_HEADER = "bad_header"
    CLEAN = "clean"


class Destiny(enum.StrEnum):
    """What happens to a message for one recipient (amavisd-new's D_PASS, D_DISCARD, ...)."""

    PASS = "pass"  # noqa: S105 - a destiny, not a password
    """Delivered, with our marks."""
    DISCARD = "discard"
    """Dropped (after the quarantine, if it holds the category); the sender hears nothing."""
    REJECT = "reject"
    """554 to Postfix when every recipient rejects it (Postfix bounces); else our DSN."""
    BOUNCE = "bounce"
    """Dropped, and the sender gets our DSN (never for viruses or spam above the DSN cutoff)."""


class Result(enum.Enum):
    """How the filter answered one message (logs, metrics): a small fixed set."""

    CLEAN = "clean"
    SPAM = "spam"
    VIRUS = "virus"
    BANNED = "banned"
    UNCHECKED = "unchecked"
    TEMPFAIL = "tempfail"
    REJECTED = "rejected"


RESULT_OF = {
    Category.VIRUS: Result.VIRUS,
    Category.BANNED: Result.BANNED,
    Category.UNCHECKED: Result.UNCHECKED,
    Category.SPAM: Result.SPAM,
    Category.SPAMMY: Result.SPAM,
    Category.BAD_HEADER: Result.CLEAN,
    Category.CLEAN: Result.CLEAN,
}
"""The result label of a message by its worst category (a bad header is counted clean)."""

DESCRIPTION = {
    Category.VIRUS: "INFECTED",
    Category.BANNED: "BANNED",
    Category.UNCHECKED: "UNCHECKED",
    Category.SPAM: "SPAM",
    Category.SPAMMY: "SPAMMY",
    Category.BAD_HEADER: "BAD-HEADER",
    Category.CLEAN: "CLEAN",
}
"""How our replies and DSNs name a category (amavisd-new's words)."""

SEVERITY = {category: rank for rank, category in enumerate(Category)}
"""Rank of each category, 0 the most severe."""
