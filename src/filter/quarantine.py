"""The quarantine: held messages on disk, durable before Postfix is answered.

This module owns the store's format and its operations (write, list, show,
release bookkeeping, delete, expire).  Each entry is two files in one
directory: ``<id>.eml`` (the message exactly as it would have been delivered,
with ``X-Quarantine-ID``) and ``<id>.json`` (envelope, verdict, times,
releases).  Both are written to temporary names, fsynced, renamed into place,
and the directory is fsynced; the JSON file is written last and is what makes
an entry exist.  A crash before our answer to Postfix leaves at worst an extra
entry (Postfix retries the message), never a lost one.

Release itself (re-injection) is the CLI's job: this module only records it,
and refuses to record a second release.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


class QuarantineError(Exception):
    """An entry is missing, malformed, or the operation is not allowed (e.g. a second release)."""


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

    @property
    def released(self) -> bool:
        """Whether the entry was released already."""
        return bool(self.releases)


def new_id() -> str:
    """A quarantine id: sortable by time, unguessable (it authorises a release)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(5)


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


class Store:
    """A quarantine directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, entry: Entry, message: bytes, more: Iterable[bytes] = ()) -> None:
        """Store a message durably (both files fsynced, then the directory).

        ``more``: the rest of the message after ``message``, in pieces (a spooled
        message's tail, never read into memory at once).
        """
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        _write_durably(self.directory / f"{entry.id}.eml", message, more)
        _write_durably(self.directory / f"{entry.id}.json", json.dumps(asdict(entry)).encode())
        _fsync_dir(self.directory)

    def _check_id(self, entry_id: str) -> str:
        if not entry_id or any(c not in "0123456789abcdef-" for c in entry_id):
            raise QuarantineError(f"{entry_id!r} is not a quarantine id")
        return entry_id

    def get(self, entry_id: str) -> Entry:
        """An entry's metadata."""
        path = self.directory / f"{self._check_id(entry_id)}.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id}") from None
        except (OSError, ValueError) as err:
            raise QuarantineError(f"{path}: unreadable ({err})") from err
        return Entry(**raw)

    def message(self, entry_id: str) -> bytes:
        """An entry's message bytes."""
        try:
            return (self.directory / f"{self._check_id(entry_id)}.eml").read_bytes()
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined message {entry_id}") from None

    def entries(self, since: float | None = None, category: str | None = None) -> Iterator[Entry]:
        """Entries, oldest first, optionally only newer than ``since`` or of one category."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = self.get(path.stem)
            except QuarantineError:
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
        _write_durably(self.directory / f"{entry_id}.json", json.dumps(asdict(entry)).encode())
        return entry

    def delete(self, entry_id: str) -> None:
        """Remove an entry (metadata first, so a half-deleted entry is invisible)."""
        self.get(entry_id)
        (self.directory / f"{entry_id}.json").unlink()
        (self.directory / f"{entry_id}.eml").unlink(missing_ok=True)

    def expire(self, max_age_days: float, now: float | None = None) -> int:
        """Delete entries older than ``max_age_days``; returns how many."""
        cutoff = (now if now is not None else time.time()) - max_age_days * 86400
        old = [e.id for e in self.entries() if e.received_at < cutoff]
        for entry_id in old:
            self.delete(entry_id)
        return len(old)
