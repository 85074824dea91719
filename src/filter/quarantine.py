"""The quarantine: held messages on disk, durable before Postfix is answered.

This module owns the entries' on-disk format and the hardened file operations
(write, read back, list names, rewrite metadata, delete, the directory lock);
:mod:`filter.qdir` puts an index and the :class:`filter.qstore.QuarantineStore`
interface on top.  The files stay the truth.  Each entry is two files in one
directory: ``<id>.eml`` (the message exactly as it would have been delivered,
with ``X-Quarantine-ID``) and ``<id>.json`` (envelope, verdict, times,
releases).  Both are written to temporary names, fsynced, renamed into place,
and the directory is fsynced; the JSON file is written last and is what makes
an entry exist.  A crash before our answer to Postfix leaves at worst an extra
entry (Postfix retries the message), never a lost one.

Release itself (re-injection) is :mod:`filter.qactions`'s job; the claim that
makes it happen once is :mod:`filter.qdir`'s, under :meth:`Store.locked`.

The directory may be writable by others than the filter (a spool-adjacent
group, a careless restore), so nothing read back is trusted: entry files that
are not plain regular files (symlinks, FIFOs, devices, directories, extra hard
links) are refused without being followed or opened in a way that could block;
metadata is size-bounded and checked field by field, and its ``id`` must be its
file's name, so a tampered file can neither crash the tools nor make them act on
or name another entry.
"""

from __future__ import annotations

import contextlib
import email.header
import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filter import headers

# An entry's metadata is a few hundred bytes; even 1,000 recipients of 254 octets
# each, JSON-escaped, stay under 1 MiB, so 4 MiB is room to spare.  The bound keeps
# a planted huge file out of memory (the message file has none: release needs it all).
MAX_METADATA_BYTES = 4 * 1024 * 1024

# What new_id() makes (and a little more, for older or test ids): no "/", ".", NUL.
_ID = re.compile(r"[0-9a-f-]{1,64}")

# Far enough for any real receipt time, near enough for time.localtime() (year 9999).
_LAST_TIME = 253402300799


class QuarantineError(Exception):
    """An entry is missing, malformed, or the operation is not allowed (e.g. a second release)."""


class NotFound(QuarantineError):
    """No such entry (never held, deleted or expired)."""


@dataclass
class Entry:
    """One held message's metadata."""

    id: str
    category: str
    reason: str
    mail_from: str
    recipients: list[str]
    received_at: float
    size: int
    score: float | None = None
    queue_id: str = ""
    releases: list[dict[str, object]] = field(default_factory=list)
    # Added for the portal (issue 17); optional, so entries written before still read.
    subject: str = ""
    requests: list[dict[str, object]] = field(default_factory=list)

    @property
    def released(self) -> bool:
        """Whether the entry was released already."""
        return bool(self.releases)


def new_id() -> str:
    """A quarantine id: sortable by time, unguessable (it authorises a release)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(5)


def hold_key(
    queue_id: str,
    mail_from: str,
    recipients: Sequence[str],
    size: int,
    head: bytes,
    category: str = "",
) -> str | None:
    """What makes a delivery attempt the same message again: None without a queue id.

    Postfix retries a message whose 250 it never saw (the connection dropped
    after we held it) or that we answered 451 after holding it (another
    recipient's re-injection was deferred).  The retry carries the same queue
    id, envelope, size and bytes, so the store holds it once
    (``QuarantineStore.add``'s ``key``).  ``head``: the message as kept in
    memory (a spooled message's head), which carries the Received field with
    the queue id and the Message-ID; reading a spooled body again would add
    cost and no certainty.  Without a queue id (mail that did not come through
    Postfix) two identical messages are two messages: no key.  ``category`` is
    in the key: a retry judged worse (a virus now, after a signature update,
    where it was spam) is held again under its new verdict, with its notice,
    not answered by the milder entry.
    """
    if not queue_id or queue_id == "-":
        return None
    digest = hashlib.sha256()
    for part in (category, queue_id, mail_from, *sorted(recipients), str(size)):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(head)
    return digest.hexdigest()


# A subject longer than this is cut: it is for a list row and a search, not for delivery.
MAX_SUBJECT_CHARS = 500


def subject_of(message: bytes) -> str:
    """The decoded Subject (RFC 2047 words decoded, unfolded, cut); "" if none. Never raises.

    ``message``: the message or only its head (the first field only is read).
    """
    found = headers.first_field(message, b"subject")
    if found is None:
        return ""
    raw = re.sub(rb"\r?\n(?=[ \t])", b"", found.split(b":", 1)[1]).strip()
    text = raw.decode("utf-8", "replace")
    with contextlib.suppress(Exception):  # a broken encoded word: keep the text as it is
        text = str(email.header.make_header(email.header.decode_header(text)))
    return text[:MAX_SUBJECT_CHARS]


def _write_durably(path: Path, data: bytes, more: Iterable[bytes] = ()) -> None:
    # An unguessable name created exclusively, never through a symlink: a temporary
    # name anyone could predict (the pid) could be planted as a link to, say,
    # /etc/passwd, which the CLI (often run as root) would then overwrite.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o640)
    try:
        try:
            for piece in itertools.chain((data,), more):  # one piece in memory at a time
                view = memoryview(piece)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_id(entry_id: str) -> str:
    """``entry_id`` if it is one of our ids; QuarantineError (never a lookup) if not."""
    if not _ID.fullmatch(entry_id):
        shown = entry_id if len(entry_id) <= 80 else entry_id[:80] + "..."
        raise QuarantineError(f"{shown!r} is not a quarantine id")
    return entry_id


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _refuse_unless_plain(entry_id: str, what: str, st: os.stat_result) -> None:
    kind = _kind(st.st_mode)
    if kind is not None:
        raise QuarantineError(f"{entry_id}: {what} is {kind}; refused")
    if st.st_nlink != 1:
        # Another name for the inode could be any file its owner could link here
        # (/etc/shadow, where fs.protected_hardlinks is off); ours have exactly one.
        raise QuarantineError(f"{entry_id}: {what} has {st.st_nlink} hard links; refused")


def _read_plain(
    path: Path, entry_id: str, what: str, limit: int | None = None, head: int | None = None
) -> bytes:
    """A plain file's bytes; anything else is refused, never followed, never waited on.

    ``limit``: a file larger is refused; ``head``: only the first ``head`` bytes are read.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"no quarantined message {entry_id}") from None
    except OSError as err:
        raise QuarantineError(f"{entry_id}: {what} unreadable ({err.strerror})") from err
    _refuse_unless_plain(entry_id, what, before)
    # lstat() first, so a FIFO or a device is never even opened (opening a tape
    # rewinds it); O_NOFOLLOW, O_NONBLOCK and fstat() because the name may be
    # swapped in between: open(2) then fails on a symlink (ELOOP), returns at once
    # on a FIFO, and the inode differs.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise QuarantineError(f"{entry_id}: {what} unreadable ({err.strerror})") from err
    try:
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise QuarantineError(f"{entry_id}: {what} was replaced while being opened; refused")
        _refuse_unless_plain(entry_id, what, after)
        if limit is not None and after.st_size > limit:
            raise QuarantineError(f"{entry_id}: {what} is over {limit} bytes; refused")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 20 if head is None else max(0, head - total)):
            total += len(chunk)
            if limit is not None and total > limit:  # it grew after fstat()
                raise QuarantineError(f"{entry_id}: {what} is over {limit} bytes; refused")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise QuarantineError(f"{entry_id}: {what} unreadable ({err.strerror})") from err
    finally:
        os.close(fd)


def _is_number(value: object) -> bool:
    # JSON as Python reads it has NaN and Infinity; neither passes the comparison.
    return isinstance(value, int | float) and not isinstance(value, bool) and -1e300 < value < 1e300


def _is_list_of(kind: type, value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, kind) for item in value)


# Each metadata field, what its value must be, and what that is called in an error.
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "id": (lambda v: isinstance(v, str), "a string"),
    "category": (lambda v: isinstance(v, str), "a string"),
    "reason": (lambda v: isinstance(v, str), "a string"),
    "mail_from": (lambda v: isinstance(v, str), "a string"),
    "recipients": (lambda v: _is_list_of(str, v), "a list of strings"),
    "received_at": (lambda v: _is_number(v) and 0 <= v <= _LAST_TIME, "a Unix time"),
    "size": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a size"),
    "score": (lambda v: v is None or _is_number(v), "a number or null"),
    "queue_id": (lambda v: isinstance(v, str), "a string"),
    "releases": (lambda v: _is_list_of(dict, v), "a list of objects"),
    "subject": (lambda v: isinstance(v, str), "a string"),
    "requests": (lambda v: _is_list_of(dict, v), "a list of objects"),
}
_REQUIRED = ("id", "category", "reason", "mail_from", "recipients", "received_at", "size")


def _parse_entry(entry_id: str, data: bytes) -> Entry:
    """Metadata checked field by field; errors name ``entry_id`` and never echo the file."""

    def bad(why: str) -> QuarantineError:
        return QuarantineError(f"{entry_id}: bad metadata ({why})")

    try:
        raw = json.loads(data.decode())
    except UnicodeDecodeError as err:
        raise bad(f"not UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise bad(f"not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except (ValueError, RecursionError):  # a 5,000-digit number; [[[[... nested too deep
        raise bad("JSON we do not read") from None
    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    missing = [name for name in _REQUIRED if name not in raw]
    if missing:
        raise bad("no " + ", ".join(missing))
    unknown = raw.keys() - _FIELDS.keys()
    if unknown:  # their names are the file's text, which may name another entry
        raise bad(f"{len(unknown)} unknown field(s)")
    for name, value in raw.items():
        valid, kind = _FIELDS[name]
        if not valid(value):
            raise bad(f"{name} is not {kind}")
    if raw["id"] != entry_id:
        # The id inside is neither used nor printed: it could be another entry's,
        # and release, delete or expire would then act on that one.
        raise bad("its id is not its file name")
    return Entry(**raw)


def _ignore(_err: QuarantineError) -> None:
    pass


class Store:
    """A quarantine directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, entry_id: str, suffix: str) -> Path:
        return self.directory / f"{check_id(entry_id)}{suffix}"

    def write(self, entry: Entry, message: bytes, more: Iterable[bytes] = ()) -> None:
        """Store a message durably (both files fsynced, then the directory).

        ``more``: the rest of the message after ``message``, in pieces (a spooled
        message's tail, never read into memory at once).
        """
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        _write_durably(self._path(entry.id, ".eml"), message, more)
        _write_durably(self._path(entry.id, ".json"), json.dumps(asdict(entry)).encode())
        _fsync_dir(self.directory)

    def get(self, entry_id: str) -> Entry:
        """An entry's metadata; QuarantineError if missing, not a plain file or malformed."""
        path = self._path(entry_id, ".json")
        return _parse_entry(entry_id, _read_plain(path, entry_id, "metadata", MAX_METADATA_BYTES))

    def message(self, entry_id: str) -> bytes:
        """An entry's message bytes; QuarantineError if missing or not a plain file."""
        return _read_plain(self._path(entry_id, ".eml"), entry_id, "message file")

    def message_head(self, entry_id: str, size: int = 64 * 1024) -> bytes:
        """The first ``size`` bytes of an entry's message (for its Subject); refused as above."""
        return _read_plain(self._path(entry_id, ".eml"), entry_id, "message file", head=size)

    def rewrite(self, entry: Entry) -> None:
        """Replace an entry's metadata durably (callers hold :meth:`locked`)."""
        _write_durably(self._path(entry.id, ".json"), json.dumps(asdict(entry)).encode())
        _fsync_dir(self.directory)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The directory's exclusive lock, for read-check-rewrite of metadata across processes.

        flock(2) on the directory itself: no lock file anyone could plant as a
        symlink or FIFO, and the kernel drops it when a holder dies.
        """
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def names(self) -> list[str]:
        """The names of the metadata files, without ``.json``, sorted; not yet checked as ids."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise QuarantineError(f"{self.directory}: unreadable ({err.strerror})") from err
        return sorted(
            n.removesuffix(".json") for n in names if n.endswith(".json") and not n.startswith(".")
        )

    def check_message_file(self, entry_id: str) -> None:
        """Public name of :meth:`_check_message_file`, for the index layer."""
        self._check_message_file(entry_id)

    def _check_message_file(self, entry_id: str) -> None:
        """Refuse an entry whose message file is there but is not a plain file.

        Only lstat(): listing, deleting or expiring must not read every message.
        A missing message file is let through (show and release say so).
        """
        try:
            st = os.lstat(self._path(entry_id, ".eml"))
        except FileNotFoundError:
            return
        except OSError as err:
            raise QuarantineError(f"{entry_id}: message file unreadable ({err.strerror})") from err
        _refuse_unless_plain(entry_id, "message file", st)

    def entries(
        self,
        since: float | None = None,
        category: str | None = None,
        on_skip: Callable[[QuarantineError], None] = _ignore,
    ) -> Iterator[Entry]:
        """Entries, oldest first, optionally only newer than ``since`` or of one category.

        An entry that cannot be trusted (see ``get``) is passed to ``on_skip``
        once, and skipped.
        """
        for name in self.names():
            try:
                entry = self.get(name)
                self._check_message_file(entry.id)
            except QuarantineError as err:
                on_skip(err)
                continue
            if since is not None and entry.received_at < since:
                continue
            if category is not None and entry.category != category:
                continue
            yield entry

    @staticmethod
    def check_not_released(entry: Entry) -> None:
        """Refuse a second release, saying when and to whom the first one went."""
        if entry.released:
            first = entry.releases[0]
            raise QuarantineError(
                f"{entry.id} was already released ({first.get('when')}, to {first.get('to')});"
                " refusing to deliver it twice"
            )

    def record_release(self, entry_id: str, recipients: Sequence[str], reply: str) -> Entry:
        """Note a successful release; a second release is refused."""
        entry = self.get(entry_id)
        self.check_not_released(entry)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        entry.releases.append({"when": when, "to": ", ".join(recipients), "reply": reply})
        try:
            _write_durably(self._path(entry_id, ".json"), json.dumps(asdict(entry)).encode())
        except OSError as err:
            raise QuarantineError(
                f"{entry_id}: delivered, but the release could not be recorded ({err.strerror});"
                " a second release would deliver it again"
            ) from err
        return entry

    def delete(self, entry_id: str) -> None:
        """Remove an entry (metadata first, so a half-deleted entry is invisible).

        An entry ``get`` refuses, or whose message file is not a plain file, is
        refused here too: planted files are for the administrator to look at.
        """
        self.get(entry_id)
        self._check_message_file(entry_id)
        try:
            self._path(entry_id, ".json").unlink()
            self._path(entry_id, ".eml").unlink(missing_ok=True)
        except OSError as err:
            raise QuarantineError(f"{entry_id}: not deleted ({err.strerror})") from err

    def expire(
        self,
        max_age_days: float,
        now: float | None = None,
        on_skip: Callable[[QuarantineError], None] = _ignore,
    ) -> int:
        """Delete entries older than ``max_age_days``; returns how many.

        Entries that cannot be read or deleted go to ``on_skip`` and are kept.
        """
        cutoff = (now if now is not None else time.time()) - max_age_days * 86400
        old = [e.id for e in self.entries(on_skip=on_skip) if e.received_at < cutoff]
        deleted = 0
        for entry_id in old:
            try:
                self.delete(entry_id)
            except QuarantineError as err:
                on_skip(err)
                continue
            deleted += 1
        return deleted
