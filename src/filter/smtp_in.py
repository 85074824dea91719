"""The server side's hot spots, as pure code: the MAIL/RCPT path and the DATA stream.

aiosmtpd does both correctly but slowly for a filter that sees every message:

- it parses the path in ``MAIL FROM:`` and ``RCPT TO:`` (RFC 5321 4.1.2)
  with the ``email`` package's RFC 5322 header parser, which builds a token
  tree for every address.  Nearly every path Postfix sends is a plain
  ``<local@domain>``, optionally followed by parameters; :func:`parse_path`
  gives aiosmtpd's result for exactly those with one regular expression and
  leaves everything else (quoted local parts, source routes, domain literals,
  comments, encoded words, non-ASCII, missing brackets, the null path ``<>``)
  to aiosmtpd's parser;
- it reads the message after DATA one line at a time, a coroutine call and a
  bytearray per line.  :class:`DataDecoder` applies aiosmtpd's rules (lines
  end with CRLF, a line of ``.`` ends the data, a leading dot is removed,
  RFC 5321 4.5.2; a line over ``line_length_limit`` or data over the size
  limit is reported only at the end, 4.5.3.1) to many complete lines at once.

Pure: no asyncio, no sockets; :mod:`filter.aiosmtpd_shortcuts` feeds them.
"""

from __future__ import annotations

import enum
import re

# RFC 5322 3.2.3 atext, ASCII only; a dot-atom without empty labels.  The
# email parser treats these characters as plain text (none is a special).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(.*)", re.DOTALL)


def parse_path(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` as aiosmtpd's ``SMTP._getaddr`` would return them, or None.

    None means "not a plain ``<local@domain>``": the caller must use aiosmtpd's parser.
    ``rest`` is what follows the ``>``, with leading blanks removed as the email
    parser's trailing-CFWS rule does.
    """
    match = _PATH.fullmatch(arg)
    if match is None:
        return None
    address, rest = match.group(1), match.group(2)
    if "=?" in address:
        return None  # the email parser would decode an RFC 2047 encoded word here
    if rest[:1] in (" ", "\t"):
        # get_fws() strips with str.lstrip(), i.e. every Unicode space, then a
        # comment may follow: comments are left to the full parser.
        rest = rest.lstrip()
        if rest[:1] == "(":
            return None
    elif rest[:1] == "(":
        return None
    return address, rest


class DataState(enum.Enum):
    """How the data has gone so far (aiosmtpd's ``_DataState``)."""

    NOMINAL = enum.auto()
    TOO_LONG = enum.auto()
    """A line was longer than the line length limit: answer 500 at the end."""
    TOO_MUCH = enum.auto()
    """More bytes than the size limit: answer 552 at the end."""


END = b".\r\n"
_CRLF_END = b"\r\n.\r\n"
_CRLF_DOT = b"\r\n."


def _lines_within(block: bytes, limit: int) -> bool:
    """Whether every CRLF-terminated line of ``block`` (which ends with CRLF) has at most
    ``limit`` bytes, CRLF included.

    From each line start, the last CRLF that would end a line of ``limit`` bytes
    is looked for backwards; every line up to it fits, so the next look starts
    after it.  A line too long is one such look that finds nothing.  About one
    look per ``limit`` bytes instead of one object per line.
    """
    start = 0
    end = len(block)
    rfind = block.rfind
    while end - start > limit:
        found = rfind(b"\r\n", start, start + limit)
        if found < 0:
            return False
        start = found + 2
    return True


class DataDecoder:
    """aiosmtpd's DATA loop over complete lines, many at a time.

    Feed it either whole CRLF-terminated lines starting at a line boundary
    (:meth:`feed_lines`, the fast path) or exactly what aiosmtpd's loop reads
    one call at a time, including the pieces of a line over the stream limit
    (:meth:`feed_piece`).  ``line_length_limit`` counts the CRLF, as aiosmtpd's
    does; ``size_limit`` (None or 0: none) counts every byte before the end
    line, dots included.
    """

    def __init__(self, size_limit: int | None, line_length_limit: int) -> None:
        self.size_limit = size_limit
        self.line_length_limit = line_length_limit
        self.state = DataState.NOMINAL
        self.done = False
        self.num_bytes = 0
        self.dotted = False
        """Whether a line started with a dot (undone here): False lets the re-injection
        skip looking for such lines (:func:`filter.smtp_out.dot_stuff`)."""
        self._blocks: list[bytes] = []
        self._fragments: list[bytes] = []

    @property
    def at_line_start(self) -> bool:
        """Whether no piece of an unfinished line is pending."""
        return not self._fragments

    @staticmethod
    def scan(buffer: bytes | bytearray) -> tuple[int, bool]:
        """How many bytes at the start of ``buffer`` :meth:`feed_lines` may take now, and
        whether a line after the first of those starts with a dot.

        Up to and including the end line if it is there, else up to the last
        CRLF; 0 when the buffer holds no complete line.  One search for CRLF-dot finds
        both the end line and any dot-stuffed line, so a message without the latter is
        searched once (pass the flag on to :meth:`feed_lines`, which then need not
        search again).
        """
        if buffer[:3] == END:
            return 3, False
        dotted = False
        pos = buffer.find(_CRLF_DOT)
        while pos >= 0:
            after = buffer[pos + 3 : pos + 5]
            if after == b"\r\n":
                return pos + 5, dotted
            if len(after) < 2 and b"\r\n".startswith(after):
                return pos + 2, dotted  # maybe the end line, not all here yet
            dotted = True
            pos = buffer.find(_CRLF_DOT, pos + 3)
        last = buffer.rfind(b"\r\n")
        return (last + 2 if last >= 0 else 0), dotted

    def feed_lines(self, block: bytes, *, dotted: bool = True) -> None:
        """Whole lines from a line boundary, as measured by :meth:`scan`.

        ``dotted=False`` (from :meth:`scan`) says no line after the first starts with a dot.
        """
        assert not self.done
        assert not self._fragments
        assert block.endswith(b"\r\n")
        if block == END or block.endswith(_CRLF_END):
            self.done = True
            block = block[:-3]
            if not block:
                return
        if self.state is not DataState.NOMINAL:
            self.num_bytes += len(block)  # nothing is kept any more, and nothing can change
            return
        limit = self.size_limit
        if _lines_within(block, self.line_length_limit) and not (
            limit and self.num_bytes + len(block) > limit
        ):
            self.num_bytes += len(block)
            # A dot at the start of a line was doubled by the client (RFC 5321 4.5.2).
            if block[:1] == b".":
                block = block[1:]
                self.dotted = True
            if dotted:
                self.dotted = True
                block = block.replace(_CRLF_DOT, b"\r\n")
            self._blocks.append(block)
            return
        lines = block.split(b"\r\n")
        lines.pop()  # block ends with CRLF: the last item is empty
        for line in lines:  # something went wrong in this block: find out what, in order
            self.feed_piece(line + b"\r\n", overrun=len(line) > self.line_length_limit)

    def feed_piece(self, piece: bytes, *, overrun: bool = False) -> None:
        """One result of aiosmtpd's read: a line, or a piece of one that overran the stream limit.

        ``overrun``: the piece came from the LimitOverrunError branch (aiosmtpd's
        ``read(e.consumed)``), or stands for a whole line that would have.
        """
        if overrun and self.state is DataState.NOMINAL:
            self.state = DataState.TOO_LONG
            self._blocks.clear()
        if not self._fragments and piece == END:
            self.done = True
            return
        self.num_bytes += len(piece)
        limit = self.size_limit
        if self.state is DataState.NOMINAL and limit and self.num_bytes > limit:
            self.state = DataState.TOO_MUCH
            self._blocks.clear()
        self._fragments.append(piece)
        if piece.endswith(b"\r\n"):
            if self.state is DataState.NOMINAL:
                line = b"".join(self._fragments)
                if len(line) > self.line_length_limit:
                    self.state = DataState.TOO_LONG
                    self._blocks.clear()
                elif line[:1] == b".":
                    self.dotted = True
                    self._blocks.append(line[1:])
                else:
                    self._blocks.append(line)
            self._fragments.clear()

    def take_blocks(self) -> list[bytes]:
        """The content decoded so far, handed over and forgotten (to spool it to a file):
        :meth:`content` then holds only what comes after."""
        blocks, self._blocks = self._blocks, []
        return blocks

    def content(self) -> bytes:
        """The message, dots removed (only meaningful in state NOMINAL)."""
        assert not self._fragments
        return b"".join(self._blocks)
