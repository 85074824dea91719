"""A bounded view of a spooled message's MIME structure, for the banned-part check.

A message too large to hold in memory (:mod:`filter.spool`) is read once, in
chunks, and rewritten as a small message of the same structure: every header
section of every part kept byte for byte, every boundary line kept, and each
leaf part's body cut to its first :data:`KEEP` bytes (enough for
:func:`filter.banned.detect` to sniff its type) -- except a part that may be
an archive, kept whole up to :data:`ARCHIVE_KEEP` bytes so its members can be
listed.  :func:`filter.banned.inspect` then judges the view exactly as it
judges a small message: same names, same declared types, same parts.

Boundaries are found as the ``email`` parser finds them (a line ``--B`` or
``--B--`` of any multipart still open, RFC 2046 5.1.1), and bodies that are
not kept are skipped by searching for the next line that starts with ``--``,
not line by line.

What the view cannot hold is never passed as inspected: a header section over
:data:`HEADER_LIMIT`, more than :data:`MAX_PARTS` parts, nesting deeper than
:data:`MAX_DEPTH`, an archive over :data:`ARCHIVE_KEEP` -- the answer is then
``unchecked`` ("not inspected: ..."), held like anything else the filter could
not fully inspect.  (A signature the small path would find deep inside a part
that does not look like an archive at its start is beyond the view.)
"""

from __future__ import annotations

import binascii
import email
import email.policy
import quopri
import threading
from collections.abc import Iterator, Sequence
from email.message import Message

from filter.banned import DEFAULT_NAMES, DEFAULT_TYPES, Inspection, Limits, inspect
from filter.spool import Spool

KEEP = 4096
"""Bytes of each leaf part's (encoded) body kept: past tar's signature at 257 once decoded."""
ARCHIVE_KEEP = 8 * 1024 * 1024
"""Bytes of a part that may be an archive kept whole, for its members to be listed."""
HEADER_LIMIT = 256 * 1024
VIEW_LIMIT = 24 * 1024 * 1024
"""The whole view at most (headers, kept bodies, archives)."""
MAX_PARTS = 10_000
MAX_DEPTH = 64
LINE_LIMIT = 64 * 1024
"""A "line" longer than this is taken in pieces (none arrives over SMTP: 1,000 at most)."""

_ARCHIVE_NAMES = (
    ".zip", ".7z", ".rar", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".cab", ".arj", ".jar",
    ".lzh", ".ace", ".iso", ".z", ".tbz", ".txz", ".docm", ".xlsm",
)  # fmt: skip
_ARCHIVE_TYPES = ("zip", "compress", "archive", "7z", "rar", "tar", "gzip", "bzip", "xz", "cab")
_SIGNATURES = (b"PK\x03\x04", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"\xfd7zXZ", b"MSCF", b"ustar")
"""Found anywhere in a part's first bytes (a prefix does not hide an archive)."""
_SHORT_SIGNATURES = (b"\x1f\x8b", b"BZh", b"\x60\xea")
"""gzip, bzip2, arj: too short to look for anywhere, only at the start."""

# One big view (an archive kept whole) judged at a time: its parse holds a few copies.
_BIG = threading.Lock()
_BIG_VIEW = 1024 * 1024


class Uninspectable(Exception):
    """The view cannot show the message as it is; the text says why."""


class _View(list[bytes]):
    """The view's pieces, with their total size held to :data:`VIEW_LIMIT`."""

    size = 0

    def keep(self, pieces: Sequence[bytes]) -> None:
        """Add pieces to the view."""
        self.extend(pieces)
        self.size += sum(map(len, pieces))
        if self.size > VIEW_LIMIT:
            raise Uninspectable(f"a view over {VIEW_LIMIT} bytes")


class _Lines:
    """A spooled message's lines (ends kept), with a quick skip to the next ``--`` line."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""
        self.pos = 0

    def _more(self) -> bool:
        piece = next(self.chunks, b"")
        if not piece:
            return False
        self.buf = self.buf[self.pos :] + piece
        self.pos = 0
        return True

    def line(self) -> bytes:
        """The next line with its line end (b"" at the end of the message)."""
        while True:
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                line = self.buf[self.pos : end + 1]
                self.pos = end + 1
                return line
            if len(self.buf) - self.pos > LINE_LIMIT or not self._more():
                line = self.buf[self.pos :]
                self.buf, self.pos = b"", 0
                return line

    def skip_to_dashes(self) -> None:
        """Move to the next line that starts with ``--`` (or the end), from a line start."""
        if self.buf.startswith(b"--", self.pos):
            return
        while True:
            found = self.buf.find(b"\n--", self.pos)
            if found >= 0:
                self.pos = found + 1
                return
            # Keep the last byte: it may be the line feed before a "--" in the next chunk.
            self.pos = max(self.pos, len(self.buf) - 1)
            if not self._more():
                self.buf, self.pos = b"", 0
                return


def _decoded_head(lines: Sequence[bytes], encoding: str) -> bytes:
    raw = b"".join(lines)
    try:
        if encoding == "base64":
            joined = b"".join(raw.split())
            return binascii.a2b_base64(joined[: len(joined) // 4 * 4])
        if encoding == "quoted-printable":
            return quopri.decodestring(raw)
    except (binascii.Error, ValueError):
        return b""
    return raw


def _may_be_archive(part: Message) -> bool:
    names = [part.get_filename() or "", str(part.get_param("name") or "")]
    if any(str(n).lower().strip().rstrip(".").endswith(_ARCHIVE_NAMES) for n in names):
        return True
    return any(word in part.get_content_type() for word in _ARCHIVE_TYPES)


def _sniffs_as_archive(head: bytes) -> bool:
    return head.startswith(_SHORT_SIGNATURES) or any(sig in head for sig in _SIGNATURES)


def view(spool: Spool) -> bytes:
    """The bounded view of the message (see the module docstring); raises Uninspectable."""
    lines = _Lines(spool.chunks())
    out = _View()
    stack: list[bytes] = []  # "--boundary" of each multipart still open, outermost first
    parts = attached = 0
    while True:  # one header section (of the message, a part, or an attached message)
        header: list[bytes] = []
        size = 0
        ended_by = b""
        while line := lines.line():
            if stack and line.startswith(b"--") and _boundary(line, stack) is not None:
                ended_by = line  # a part without a body (or header end)
                break
            header.append(line)
            size += len(line)
            if size > HEADER_LIMIT:
                raise Uninspectable(f"a header section over {HEADER_LIMIT} bytes")
            if line in (b"\r\n", b"\n"):
                break
        parts += 1
        if parts > MAX_PARTS:
            raise Uninspectable(f"more than {MAX_PARTS} MIME parts")
        out.keep(header)
        part = email.message_from_bytes(b"".join(header), policy=email.policy.compat32)
        line = ended_by
        if not line:
            kind = part.get_content_maintype()
            boundary = part.get_boundary() if kind == "multipart" else None
            if boundary is not None:
                if len(stack) >= MAX_DEPTH:
                    raise Uninspectable(f"MIME parts nested over {MAX_DEPTH} deep")
                stack.append(b"--" + boundary.encode("ascii", "surrogateescape"))
                line = _skip(lines, stack)  # the preamble
            elif part.get_content_type() == "message/rfc822" and kind == "message":
                attached += 1
                if len(stack) + attached > MAX_DEPTH:
                    raise Uninspectable(f"MIME parts nested over {MAX_DEPTH} deep")
                continue  # the attached message's own header section follows
            else:
                line = _leaf(lines, stack, part, out)
        # At a boundary line of some open multipart (or the end of the message).
        while line:
            index = _boundary(line, stack)
            assert index is not None
            out.keep((line,))
            closing = line.rstrip().endswith(b"--") and line.rstrip() != stack[index]
            del stack[index + 1 :]
            if not closing:
                break  # a new part of stack[index]: its header section comes next
            stack.pop()
            line = _skip(lines, stack) if stack else b""  # the epilogue
        if not line:
            return b"".join(out)


def _boundary(line: bytes, stack: Sequence[bytes]) -> int | None:
    """Which open multipart's boundary line this is (innermost first), if any."""
    text = line.rstrip()
    for index in range(len(stack) - 1, -1, -1):
        if text in (stack[index], stack[index] + b"--"):
            return index
    return None


def _skip(lines: _Lines, stack: Sequence[bytes]) -> bytes:
    """Skip to the next boundary line of an open multipart and return it (b"" at the end)."""
    while True:
        lines.skip_to_dashes()
        line = lines.line()
        if not line or _boundary(line, stack) is not None:
            return line


def _leaf(lines: _Lines, stack: Sequence[bytes], part: Message, out: _View) -> bytes:
    """Keep a leaf's body as the view needs it; return the boundary line after it."""
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    kept: list[bytes] = []
    size = 0
    limit = KEEP
    while line := lines.line():
        if stack and line.startswith(b"--") and _boundary(line, stack) is not None:
            out.keep(kept)
            return line
        kept.append(line)
        size += len(line)
        if size >= limit:
            if limit == KEEP and (
                _may_be_archive(part) or _sniffs_as_archive(_decoded_head(kept, encoding))
            ):
                limit = ARCHIVE_KEEP  # its members must be listed: keep it whole
                continue
            if limit == ARCHIVE_KEEP:
                raise Uninspectable(f"an archive part over {ARCHIVE_KEEP} bytes")
            out.keep(kept)
            return _skip(lines, stack) if stack else b""
    out.keep(kept)
    return b""


def inspect_spooled(
    spool: Spool,
    names: Sequence[str] = DEFAULT_NAMES,
    types: Sequence[str] = DEFAULT_TYPES,
    limits: Limits = Limits(),  # noqa: B008 - frozen, never changed
) -> Inspection:
    """:func:`filter.banned.inspect` of a spooled message, through its bounded view.

    What the view cannot hold is ``unchecked`` (held, never passed as clean).
    Blocking (reads the file, parses): call it in a thread.
    """
    try:
        shown = view(spool)
    except Uninspectable as err:
        return Inspection(unchecked=f"not inspected: {err}")
    if len(shown) <= _BIG_VIEW:
        return inspect(shown, names, types, limits=limits)
    with _BIG:
        return inspect(shown, names, types, limits=limits)
