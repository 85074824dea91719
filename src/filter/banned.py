"""Banned attachments: names, declared and detected types, inside zip archives too.

This module owns finding what a message carries (every MIME part's file name,
declared type and, from its first bytes, detected type; and the members of zip
archives, nested, within bounds) and deciding whether any of it is banned.
Pure: bytes in, a reason or None out.  Broken MIME never raises: the standard
library's parser is lenient, and anything it cannot decode is looked at as
raw bytes.  Parsing costs time in proportion to the message, but opening
archives can cost far more (up to ``MAX_UNPACKED`` bytes inflated from a few
kilobytes), so a caller that must stay responsive can ask not to open them
(``open_archives=False``) and learn from :class:`ArchiveInside` when it must
ask again where blocking does not matter.
"""

from __future__ import annotations

import email
import email.policy
import fnmatch
import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message

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

MAX_DEPTH = 4
MAX_MEMBERS = 1000
MAX_UNPACKED = 50 * 1024 * 1024


class ArchiveInside(Exception):
    """The message holds an archive and ``open_archives=False`` forbade looking inside."""


@dataclass(frozen=True)
class Item:
    """One thing found in a message: a MIME part or an archive member."""

    name: str
    declared: str
    detected: str
    where: str  # e.g. "part 3" or "part 3 > inner.zip > x.exe"


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


def parse(message: bytes) -> Message:
    """``email.message_from_bytes(message, policy=compat32)``, cheaper for single-part mail.

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


def _parts(message: bytes) -> Iterator[tuple[int, Message]]:
    msg = parse(message)
    for number, part in enumerate(msg.walk()):
        if not part.is_multipart():
            yield number, part


def _zip_members(data: bytes, where: str, depth: int, budget: list[int]) -> Iterator[Item]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return
    for info in infos[:MAX_MEMBERS]:
        if info.is_dir():
            continue
        head = b""
        inner = f"{where} > {info.filename}"
        if info.file_size <= budget[0]:
            try:
                with archive.open(info) as member:
                    content = member.read(info.file_size + 1)
            except (zipfile.BadZipFile, RuntimeError, OSError, ValueError, NotImplementedError):
                content = b""  # encrypted or broken: judged by its name alone
            budget[0] -= len(content)
            head = content[:16]
            if depth < MAX_DEPTH and detect(head) == "application/zip":
                yield from _zip_members(content, inner, depth + 1, budget)
        yield Item(info.filename, "", detect(head), inner)


def items(message: bytes, *, open_archives: bool = True) -> Iterator[Item]:
    """Every attachment-like thing in the message, archive members included.

    With ``open_archives=False``, raises :class:`ArchiveInside` where archive
    members would come next.
    """
    budget = [MAX_UNPACKED]
    for number, part in _parts(message):
        name = part.get_filename() or part.get_param("name") or ""
        if not isinstance(name, str):
            name = str(name)
        declared = part.get_content_type()
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        where = f"part {number}"
        yield Item(name, declared, detect(data[:16]), where)
        if detect(data[:16]) == "application/zip" or name.lower().endswith(".zip"):
            if not open_archives:
                raise ArchiveInside(where)
            yield from _zip_members(data, where + (f" ({name})" if name else ""), 1, budget)


def _name_banned(name: str, patterns: Sequence[str]) -> str | None:
    lowered = name.lower().strip().rstrip(".")
    for pattern in patterns:
        if fnmatch.fnmatchcase(lowered, pattern):
            last = lowered.rsplit(".", 1)[-1]
            if pattern.count(".") > 1 and last in _SAFE_SECOND:
                continue  # report.pdf.gz is a compressed PDF, not a disguised program
            return pattern
    return None


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
    banned_types = {t.lower() for t in types}
    for item in items(message, open_archives=open_archives):
        if item.name:
            pattern = _name_banned(item.name, names)
            if pattern:
                return f"name {item.name!r} matches {pattern} in {item.where}"
        for kind, value in (("declared", item.declared), ("detected", item.detected)):
            if value.lower() in banned_types:
                return f"{kind} type {value} in {item.where}"
    return None
