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
"""

from __future__ import annotations

import binascii
import bz2
import email
import email.charset
import email.policy
import email.utils
import fnmatch
import lzma
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import Message

import libarchive

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
# Names a mail client hands to an archive tool: one we cannot read is unchecked.
_ARCHIVE_SUFFIXES = (
    ".zip", ".7z", ".rar", ".tar", ".tgz", ".tbz", ".tbz2", ".txz", ".gz", ".bz2", ".xz",
    ".cab", ".arj",
)  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """How far inspection goes; past any of these the message is unchecked."""

    max_depth: int = 4
    """Archives inside archives (a zip in a zip is depth 2); gzip/bzip2/xz count as a level."""
    max_mime_depth: int = 30
    """Multiparts and attached messages inside each other."""
    max_parts: int = 5000
    """MIME parts in one message, every reading of an ambiguous structure counted."""
    max_members: int = 1000
    """Archive members listed in one message, all archives together."""
    max_unpacked: int = 50 * 1024 * 1024
    """Bytes unpacked from archives in one message, all together."""
    max_seconds: float = 20.0
    """Time for the whole inspection (checked between parts, members and blocks)."""


# Module-level names kept for callers that read the old constants.
MAX_DEPTH = Limits.max_depth
MAX_MEMBERS = Limits.max_members
MAX_UNPACKED = Limits.max_unpacked


class ArchiveInside(Exception):
    """The message holds an archive and ``open_archives=False`` forbade looking inside."""


@dataclass(frozen=True)
class Item:
    """One thing found in a message: a MIME part or an archive member."""

    names: tuple[str, ...]  # every name it goes by (raw and decoded, every field)
    declared: tuple[str, ...]
    detected: str
    where: str  # e.g. "part 3" or "part 3 > inner.zip > x.exe"

    @property
    def name(self) -> str:
        """The first name it goes by, or ""."""
        return self.names[0] if self.names else ""


@dataclass(frozen=True)
class Gap:
    """Something that could not be inspected, and why (it makes the message unchecked)."""

    reason: str


@dataclass(frozen=True)
class Inspection:
    """What the check found: a banned reason, else an unchecked reason; both "" when clean."""

    banned: str = ""
    unchecked: str = ""


def detect(data: bytes) -> str:
    """A content type from the first bytes (the few that matter for banning)."""
    if data.startswith(b"MZ"):
        return "application/x-dosexec"
    if data.startswith(b"\x7fELF"):
        return "application/x-executable"
    if data.startswith(b"PK\x03\x04"):
        return "application/zip"
    if data.startswith(b"#!"):
        return "application/x-sh"
    if data.startswith(b"L\x00\x00\x00\x01\x14\x02\x00"):
        return "application/x-ms-shortcut"
    if data.startswith(b"%PDF"):
        return "application/pdf"
    return "application/octet-stream"


# Signatures long enough to search for anywhere: a prefix (a few bytes, or a
# self-extractor's stub) must not hide an archive.  Short ones only count at 0.
_ANYWHERE = (
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"MSCF\x00\x00\x00\x00", "cab"),
    (b"\xfd7zXZ\x00", "xz"),
)
_AT_START = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip
    (b"\x1f\x8b\x08", "gzip"),  # deflate, the only method gzip defines
    (b"\x60\xea", "arj"),
)
# bzip2: "BZh", the block size digit, then a block's or the stream end's magic number.
_BZIP2 = re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)")


def sniff(data: bytes) -> tuple[str, int] | None:
    """(archive kind, offset) when the bytes hold an archive, else None.

    Each search is one C-speed ``find``; a zip after a prefix needs its local
    header and an end-of-central-directory record after it (four bytes alone
    turn up by chance in large binaries).
    """
    for signature, kind in _AT_START:
        if data.startswith(signature):
            return kind, 0
    if data[257:262] == b"ustar":
        return "tar", 0
    if _BZIP2.match(data):
        return "bzip2", 0
    found: list[tuple[int, str]] = []
    for signature, kind in _ANYWHERE:
        at = data.find(signature)
        if at >= 0:
            found.append((at, kind))
    at = data.find(b"PK\x03\x04")
    if at >= 0 and data.rfind(b"PK\x05\x06") > at:
        found.append((at, "zip"))
    if not found:
        return None
    at, kind = min(found)
    return kind, at


_CFB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # OLE compound file: old Office, encrypted OOXML
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")


def _encrypted_document(data: bytes) -> str:
    """Why a document is sealed against scanning ("encrypted PDF"), or ""."""
    if data.startswith(b"%PDF") and b"/Encrypt" in data:
        return "encrypted PDF"
    if data.startswith(_CFB) and _ENCRYPTED_PACKAGE in data:
        return "encrypted Office document"
    return ""


# ---------------------------------------------------------------------------
# Header fields and parameters
# ---------------------------------------------------------------------------

# Every field at a line start in the header section counts, even after a line that
# is no field (the stdlib parser stops there; a client may not).
_MIME_FIELD = re.compile(
    rb"^(content-(?:type|disposition|transfer-encoding))[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
    re.IGNORECASE | re.MULTILINE,
)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# RFC 2047 encoded words, found anywhere (clients decode them inside quoted strings too).
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([bBqQ])\?([^?]*)\?=")
_ENCODED_GAP = re.compile(r"(\?=)\s+(=\?)")


@dataclass(frozen=True)
class _Head:
    """The MIME fields of one entity, every occurrence kept."""

    types: tuple[str, ...]
    boundaries: tuple[str, ...]
    names: tuple[str, ...]
    encodings: tuple[str, ...]
    message_types: bool  # some Content-Type is message/*


def _params(value: str, header: str) -> tuple[str, list[tuple[str, str]]]:
    """(lowercased type or disposition, [(param, value)...]) with RFC 2231 collapsed."""
    holder = Message()
    holder[header] = value
    params = holder.get_params(header=header) or []
    out: list[tuple[str, str]] = []
    for key, raw in params[1:]:
        text = email.utils.collapse_rfc2231_value(raw, errors="replace")
        out.append((key.lower(), str(text)))
    kind = holder.get_content_type() if header == "content-type" else ""
    return kind, out


def decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded (B and Q, any charset, unknown ones as UTF-8)."""
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(_decode_word, _ENCODED_GAP.sub(r"\1\2", text))


def _decode_word(match: re.Match[str]) -> str:
    charset = match.group(1).split("*", 1)[0] or "utf-8"  # RFC 2231 section 5: charset*lang
    payload = match.group(3)
    if match.group(2) in "bB":
        raw = _lenient_b64(payload.encode("ascii", "replace"))
    else:
        raw = binascii.a2b_qp(payload.replace("_", " ").encode("ascii", "replace"))
    try:
        return raw.decode(email.charset.ALIASES.get(charset.lower(), charset), "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


_B64_ALPHABET = re.compile(rb"[^A-Za-z0-9+/]")


def _lenient_b64(data: bytes) -> bytes:
    """Base64 as clients decode it: junk skipped, padding and a dangling character forgiven."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        clean = _B64_ALPHABET.sub(b"", data)
        clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


def _head(head: bytes) -> _Head:
    types: list[str] = []
    boundaries: list[str] = []
    names: list[str] = []
    encodings: list[str] = []
    message_types = False
    for match in _MIME_FIELD.finditer(head):
        field = match.group(1).lower()
        value = _FOLD.sub("", match.group(2).decode("latin-1")).strip()
        if field == b"content-transfer-encoding":
            # base-64, Base_64, "base64": the same thing to a lenient decoder.
            encodings.append(re.sub(r"[^a-z0-9]", "", value.lower()))
            continue
        header = field.decode("ascii").lower()
        kind, params = _params(value, header)
        if kind:
            types.append(kind)
            message_types = message_types or kind.startswith("message/")
        for key, text in params:
            if key == "boundary" and header == "content-type":
                boundaries.append(text)
            elif key in ("name", "filename"):
                names.append(text)
                decoded = decode_words(text)
                if decoded != text:
                    names.append(decoded)
    return _Head(
        tuple(dict.fromkeys(types)),
        tuple(dict.fromkeys(b for b in boundaries if b)),
        tuple(dict.fromkeys(names)),
        tuple(dict.fromkeys(encodings)),
        message_types,
    )


def _after_empty_line(message: bytes) -> int | None:
    """Where the first empty line in CRLF or LF form ends, or None if there is none.

    CRLF CRLF is looked for first, the usual header end over SMTP, and LF LF only
    before it: a CRLF message has no LF LF, and an unbounded search for one reads
    it all.  (Any line ending is a line boundary to the email parser.)
    """
    crlf = message.find(b"\r\n\r\n")
    lf = message.find(b"\n\n", 0, crlf + 2 if crlf >= 0 else len(message))
    cuts = [found + size for found, size in ((lf, 2), (crlf, 4)) if found >= 0]
    return min(cuts) if cuts else None


def _split_entity(entity: bytes) -> tuple[bytes, bytes]:
    """(header section, body); an entity starting with an empty line has no header."""
    if entity.startswith((b"\r\n", b"\n")):
        return b"", entity[2 if entity.startswith(b"\r\n") else 1 :]
    cut = _after_empty_line(entity)
    if cut is None:
        return entity, b""
    return entity[:cut], entity[cut:]


def parse(message: bytes) -> Message:
    """``email.message_from_bytes(message, policy=compat32)``, cheaper for single-part mail.

    Kept for callers outside the banned check, which no longer uses the stdlib tree.
    The parser reads the body line by line even when it only joins the lines
    back into one payload, as it does for every type but multipart/* and
    message/*.  So the header section is parsed alone, up to just after the
    first empty line; when the parser's headers end exactly there (no stray
    body line before it) and the type is single-part, the rest of the text is
    the payload as is.  Any other message gets the full parse.
    """
    text = message.decode("ascii", "surrogateescape")  # what message_from_bytes does
    cut = _after_empty_line(message)  # one byte is one character of text
    if cut is not None:
        msg = email.message_from_string(text[:cut], policy=email.policy.compat32)
        if msg.get_content_maintype() not in ("multipart", "message") and not msg.get_payload():
            msg.set_payload(text[cut:])
            return msg
    return email.message_from_string(text, policy=email.policy.compat32)


def may_nest(message: bytes) -> bool:
    """Whether the email parser might see a multipart/* or message/* type (else: one part).

    Its content type comes from a field of its header section, which never
    reaches past the first empty line in CRLF or LF form (it may end earlier, at
    a line that is no field); a main type of ``multipart`` or ``message`` needs
    ``multipart/`` or ``message/`` in the value, in any case.  So without either
    text before that empty line, the message is a single part.
    """
    lowered = message[: _after_empty_line(message)].lower()
    return b"multipart/" in lowered or b"message/" in lowered


def _decode_body(body: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return _lenient_b64(body)
    if encoding == "quotedprintable":
        return binascii.a2b_qp(body)
    return body  # 7bit, 8bit, binary, and names no client decodes


_DELIMITERS: dict[str, re.Pattern[bytes]] = {}
_LONE_CR = re.compile(rb"\r(?!\n)")


def _delimiter(boundary: str) -> re.Pattern[bytes]:
    """Delimiter lines of a boundary (RFC 2046 5.1.1), transport padding allowed."""
    pattern = _DELIMITERS.get(boundary)
    if pattern is None:
        raw = boundary.encode("latin-1", "replace")
        pattern = re.compile(rb"^--" + re.escape(raw) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
        if len(_DELIMITERS) < 256:
            _DELIMITERS[boundary] = pattern
    return pattern


def _children(body: bytes, boundary: str) -> list[bytes] | None:
    """The body parts between delimiter lines (after a close one too), or None without any.

    A part after the last delimiter, if that is no close delimiter, runs to the end
    of the body (a truncated multipart: clients show that part).
    """
    lines = list(_delimiter(boundary).finditer(body))
    if not lines:
        return None
    parts = []
    ends = [line.start() for line in lines[1:]]
    if not lines[-1].group(1):
        ends.append(len(body))  # no close delimiter: the last part runs to the end
    for this, end in zip(lines, ends, strict=False):
        start = body.find(b"\n", this.end())
        start = this.end() if start < 0 else start + 1
        # The line break before a delimiter belongs to the delimiter.
        end -= 2 if body[end - 2 : end] == b"\r\n" else 1 if body[end - 1 : end] == b"\n" else 0
        parts.append(body[start : max(start, end)])
    return parts


# ---------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------


class _State:
    """Budgets shared by every part and archive of one message."""

    def __init__(self, limits: Limits, clock: Callable[[], float], open_archives: bool) -> None:
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.max_seconds
        self.members = 0
        self.unpacked = limits.max_unpacked
        self.open_archives = open_archives

    def late(self) -> bool:
        return self.clock() > self.deadline


class _OutOfTime(Exception):
    """The inspection's time is up: nothing further is looked at."""


def items(
    message: bytes,
    *,
    open_archives: bool = True,
    limits: Limits = Limits(),
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Item | Gap]:
    """Every attachment-like thing in the message, archive members included, and every gap.

    With ``open_archives=False``, raises :class:`ArchiveInside` where archive
    members would come next.
    """
    state = _State(limits, clock, open_archives)
    readings = [message]
    if message.count(b"\r") != message.count(b"\r\n"):
        # A lone CR ends a line for Python's email parser and for some clients, not for
        # our line-based walk: a boundary line ended by one would hide the parts after
        # it.  Such a message is also walked with every lone CR read as a line end.
        readings.append(_LONE_CR.sub(b"\r\n", message))
    try:
        for reading in readings:
            yield from _walk(reading, state)
    except _OutOfTime:
        yield Gap(f"inspection took longer than {limits.max_seconds:g} s")


def _walk(message: bytes, state: _State) -> Iterator[Item | Gap]:
    # (entity bytes, MIME depth, where); popped last-first, so children are pushed reversed.
    stack: list[tuple[bytes, int, str]] = [(message, 0, "part 0")]
    number = 0
    while stack:
        entity, depth, where = stack.pop()
        if state.late():
            raise _OutOfTime
        if number > state.limits.max_parts:
            yield Gap(f"more than {state.limits.max_parts} MIME parts")
            return
        head, body = _split_entity(entity)
        fields = _head(head) if head else _Head((), (), (), (), False)
        containers: list[bytes] = []
        leaf = True
        if any(t.startswith("multipart/") for t in fields.types):
            readings = [c for b in fields.boundaries if (c := _children(body, b)) is not None]
            for children in readings:
                containers += children
            # Declared multipart and split by a boundary: not also a leaf, unless another
            # Content-Type says it is one (then both readings are judged).
            leaf = not readings or any(
                not t.startswith(("multipart/", "message/")) for t in fields.types
            )
        if fields.message_types:
            containers += [_decode_body(body, e) for e in fields.encodings or ("",)]
        if containers and depth >= state.limits.max_mime_depth:
            yield Gap(f"MIME nested deeper than {state.limits.max_mime_depth} at {where}")
            containers = []
        numbered = [(c, f"part {number + n}") for n, c in enumerate(dict.fromkeys(containers), 1)]
        number += len(numbered)
        stack += [(child, depth + 1, label) for child, label in reversed(numbered)]
        if leaf:
            yield from _leaf(fields, body, where, state, sniff_content=not fields.message_types)


def _leaf(
    fields: _Head, body: bytes, where: str, state: _State, *, sniff_content: bool
) -> Iterator[Item | Gap]:
    names = fields.names
    label = where + (f" ({names[-1]})" if names else "")
    datas = [_decode_body(body, e) for e in fields.encodings or ("",)]
    for data in dict.fromkeys(datas) if len(datas) > 1 else datas:
        yield Item(names, fields.types or ("text/plain",), detect(data[:16]), where)
        if not sniff_content:
            continue
        sealed = _encrypted_document(data)
        if sealed:
            yield Gap(f"{label}: {sealed}")
        found = sniff(data)
        if found is None:
            if any(n.lower().rstrip(". ").endswith(_ARCHIVE_SUFFIXES) for n in names):
                yield Gap(f"{label}: named like an archive, but no archive it can read")
            continue
        if not state.open_archives:
            raise ArchiveInside(where)
        kind, at = found
        yield from _archive(kind, data[at:], label, names[-1] if names else "", 1, state)


def _name_of(entry: object) -> str:
    try:
        name = entry.pathname  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        return ""
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return name or ""


_UNWRAPPED = (
    (".tgz", ".tar"), (".tbz2", ".tar"), (".tbz", ".tar"), (".txz", ".tar"),
    (".gz", ""), (".bz2", ""), (".xz", ""),
)  # fmt: skip


def _unwrapped_name(name: str) -> str:
    lowered = name.lower()
    for suffix, replacement in _UNWRAPPED:
        if lowered.endswith(suffix):
            return name[: len(name) - len(suffix)] + replacement
    return name


def _archive(
    kind: str, data: bytes, where: str, name: str, depth: int, state: _State
) -> Iterator[Item | Gap]:
    """The members of one archive called ``name`` (and of archives in it), within the limits."""
    limits = state.limits
    if depth > limits.max_depth:
        yield Gap(f"{where}: archives nested deeper than {limits.max_depth}")
        return
    if kind in ("gzip", "bzip2", "xz"):
        content = _decompress(kind, data, state.unpacked + 1)
        if content is None:
            yield Gap(f"{where}: {kind} data it cannot decompress")
            return
        if len(content) > state.unpacked:
            yield Gap(f"{where}: more than {limits.max_unpacked} bytes unpacked")
            return
        state.unpacked -= len(content)
        inner = _unwrapped_name(name)
        here = f"{where} > {inner or '(' + kind + ' content)'}"
        yield Item((inner,) if inner else (), (), detect(content[:16]), here)
        found = sniff(content)
        if found is not None:
            yield from _archive(found[0], content[found[1] :], here, inner, depth + 1, state)
        return
    if kind == "arj":
        yield from _arj_members(data, where, depth, state)
        return
    yield from _members(data, where, depth, state)


_ARJ_HEADER = struct.Struct("<2sH")
_ARJ_FIELDS = struct.Struct("<BBBBBBBBIIII")  # first_hdr_size ... original CRC


def _arj_members(data: bytes, where: str, depth: int, state: _State) -> Iterator[Item | Gap]:
    """ARJ member names from its headers (libarchive has no ARJ reader).

    Stored members are read and inspected; compressed or garbled (encrypted) ones
    can only be judged by name, so they leave the archive unchecked.
    """
    at, first = 0, True
    while True:
        if state.late():
            raise _OutOfTime
        if at + 4 > len(data):
            yield Gap(f"{where}: truncated ARJ archive")
            return
        magic, size = _ARJ_HEADER.unpack_from(data, at)
        if magic == b"\x60\xea" and size == 0:
            return  # end of archive
        if magic != b"\x60\xea" or size > 2600 or at + 4 + size + 4 > len(data):
            yield Gap(f"{where}: archive it cannot read (broken ARJ header)")
            return
        basic = data[at + 4 : at + 4 + size]
        if len(basic) < _ARJ_FIELDS.size:
            yield Gap(f"{where}: archive it cannot read (broken ARJ header)")
            return
        fields = _ARJ_FIELDS.unpack_from(basic)
        first_size, flags, method, compressed = fields[0], fields[4], fields[5], fields[9]
        name = basic[first_size:].split(b"\0", 1)[0].decode("cp437").replace("\\", "/")
        at += 4 + size + 4  # the header and its CRC
        while at + 2 <= len(data):  # extended headers, each with its CRC
            extended = int.from_bytes(data[at : at + 2], "little")
            at += 2
            if not extended:
                break
            at += extended + 4
        if first:  # the archive's main header: no member, no data
            first = False
            continue
        content = data[at : at + compressed]
        at += compressed
        state.members += 1
        if state.members > state.limits.max_members:
            yield Gap(f"{where}: more than {state.limits.max_members} archive members")
            return
        inner = f"{where} > {name}"
        if flags & 0x01:
            yield Item((name,), (), "", inner)
            yield Gap(f"{inner}: encrypted")
        elif method != 0:
            yield Item((name,), (), "", inner)
            yield Gap(f"{inner}: compressed ARJ member it cannot unpack")
        else:
            yield Item((name,), (), detect(content[:16]), inner)
            found = sniff(content)
            if found is not None:
                yield from _archive(found[0], content[found[1] :], inner, name, depth + 1, state)


def _decompress(kind: str, data: bytes, limit: int) -> bytes | None:
    """At most ``limit`` bytes of a gzip, bzip2 or xz stream; None when it is corrupt."""
    try:
        if kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, limit)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(data, limit)
        return lzma.LZMADecompressor().decompress(data, limit)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError):
        return None


_BLOCK = 64 * 1024


def _members(data: bytes, where: str, depth: int, state: _State) -> Iterator[Item | Gap]:
    """List an archive through libarchive; read each member (for its type) within budget."""
    limits = state.limits
    try:
        with libarchive.memory_reader(data) as archive:
            for entry in archive:
                if state.late():
                    raise _OutOfTime
                state.members += 1
                if state.members > limits.max_members:
                    yield Gap(f"{where}: more than {limits.max_members} archive members")
                    return
                name = _name_of(entry)
                inner = f"{where} > {name}"
                if entry.isdir:
                    yield Item((name,), (), "", inner)
                    continue
                content, gap = _read(entry, inner, state)
                yield Item((name,), (), detect(content[:16]), inner)
                if gap is not None:
                    yield gap
                    continue
                found = sniff(content)
                if found is not None:
                    at = found[1]
                    yield from _archive(found[0], content[at:], inner, name, depth + 1, state)
                elif name.lower().rstrip(". ").endswith(_ARCHIVE_SUFFIXES):
                    yield Gap(f"{inner}: named like an archive, but no archive it can read")
    except libarchive.ArchiveError as err:
        yield Gap(f"{where}: {_why(err)}")


def _read(entry: object, inner: str, state: _State) -> tuple[bytes, Gap | None]:
    """A member's bytes, or what kept us from reading them all."""
    chunks: list[bytes] = []
    size = 0
    try:
        for block in entry.get_blocks(_BLOCK):  # type: ignore[attr-defined]
            size += len(block)
            if size > state.unpacked:
                state.unpacked = 0
                return b"".join(chunks), Gap(
                    f"{inner}: more than {state.limits.max_unpacked} bytes unpacked"
                )
            chunks.append(block)
            if state.late():
                raise _OutOfTime
    except libarchive.ArchiveError as err:
        return b"".join(chunks), Gap(f"{inner}: {_why(err)}")
    state.unpacked -= size
    return b"".join(chunks), None


def _why(err: libarchive.ArchiveError) -> str:
    text = err.msg.decode("utf-8", "replace") if isinstance(err.msg, bytes) else str(err.msg)
    if "encrypt" in text.lower() or "passphrase" in text.lower():
        return "encrypted"
    return f"archive it cannot read ({text[:80]})"


# ---------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------


def _name_banned(name: str, patterns: Sequence[str]) -> str | None:
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
    limits: Limits = Limits(),
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
            pattern = _name_banned(name, names)
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
