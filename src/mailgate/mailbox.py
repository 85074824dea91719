"""A logged-in IMAP session for reading and tidying folders (``mail-filter learn``).

Built on the one imapclient wrapper (:mod:`mailgate.imap`): the same URL forms,
TLS, AUTHENTICATE PLAIN / LOGIN with literals, and the same rule that no
library exception and no password leaves it.

This module also owns how that session reads: from the login on, every byte
comes through :class:`_BoundedReads`, which puts a whole run under a
:class:`~mailgate.bounds.Deadline` (each socket wait is at most the time left)
and each answer under an :class:`~mailgate.bounds.Allowance` of bytes (a literal
is refused on its announced size, before it is read).  imaplib alone would wait
for a server trickling one byte at a time for ever, and read a literal of any
announced size into memory.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mailgate.bounds import Allowance, BoundExceeded, Deadline
from mailgate.imap import ImapSettings, Session, open_session, unavailable

MAX_RESPONSE = 64 * 1024 * 1024  # default bytes in answer to one command (learn.max_response)
# imaplib's own line limit (its _MAXLINE): a longer line was an error before the
# reads were bounded here, and stays one.
MAX_LINE = 1_000_000
_CHUNK = 256 * 1024  # bytes asked of the socket at once while reading a literal

_T = TypeVar("_T")


class Mailbox:
    """A logged-in IMAP session for reading and tidying folders (``mail-filter learn``).

    Typed calls over the few imapclient methods learning needs; every library
    failure becomes :class:`BackendUnavailable`, and a bound that was hit
    (``reads``) :class:`~mailgate.bounds.BoundExceeded`, on that call and every
    later one.
    """

    def __init__(self, session: Session, password: str, reads: _BoundedReads) -> None:
        self._session = session
        self._client = session.client
        self._password = password  # only to scrub it from error text
        self._reads = reads

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, name)(*args, **kwargs)
        except Exception as err:
            # imaplib and imapclient may catch our error and raise their own in its
            # place; the bound that was hit is what the caller must hear about.
            if self._reads.error is not None:
                raise self._reads.error from None
            raise unavailable(err, self._password) from None

    def select_folder(self, folder: str, readonly: bool = True) -> dict[bytes, Any]:
        """Select ``folder``; the server's answer (``b"UIDVALIDITY"``, ``b"EXISTS"`` ...)."""
        return dict(self._call("select_folder", folder, readonly=readonly))

    def search(self, criteria: Sequence[str]) -> list[int]:
        """UIDs matching ``criteria`` (imapclient's list form, e.g. ``["UID", "5:*"]``)."""
        return [int(u) for u in self._call("search", list(criteria))]

    def fetch(self, uids: Sequence[int], items: Sequence[bytes]) -> dict[int, dict[bytes, Any]]:
        """``items`` for each UID still there (an expunged UID is simply missing)."""
        return dict(self._call("fetch", list(uids), list(items)))

    def add_flags(self, uids: Sequence[int], flags: Sequence[bytes]) -> None:
        """Add flags (keywords) to messages."""
        self._call("add_flags", list(uids), list(flags))

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move messages to another folder (MOVE, or COPY + delete where not offered)."""
        self._call("move", list(uids), folder)

    def delete_messages(self, uids: Sequence[int]) -> None:
        """Flag messages deleted (gone at the next :meth:`expunge`)."""
        self._call("delete_messages", list(uids))

    def expunge(self) -> None:
        """Remove messages flagged deleted from the selected folder."""
        self._call("expunge")

    def logout(self) -> None:
        """Say LOGOUT and close the connection; never raises."""
        with contextlib.suppress(Exception):
            self._client.logout()
        self._session.close()


class _BoundedReads:
    """imaplib's ``send``, ``read`` and ``readline`` for one connection, within bounds.

    Installed over the imaplib object's own methods (imaplib calls them through
    ``self``, so instance attributes take their place).  Each socket wait is
    ``min(response_timeout, time left)``, and the file is read with ``peek`` and
    ``read1``, each at most one ``recv``, so even a byte every second cannot
    keep a read going past the deadline.  Each command sent renews the byte
    allowance its answer may use, lines and literals together: a stream of
    small untagged responses is bounded as much as one endless literal.

    When a bound is hit the socket is shut down (the answer was abandoned
    halfway, so nothing after it could be parsed) and ``error`` is kept: every
    later read raises it again, while sends go to a closed socket and fail as
    imaplib expects, so LOGOUT and close still finish at once.
    """

    def __init__(
        self, imap: Any, deadline: Deadline | None, allowance: Allowance, response_timeout: float
    ) -> None:
        self._imap = imap
        self._deadline = deadline
        self._allowance = allowance
        self._response_timeout = response_timeout
        self._timeout: float | None = None  # what the socket's timeout was last set to
        self._send: Callable[[bytes], None] = imap.send  # imaplib's own: sock.sendall
        self.error: BoundExceeded | None = None
        imap.send, imap.read, imap.readline = self.send, self.read, self.readline

    def _trip(self, err: BoundExceeded) -> BoundExceeded:
        self.error = err
        with contextlib.suppress(OSError):
            self._imap.sock.shutdown(socket.SHUT_RDWR)
        return err

    def _io(self, doing: str, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)``: one socket operation, waiting no longer than the deadline allows."""
        if self.error is not None:
            raise self.error
        timeout = self._response_timeout
        if self._deadline is not None:
            timeout = self._deadline.cap(timeout)
            if timeout <= 0:
                raise self._trip(self._deadline.error(doing))
        if timeout != self._timeout:
            self._imap.sock.settimeout(timeout)
            self._timeout = timeout
        try:
            return call(*args)
        except TimeoutError:
            if self._deadline is not None and timeout < self._response_timeout:
                raise self._trip(self._deadline.error(doing)) from None
            raise  # response_timeout: imaplib's usual failure (kind "timeout")

    def _take(self, size: int, what: str) -> None:
        try:
            self._allowance.take(size, what)
        except BoundExceeded as err:
            raise self._trip(err) from None

    def send(self, data: bytes) -> None:
        """Send (part of) a command; its answer gets a new allowance."""
        if self.error is not None:
            self._send(data)  # the socket is shut down: OSError, as imaplib expects
            return
        self._allowance.renew()
        self._io("while sending a command", self._send, data)

    def read(self, size: int) -> bytes:
        """A literal of ``size`` bytes, refused on its size before a byte of it is read."""
        self._take(size, f"a literal of {size} bytes")
        chunks: list[bytes] = []
        got = 0
        while got < size:
            want = min(_CHUNK, size - got)
            chunk = self._io("while reading a literal", self._imap.file.read1, want)
            if not chunk:
                break  # closed: imaplib finds the short literal and reports the connection closed
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def readline(self) -> bytes:
        """One response line, up to its LF; at most what the allowance and MAX_LINE leave."""
        room = min(MAX_LINE, self._allowance.left)
        parts: list[bytes] = []
        got = 0
        while True:
            # peek(1) returns what is buffered, or does one recv when nothing is.
            ahead = self._io("while reading a response line", self._imap.file.peek, 1)
            if not ahead:
                break  # closed: imaplib reports it
            end = ahead.find(b"\n", 0, room - got)
            size = end + 1 if end >= 0 else min(len(ahead), room - got)
            self._take(size, "a response line")
            parts.append(self._imap.file.read(size))  # already buffered: no I/O
            got += size
            if end >= 0:
                break
            if got >= room:
                if room == MAX_LINE:
                    raise self._trip(
                        BoundExceeded("size", f"a response line longer than {MAX_LINE} bytes")
                    )
                self._take(1, "a response line without end")  # raises: nothing is left
        return b"".join(parts)


def open_mailbox(
    settings: ImapSettings,
    user: str,
    password: str,
    *,
    deadline: Deadline | None = None,
    allowance: Allowance | None = None,
) -> Mailbox:
    """Connect, secure, log in (AUTHENTICATE PLAIN, or LOGIN with literals): a Mailbox.

    From the login on, the session ends with :class:`~mailgate.bounds.BoundExceeded`
    when ``deadline`` passes or the answer to one command passes ``allowance``
    (by default :data:`MAX_RESPONSE` bytes).  Before it (connecting, the
    greeting, STARTTLS) each wait is bounded by the settings' timeouts alone:
    :mod:`mailgate.imap` reads those itself.  Otherwise raises
    :class:`BackendUnavailable`, with kind ``auth`` when the credentials are
    refused; no error text carries the password.
    """
    session = open_session(settings)
    reads = _BoundedReads(
        session.imap, deadline, allowance or Allowance(MAX_RESPONSE, "max_response"),
        settings.response_timeout,
    )  # fmt: skip
    try:
        session.login(user, password, settings.mechanism)
    except BaseException:
        session.close()
        if reads.error is not None:  # login turned it into "protocol"; say what happened
            raise reads.error from None
        raise
    return Mailbox(session, password, reads)
