"""Archive members, listed within the limits: libarchive, ARJ headers, gzip/bzip2/xz.

This module owns looking inside one archive found in a message
(:func:`archive_members`): zip, 7z, rar, tar and cab are listed by libarchive
and each member read (within the bytes, members and time left in the
:class:`~filter.findings.WalkState`) to detect its type and find archives in
it; ARJ, which libarchive cannot read, is listed from its own headers; gzip,
bzip2 and xz are unwrapped by the standard library and count as a level.
Whatever it cannot read, or may not read further, is a
:class:`~filter.findings.Gap`.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Iterator

import libarchive

from filter.findings import Gap, Item, OutOfTime, WalkState
from filter.signatures import ARCHIVE_SUFFIXES, detect, sniff


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


def archive_members(
    kind: str, data: bytes, where: str, name: str, depth: int, state: WalkState
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
            yield from archive_members(found[0], content[found[1] :], here, inner, depth + 1, state)
        return
    if kind == "arj":
        yield from _arj_members(data, where, depth, state)
        return
    yield from _members(data, where, depth, state)


_ARJ_HEADER = struct.Struct("<2sH")
_ARJ_FIELDS = struct.Struct("<BBBBBBBBIIII")  # first_hdr_size ... original CRC


def _arj_members(data: bytes, where: str, depth: int, state: WalkState) -> Iterator[Item | Gap]:
    """ARJ member names from its headers (libarchive has no ARJ reader).

    Stored members are read and inspected; compressed or garbled (encrypted) ones
    can only be judged by name, so they leave the archive unchecked.
    """
    at, first = 0, True
    while True:
        if state.late():
            raise OutOfTime
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
                yield from archive_members(
                    found[0], content[found[1] :], inner, name, depth + 1, state
                )


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


def _members(data: bytes, where: str, depth: int, state: WalkState) -> Iterator[Item | Gap]:
    """List an archive through libarchive; read each member (for its type) within budget."""
    limits = state.limits
    listed: list[str] = []
    try:
        with libarchive.memory_reader(data) as archive:
            for entry in archive:
                if state.late():
                    raise OutOfTime
                state.members += 1
                if state.members > limits.max_members:
                    yield Gap(f"{where}: more than {limits.max_members} archive members")
                    return
                name = _name_of(entry)
                listed.append(name)
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
                    yield from archive_members(
                        found[0], content[at:], inner, name, depth + 1, state
                    )
                elif name.lower().rstrip(". ").endswith(ARCHIVE_SUFFIXES):
                    yield Gap(f"{inner}: named like an archive, but no archive it can read")
    except libarchive.ArchiveError as err:
        yield Gap(f"{where}: {_why(err)}")
        return
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        yield from _central_directory(data, listed, where)


def _central_directory(data: bytes, listed: list[str], where: str) -> Iterator[Item | Gap]:
    """The names a zip's central directory gives, where they differ from its local headers.

    libarchive reads a zip as a stream, by its local headers; Explorer, 7-Zip and
    Info-ZIP show the central directory's names.  An attacker can make the two
    disagree ("evil.txt" locally, "evil.exe" centrally): both are judged.
    """
    try:
        central = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        yield Gap(f"{where}: zip central directory unreadable ({err})")
        return
    seen = {name.rstrip("/") for name in listed}
    differ = [name for name in central if name.rstrip("/") not in seen]
    for name in differ:
        yield Item((name,), (), "", f"{where} > {name} (central directory)")
    if differ:
        yield Gap(f"{where}: zip local headers and central directory disagree")


def _read(entry: object, inner: str, state: WalkState) -> tuple[bytes, Gap | None]:
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
                raise OutOfTime
    except libarchive.ArchiveError as err:
        return b"".join(chunks), Gap(f"{inner}: {_why(err)}")
    state.unpacked -= size
    return b"".join(chunks), None


def _why(err: libarchive.ArchiveError) -> str:
    text = err.msg.decode("utf-8", "replace") if isinstance(err.msg, bytes) else str(err.msg)
    if "encrypt" in text.lower() or "passphrase" in text.lower():
        return "encrypted"
    return f"archive it cannot read ({text[:80]})"
