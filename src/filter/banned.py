"""Banned attachments, and what could not be inspected: names, types, archive members.

This module owns finding what a message carries (every MIME part's file names,
declared types and, from its bytes, detected type; and the members of
archives, nested, within bounds) and deciding whether any of it is banned, or
could not be fully inspected (amavisd-new's "unchecked").  Pure: bytes in, an
:class:`Inspection` out; nothing here raises on message content.

It reads MIME the way the most permissive mail client might, because a part a
client shows is a part we must have judged:

- the structure is walked iteratively over the raw bytes (an explicit stack, a
  depth limit), so 2,000 nested multiparts cost no recursion;
- every Content-Type and Content-Disposition field of a part counts, with every
  ``name``/``filename`` and ``boundary`` parameter (RFC 2231 continuations and
  charsets collapsed, RFC 2047 encoded words decoded, B and Q, any charset): a
  part with two boundaries is split both ways, and banned if either reading is;
- ``Content-Transfer-Encoding`` values are normalised (``base-64``, ``Base_64``);
- archives are found by signature, at the start or after a prefix, whatever the
  part is called, and listed by libarchive (zip, 7z, rar, tar, cab, arj; gzip,
  bzip2 and xz are unwrapped by the standard library first).

Past a limit (:class:`Limits`: archive depth, MIME depth, members, bytes
unpacked, seconds), on an encrypted or unreadable archive, or on a part named
like an archive that is none we can read, the message is "unchecked" -- never
clean.  Opening archives can cost far more than parsing (up to
``max_unpacked`` bytes inflated from a few kilobytes), so a caller that must
stay responsive can ask not to open them (``open_archives=False``) and learn
from :class:`ArchiveInside` when it must ask again where blocking does not matter.

The pieces live in their own modules: :mod:`filter.mimeparts` (header fields,
parameters, entities and bodies), :mod:`filter.signatures` (types and archives
told from bytes), :mod:`filter.archives` (archive members) and
:mod:`filter.findings` (the shared types and budgets).  This module walks the
MIME structure and gives the verdict; what callers import from it stays here.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from filter.archives import archive_members
from filter.findings import Gap, Item, Limits, OutOfTime, WalkState
from filter.mimeparts import (
    HeadFields,
    body_parts,
    decode_body,
    decode_words,
    head_fields,
    may_nest,
    parse,
    split_entity,
)
from filter.signatures import ARCHIVE_SUFFIXES, detect, encrypted_document, sniff

__all__ = [
    "DEFAULT_NAMES",
    "DEFAULT_TYPES",
    "MAX_DEPTH",
    "MAX_MEMBERS",
    "MAX_UNPACKED",
    "ArchiveInside",
    "Gap",
    "Inspection",
    "Item",
    "Limits",
    "decode_words",
    "detect",
    "find_banned",
    "inspect",
    "items",
    "may_nest",
    "name_banned",
    "parse",
    "sniff",
]

DEFAULT_NAMES = (
    "*.exe", "*.scr", "*.pif", "*.bat", "*.cmd", "*.com", "*.js", "*.jse", "*.vbs", "*.vbe",
    "*.wsf", "*.wsh", "*.jar", "*.lnk", "*.hta", "*.cpl", "*.msi", "*.ps1", "*.reg",
    # Double extensions that hide an executable behind a harmless one.
    "*.pdf.*", "*.doc.*", "*.docx.*", "*.xls.*", "*.xlsx.*", "*.jpg.*", "*.txt.*", "*.zip.*",
)  # fmt: skip
DEFAULT_TYPES = (
    "application/x-msdownload", "application/x-msdos-program", "application/x-dosexec",
    "application/x-executable", "application/hta", "application/x-ms-shortcut",
    "application/java-archive", "application/x-sh",
)  # fmt: skip
# Harmless second extensions that the double-extension patterns must not catch.
_SAFE_SECOND = frozenset({"gz", "bz2", "xz", "asc", "sig", "p7s"})

# The default limits: one frozen instance, shared by every call.
_LIMITS = Limits()

# Module-level names kept for callers that read the old constants.
MAX_DEPTH = Limits.max_depth
MAX_MEMBERS = Limits.max_members
MAX_UNPACKED = Limits.max_unpacked


class ArchiveInside(Exception):
    """The message holds an archive and ``open_archives=False`` forbade looking inside."""


@dataclass(frozen=True)
class Inspection:
    """What the check found: a banned reason, else an unchecked reason; both "" when clean."""

    banned: str = ""
    unchecked: str = ""


# ---------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------

_LONE_CR = re.compile(rb"\r(?!\n)")


# How many times its own size, beyond one read per nesting level, the walk may read
# of one message, every reading of an ambiguous part included.
WALK_FACTOR = 20


def items(
    message: bytes,
    *,
    open_archives: bool = True,
    limits: Limits = _LIMITS,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Item | Gap]:
    """Every attachment-like thing in the message, archive members included, and every gap.

    With ``open_archives=False``, raises :class:`ArchiveInside` where archive
    members would come next.
    """
    state = WalkState(limits, clock, open_archives)
    readings = [message]
    if _LONE_CR.search(message):
        # A lone CR ends a line for Python's email parser and for some clients, not for
        # our line-based walk: a boundary line ended by one would hide the parts after
        # it.  Such a message is also walked with every lone CR read as a line end.
        readings.append(_LONE_CR.sub(b"\r\n", message))
    try:
        for reading in readings:
            yield from _walk(reading, state)
    except OutOfTime:
        yield Gap(f"inspection took longer than {limits.max_seconds:g} s")


def _walk(message: bytes, state: WalkState) -> Iterator[Item | Gap]:
    # (entity bytes, MIME depth, where); popped last-first, so children are pushed reversed.
    stack: list[tuple[bytes, int, str]] = [(message, 0, "part 0")]
    number = 0
    # Every reading of an ambiguous part (two boundaries, two types) walks its bytes
    # again, and readings nest: bound the bytes walked, not only the parts.  Plain
    # nesting reads each level's bytes once per level, hence the depth in the factor.
    factor = state.limits.max_mime_depth + WALK_FACTOR
    budget = factor * len(message) + (1 << 20)
    while stack:
        entity, depth, where = stack.pop()
        if state.late():
            raise OutOfTime
        budget -= len(entity)
        if budget < 0:
            yield Gap(f"MIME structure read over {factor} times its size (ambiguous parts)")
            return
        if number > state.limits.max_parts:
            yield Gap(f"more than {state.limits.max_parts} MIME parts")
            return
        head, body = split_entity(entity)
        fields = head_fields(head) if head else HeadFields((), (), (), (), False)
        if fields.problem:
            yield Gap(f"{fields.problem} at {where}")
        containers: list[bytes] = []
        leaf = True
        if any(t.startswith("multipart/") for t in fields.types):
            readings = [c for b in fields.boundaries if (c := body_parts(body, b)) is not None]
            for children in readings:
                containers += children
            # Declared multipart and split by a boundary: not also a leaf, unless another
            # Content-Type says it is one (then both readings are judged).
            leaf = not readings or any(
                not t.startswith(("multipart/", "message/")) for t in fields.types
            )
        if fields.message_types:
            containers += [decode_body(body, e) for e in fields.encodings or ("",)]
        if containers and depth >= state.limits.max_mime_depth:
            yield Gap(f"MIME nested deeper than {state.limits.max_mime_depth} at {where}")
            containers = []
        numbered = [(c, f"part {number + n}") for n, c in enumerate(dict.fromkeys(containers), 1)]
        number += len(numbered)
        stack += [(child, depth + 1, label) for child, label in reversed(numbered)]
        if leaf:
            yield from _leaf(fields, body, where, state, sniff_content=not fields.message_types)


def _leaf(
    fields: HeadFields, body: bytes, where: str, state: WalkState, *, sniff_content: bool
) -> Iterator[Item | Gap]:
    names = fields.names
    label = where + (f" ({names[-1]})" if names else "")
    datas = [decode_body(body, e) for e in fields.encodings or ("",)]
    for data in dict.fromkeys(datas) if len(datas) > 1 else datas:
        yield Item(names, fields.types or ("text/plain",), detect(data[:16]), where)
        if not sniff_content:
            continue
        sealed = encrypted_document(data)
        if sealed:
            yield Gap(f"{label}: {sealed}")
        found = sniff(data)
        if found is None:
            if any(n.lower().rstrip(". ").endswith(ARCHIVE_SUFFIXES) for n in names):
                yield Gap(f"{label}: named like an archive, but no archive it can read")
            continue
        if not state.open_archives:
            raise ArchiveInside(where)
        kind, at = found
        yield from archive_members(kind, data[at:], label, names[-1] if names else "", 1, state)


# ---------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------


def name_banned(name: str, patterns: Sequence[str]) -> str | None:
    """The first of ``patterns`` that bans a part named ``name``, or None."""
    # Windows drops trailing dots and spaces: "evil.exe. " runs as evil.exe.
    lowered = name.lower().strip().rstrip(". ")
    for pattern in patterns:
        if fnmatch.fnmatchcase(lowered, pattern):
            last = lowered.rsplit(".", 1)[-1]
            if pattern.count(".") > 1 and last in _SAFE_SECOND:
                continue  # report.pdf.gz is a compressed PDF, not a disguised program
            return pattern
    return None


def inspect(
    message: bytes,
    names: Sequence[str] = DEFAULT_NAMES,
    types: Sequence[str] = DEFAULT_TYPES,
    *,
    open_archives: bool = True,
    limits: Limits = _LIMITS,
    clock: Callable[[], float] = time.monotonic,
) -> Inspection:
    """Whether the message is banned, else whether part of it could not be inspected.

    A banned thing anywhere wins over a gap (it is the graver category), so the
    walk goes on after a gap.  With ``open_archives=False`` the answer is the
    same whenever there is one; :class:`ArchiveInside` is raised when it
    depends on an archive's members.
    """
    banned_types = {t.lower() for t in types}
    unchecked = ""
    for found in items(message, open_archives=open_archives, limits=limits, clock=clock):
        if isinstance(found, Gap):
            unchecked = unchecked or found.reason
            continue
        for name in found.names:
            pattern = name_banned(name, names)
            if pattern:
                return Inspection(banned=f"name {name!r} matches {pattern} in {found.where}")
        for kind, value in [("declared", d) for d in found.declared] + [
            ("detected", found.detected)
        ]:
            if value.lower() in banned_types:
                return Inspection(banned=f"{kind} type {value} in {found.where}")
    return Inspection(unchecked=unchecked)


def find_banned(
    message: bytes,
    names: Sequence[str] = DEFAULT_NAMES,
    types: Sequence[str] = DEFAULT_TYPES,
    *,
    open_archives: bool = True,
) -> str | None:
    """Why the message is banned ("name x.exe matches *.exe in part 2"), or None.

    With ``open_archives=False`` the answer is the same whenever there is one;
    :class:`ArchiveInside` is raised when it depends on an archive's members.
    """
    return inspect(message, names, types, open_archives=open_archives).banned or None
