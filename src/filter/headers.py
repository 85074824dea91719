"""Editing a message's header block as bytes, without touching anything else.

This module owns every change the filter makes to a message: prepending
header fields (``Received``, ``X-Virus-Scanned``, ``X-Spam-*``), removing
fields a sender forged (by name or name prefix), and prefixing the subject.  It works on raw
bytes: nothing is decoded, re-encoded, re-folded or re-wrapped, so the body
(everything after the first empty line) is returned byte for byte, and header
fields we do not touch keep their exact bytes too.  Broken input (no empty
line, bare LF line ends, 8-bit bytes, NULs, very long lines) is handled as
bytes; nothing here raises on message content.

New fields use the line ending the message itself uses (CRLF as received over
SMTP) and are folded at commas to stay under 78 characters (RFC 5322 2.1.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.ASCII)


def line_ending(message: bytes) -> bytes:
    """CRLF unless the message's first line ends in a bare LF."""
    first = message.find(b"\n")
    return b"\n" if first > 0 and message[first - 1 : first] != b"\r" else b"\r\n"


# The last message split and its fields: each message is split by several readers in
# turn (queue id, From, bad-header check, the edit), always the same bytes object.
_last: tuple[bytes, tuple[bytes, bytes], list[bytes] | None] | None = None


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header block including its final line end, the rest: empty line and body).

    A message whose first line is not a header field (or that has no empty
    line at all) is treated as having an empty header block only when its
    first line cannot be a field; otherwise everything up to the first empty
    line, or the whole message, is the header block.
    """
    global _last
    last = _last
    if last is not None and last[0] is message:
        return last[1]
    parts = _split(message)
    _last = (message, parts, None)
    return parts


def _header_fields(message: bytes) -> list[bytes]:
    """fields(split(message)[0]), kept with the split (callers must not change the list)."""
    global _last
    parts = split(message)
    last = _last
    if last is not None and last[0] is message and last[2] is not None:
        return last[2]
    found = fields(parts[0])
    _last = (message, parts, found)
    return found


def _split(message: bytes) -> tuple[bytes, bytes]:
    pos = 0
    while pos < len(message):
        end = message.find(b"\n", pos)
        line_end = len(message) if end < 0 else end + 1
        line = message[pos:line_end]
        if line in (b"\r\n", b"\n"):
            return message[:pos], message[pos:]
        if pos == 0 and not _FIELD_START.match(line) and line[:1] not in (b" ", b"\t"):
            return b"", message
        pos = line_end
    return message, b""


def fields(header: bytes) -> list[bytes]:
    """The header block as a list of whole fields (each with its continuation lines)."""
    out: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += line
        else:
            out.append(line)
    return out


def field_name(field: bytes) -> bytes:
    """The lower-cased name of a field, or b"" when the line is not a field."""
    match = _FIELD_START.match(field)
    return match.group(1).lower() if match else b""


def fold(name: str, value: str, eol: bytes = b"\r\n", width: int = 78) -> bytes:
    """One header field, folded at spaces so lines stay within ``width`` where possible."""
    lines: list[str] = []
    current = f"{name}:"
    for word in value.split(" "):
        if len(current) + 1 + len(word) > width and current.strip() and current != f"{name}:":
            lines.append(current)
            current = f"\t{word}"
        else:
            current = f"{current} {word}"
    lines.append(current)
    return eol.decode().join(lines).encode("utf-8", "replace") + eol


def edit(
    message: bytes,
    prepend: Sequence[tuple[str, str]] = (),
    remove: Iterable[bytes] = (),
    subject_prefix: str = "",
    remove_prefixes: tuple[bytes, ...] = (),
) -> bytes:
    """The message with fields prepended, ``remove``-named fields dropped, subject prefixed.

    ``remove`` holds lower-case field names, ``remove_prefixes`` lower-case
    beginnings of names (``b"x-spam-"``): fields matching either are dropped.
    Only the header block changes; the returned message ends with exactly the
    bytes the input had after its header block.
    """
    eol = line_ending(message)
    header, rest = split(message)
    drop = set(remove)
    kept = [
        f
        for f in _header_fields(message)
        if (name := field_name(f)) not in drop and not name.startswith(remove_prefixes)
    ]
    if subject_prefix:
        kept = _prefix_subject(kept, subject_prefix, eol)
    new = b"".join(fold(name, value, eol) for name, value in prepend)
    if not header and rest and not rest.startswith((b"\r\n", b"\n")):
        # No header block at all: keep the body separated from our fields.
        rest = eol + rest
    return new + b"".join(kept) + rest


def _prefix_subject(kept: list[bytes], prefix: str, eol: bytes) -> list[bytes]:
    raw_prefix = prefix.encode("utf-8")
    for n, field in enumerate(kept):
        if field_name(field) == b"subject":
            colon = field.index(b":") + 1
            value_start = colon
            while value_start < len(field) and field[value_start : value_start + 1] in (
                b" ",
                b"\t",
            ):
                value_start += 1
            if field[value_start:].startswith(raw_prefix.strip()):
                return kept  # already tagged (e.g. released and scanned again)
            kept[n] = field[:colon] + b" " + raw_prefix + field[value_start:]
            return kept
    return [*kept, b"Subject: " + raw_prefix.rstrip() + eol]


def first_field(message: bytes, name: bytes) -> bytes | None:
    """The first field called ``name`` (lower case), with its continuation lines, or None."""
    for field in _header_fields(message):
        if field_name(field) == name:
            return field
    return None
