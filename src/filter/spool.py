"""Large messages on disk: one unlinked temporary file per message, and how it is read back.

A message over ``server.spool_threshold`` bytes is written, as its DATA
arrives, to a :class:`Spool`: a temporary file that has no name from the
start (``O_TMPFILE``, through :func:`tempfile.TemporaryFile`), so nothing is
left behind whatever happens to the process, and it goes when the message is
answered.  The pipeline keeps only the message's head in memory (the header
section, :func:`head_length`); everything else reads the file in chunks:

- clamd is handed the file's descriptor (``zFILDES``) or streamed its chunks;
- the banned-part check reads it whole, in a child process whose memory goes
  back to the system when it exits (:mod:`filter.inspect_child`);
- the re-injection sends the marked head, then the rest of the file
  (:class:`Tail`), dot-stuffed a chunk at a time by :func:`stuffed`.

The daemon's memory per message is then about the threshold plus a few
chunks, whatever its size.  Smaller messages never touch this module: they stay bytes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from filter import headers

CHUNK = 64 * 1024
"""Bytes read from the file at a time (clamd's own INSTREAM chunk size)."""
HEAD_LIMIT = 256 * 1024
"""The most of a spooled message kept in memory as its head: a header section longer
than this is cut at a line end.  Its fields past the cut are cleaned as the tail is
read (:func:`drop_fields`), and the message is "unchecked" (its header checks saw only
the head)."""


class Spool:
    """One message on disk, written once as it arrives, then read by position."""

    def __init__(self, directory: str | None = None) -> None:
        # Unbuffered: every write goes straight to the file, nothing is held twice.
        # Closed by close(), once the message is answered (not a with block: it outlives
        # the DATA command that creates it).
        self.file = tempfile.TemporaryFile(  # noqa: SIM115 (see above)
            buffering=0, dir=directory, prefix="mail-filter-"
        )
        self.fd = self.file.fileno()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data`` (raises OSError, e.g. for a full disk)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer only at the end of the file)."""
        parts: list[bytes] = []
        while length > 0:
            piece = os.pread(self.fd, min(length, CHUNK * 16), start)
            if not piece:
                break
            parts.append(piece)
            start += len(piece)
            length -= len(piece)
        return b"".join(parts)

    def chunks(self, start: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
        """The file from ``start`` to its end, ``chunk`` bytes at a time."""
        while start < self.size:
            piece = os.pread(self.fd, min(chunk, self.size - start), start)
            if not piece:
                return
            start += len(piece)
            yield piece

    def close(self) -> None:
        """Give the file back (its blocks are freed: it never had a name)."""
        self.file.close()


@dataclass(frozen=True)
class Tail:
    """What follows a spooled message's head: the file from ``start`` on."""

    spool: Spool
    start: int
    remove_prefixes: tuple[bytes, ...] = ()
    """Lower-case beginnings of field names dropped from the header fields at the tail's
    start: set when the head was cut inside the header section, so a forged field past
    the cut is removed as surely as one before it."""

    @property
    def size(self) -> int:
        """Bytes in the tail (an upper bound when fields are dropped: SIZE= is an estimate)."""
        return self.spool.size - self.start

    def chunks(self) -> Iterator[bytes]:
        """The tail, a chunk at a time."""
        pieces = self.spool.chunks(self.start)
        return drop_fields(pieces, self.remove_prefixes) if self.remove_prefixes else pieces


def head_length(spool: Spool) -> int:
    """Where a spooled message's head ends: after its header section and the empty line.

    The head is what marking edits (:func:`filter.headers.edit`) and what the
    header checks read; it must end at a line end so the tail joins it
    unchanged.  A message whose first line is no header field has that line as
    its head (marking then separates it from our fields, as it does for a small
    message); one without an empty line in its first :data:`HEAD_LIMIT` bytes
    is cut at the last line end there.
    """
    first = spool.read(0, HEAD_LIMIT)
    header, rest = headers.split(first)
    if rest:
        end = rest.find(b"\n")
        return len(header) + (end + 1 if end >= 0 else len(rest))
    if len(first) == spool.size:
        return len(first)
    cut = first.rfind(b"\n") + 1
    return cut or len(first)


def drop_fields(pieces: Iterable[bytes], prefixes: tuple[bytes, ...]) -> Iterator[bytes]:
    """``pieces`` without the header fields whose names start with one of ``prefixes``.

    ``pieces`` start at a line start inside a header section (a cut head's tail); lines
    are read up to the empty line that ends the section, and everything from there on
    passes unread.  A dropped field goes with its continuation lines; a line at the
    start that continues a field of the head is kept (it joins whatever field our
    marking left before it).  Lines are as long as the DATA decoder let them be.
    """
    it = iter(pieces)
    carry = b""
    dropping = False
    for piece in it:
        data = carry + piece if carry else piece
        kept: list[bytes] = []
        pos = 0
        while (end := data.find(b"\n", pos)) >= 0:
            line = data[pos : end + 1]
            if line in (b"\r\n", b"\n"):
                kept.append(data[pos:])
                yield b"".join(kept)
                yield from it
                return
            if line[:1] not in (b" ", b"\t"):
                dropping = headers.field_name(line).startswith(prefixes)
            if not dropping:
                kept.append(line)
            pos = end + 1
        carry = data[pos:]
        if kept:
            yield b"".join(kept)
    if carry and not (
        headers.field_name(carry).startswith(prefixes) or (dropping and carry[:1] in (b" ", b"\t"))
    ):
        yield carry


def _stuff(block: bytes, at_line_start: bool) -> bytes:
    """:func:`filter.smtp_out.dot_stuff` of one block, without the end line."""
    if b"\r\n" not in block or block.count(b"\n") != block.count(b"\r\n"):
        # A bare LF (or lone CR) in this block: CRLF line ends, as dot_stuff does.
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if at_line_start and block.startswith(b"."):
        block = b"." + block
    return block.replace(b"\r\n.", b"\r\n..")


def stuffed(pieces: Iterable[bytes], limit: int = 4 * CHUNK) -> Iterator[bytes]:
    """The DATA payload of the concatenated ``pieces``, a block of whole lines at a time.

    Each block is cut after a line feed, so a dot at the start of a line is
    seen whichever piece it arrived in (RFC 5321 4.5.2), and a CR LF pair is
    never split.  For a message of CRLF lines (anything our DATA decoder
    accepted) the bytes are exactly :func:`filter.smtp_out.dot_stuff`'s; a bare
    LF is normalised per block rather than across the whole message.  A line
    longer than ``limit`` is cut (before a trailing CR): it is stuffed all the
    same.
    """
    carry = b""
    at_start = True
    last = b"\n"
    for piece in pieces:
        data = carry + piece if carry else piece
        cut = data.rfind(b"\n") + 1
        if not cut:
            if len(data) <= limit:
                carry = data
                continue
            cut = len(data) - (1 if data.endswith(b"\r") else 0)
        block, carry = data[:cut], data[cut:]
        out = _stuff(block, at_start)
        at_start = out.endswith(b"\n")
        if out:
            last = out[-1:]
            yield out
    if carry:
        out = _stuff(carry, at_start)
        last = out[-1:] if out else last
        yield out
    yield b".\r\n" if last == b"\n" else b"\r\n.\r\n"
