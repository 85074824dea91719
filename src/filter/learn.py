"""``mail-filter learn``: teach SpamAssassin's Bayes from the admin mailbox's spam and ham folders.

This module owns the learning run: log in to the internal IMAP server through
the core's IMAP session (:mod:`mailgate.imap`: the same URL forms, CA options
and safe AUTHENTICATE PLAIN / LOGIN-with-literals as saslimap), read new
messages from each folder in batches, teach each one to spamd (``TELL``) or to
a local ``sa-learn``, and remember per folder the UIDVALIDITY and the last UID
learned, so each message is learned once: in a state file written atomically
(:class:`FileStore`), or, with ``[state]`` configured, in the store the gateway
hosts share, under a lock so that one host learns at a time
(:mod:`filter.shared`; the run is the same, behind :class:`LearnStore`).
A UIDVALIDITY change relearns that folder (Bayes de-duplicates, so nothing is
counted twice).  A message that moved between folders is relearned as its new
class (forgotten, then learned), recognised by a digest of its bytes kept in
the state.

A message that cannot be taught (spamd or sa-learn refused it, a timeout) is
tried again in the next runs, up to ``MAX_TRIES`` runs in all, then given up
with a warning, so one bad message never blocks a folder.

A run is bounded: it ends at ``run_timeout`` (every IMAP wait, every teacher's
wait is cut to the time left), and the IMAP server's answer to one command may
bring at most ``max_response`` bytes.  So that an honest mailbox stays within
that, each batch's sizes are asked for first (RFC822.SIZE) and its bodies
fetched in parts that fit; a message too big to ever fit is skipped with a
warning.  A server that breaks a bound ends the run with an error; the state
keeps every part saved before.

Exit status (:mod:`filter.cli`): 0 when everything went through, or when
another gateway host holds the shared lock; 1 when any message or folder
failed, the run hit a bound or lost the shared store (the state keeps what
succeeded); 75 when the shared store cannot be reached at the start; 78 for a
bad configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from filter.config import LearnConfig
from filter.spamd import SpamdError
from filter.teachers import (
    BatchTeacher,
    Teacher,
    sa_learn_batch_teacher,
    sa_learn_teacher,
    spamd_teacher,
)
from mailgate.bounds import Allowance, BoundExceeded, Deadline
from mailgate.errors import BackendError, ConfigError, MailgateError

if TYPE_CHECKING:
    from mailgate.mailbox import Mailbox as ImapMailbox

# The teachers are imported by name from here by the command line and the tests.
__all__ = [
    "MAX_TRIES",
    "BatchTeacher",
    "FileStore",
    "LearnError",
    "LearnStore",
    "Learner",
    "State",
    "Teacher",
    "connect",
    "run_deadline",
    "sa_learn_batch_teacher",
    "sa_learn_teacher",
    "spamd_teacher",
    "summary",
]

log = logging.getLogger(__name__)

MAX_DIGESTS = 200_000  # remembered learned messages (for "moved to the other folder")
MAX_TRIES = 3  # runs in which a message may fail to be taught before it is given up
# Room in an answer besides the messages: per message, its FETCH line around the
# literal ("* 123 FETCH (UID 123 BODY[] {n}" ... ")", FLAGS if the server adds
# them); per command, the tagged reply and stray untagged responses.
FETCH_LINE_ROOM = 512
FETCH_ROOM = 64 * 1024


class LearnError(MailgateError):
    """The run cannot go on (IMAP unreachable, login refused, spamd down, a bound hit)."""


@dataclass
class FolderState:
    """What was learned from one folder."""

    uidvalidity: int = 0
    last_uid: int = 0
    retry: dict[str, int] = field(default_factory=dict)  # UID -> failed runs so far


@dataclass
class State:
    """A run's state: per folder, and digests of learned messages with their class."""

    folders: dict[str, FolderState] = field(default_factory=dict)
    learned: dict[str, str] = field(default_factory=dict)  # digest of the message -> class
    # Learned since the last save: the shared store writes only these (its ``learned``
    # holds just the digests a run looked up, not every one ever learned).
    fresh: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def remember(self, digest: str, klass: str) -> None:
        """A message was taught as ``klass``: keep it for the next save."""
        self.learned[digest] = klass
        self.fresh[digest] = klass

    @classmethod
    def load(cls, path: Path) -> State:
        """Read the state file (an absent one is an empty state)."""
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as err:
            raise LearnError(f"{path}: unreadable state file ({err})") from err
        folders = {k: FolderState(**v) for k, v in raw.get("folders", {}).items()}
        return cls(folders, dict(raw.get("learned", {})))

    def save(self, path: Path) -> None:
        """Write atomically: a temporary file, fsync, rename, fsync the directory."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(self.learned) > MAX_DIGESTS:  # keep the newest (dicts keep insertion order)
            self.learned = dict(list(self.learned.items())[-MAX_DIGESTS:])
        data = json.dumps(
            {"folders": {k: vars(v) for k, v in self.folders.items()}, "learned": self.learned}
        ).encode()
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.fresh.clear()


class LearnStore(Protocol):
    """Where a run's state lives: the local state file, or the store the gateway hosts share.

    Every method may raise LearnError: the run cannot go on (what was saved stays).
    """

    def load(self) -> State:
        """The state at the start of a run (folders; digests as the store keeps them)."""
        ...

    def digest(self, message: bytes) -> str:
        """The name a learned message is remembered by."""
        ...

    def recall(self, state: State, digests: Collection[str]) -> None:
        """Put into ``state.learned`` the class of each of ``digests`` learned before, if any."""
        ...

    def check(self) -> None:
        """Raise LearnError if this run may no longer go on (the shared lock was lost)."""
        ...

    def save(self, state: State) -> None:
        """Keep the folders and what was learned since the last save."""
        ...


@dataclass(frozen=True)
class FileStore:
    """``learn.state_file``, read whole at the start and rewritten atomically after each part."""

    path: Path

    def load(self) -> State:
        return State.load(self.path)

    def digest(self, message: bytes) -> str:
        return hashlib.sha256(message).hexdigest()

    def recall(self, state: State, digests: Collection[str]) -> None:
        """Nothing to do: the whole file is in ``state`` since load()."""

    def check(self) -> None:
        """A local file is this host's alone: always."""

    def save(self, state: State) -> None:
        state.save(self.path)


@dataclass
class Totals:
    """Counts for the summary line."""

    learned: dict[str, int] = field(default_factory=dict)
    relearned: int = 0
    already: int = 0
    failed: int = 0
    too_big: int = 0  # messages over max_response, skipped for good
    skipped_folders: list[str] = field(default_factory=list)


def _password(cfg: LearnConfig) -> str:
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text().rstrip("\r\n")
        except OSError as err:
            raise LearnError(f"learn.password_file: cannot read ({err.strerror})") from err
    return cfg.password


class Mailbox(Protocol):
    """The IMAP calls a run makes (:class:`mailgate.mailbox.Mailbox`; a fake in tests).

    Any call may raise :class:`~mailgate.bounds.BoundExceeded`: the session is over.
    """

    def select_folder(self, folder: str, readonly: bool = True) -> dict[bytes, Any]: ...
    def search(self, criteria: Sequence[str]) -> list[int]: ...
    def fetch(self, uids: Sequence[int], items: Sequence[bytes]) -> dict[int, dict[bytes, Any]]: ...
    def add_flags(self, uids: Sequence[int], flags: Sequence[bytes]) -> None: ...
    def move(self, uids: Sequence[int], folder: str) -> None: ...
    def delete_messages(self, uids: Sequence[int]) -> None: ...
    def expunge(self) -> None: ...


def run_deadline(cfg: LearnConfig, clock: Callable[[], float] = time.monotonic) -> Deadline:
    """The deadline of a run starting now (``learn.run_timeout``)."""
    return Deadline(cfg.run_timeout, "learn.run_timeout", clock)


def connect(cfg: LearnConfig, deadline: Deadline | None = None) -> ImapMailbox:
    """A logged-in :class:`mailgate.mailbox.Mailbox` (TLS as the URL says; certificates verified).

    Its reads end at ``deadline`` (by default a run's, from now) and refuse an
    answer over ``max_response``.  The IMAP wrapper is imported here, not at the
    top: building the filter daemon must not load imapclient.
    """
    from mailgate import imap, mailbox

    deadline = deadline or run_deadline(cfg)
    password = _password(cfg)
    try:
        # Until the login, mailgate.imap reads by itself: each wait is at most the
        # time left, and the whole exchange ends at the deadline by an alarm.
        timeout = deadline.cap(cfg.timeout)
        settings = imap.ImapSettings.from_url(
            cfg.imap_url, cfg.ca_file, key="learn.imap_url",
            connect_timeout=timeout, response_timeout=timeout,
        )  # fmt: skip
        with _alarm(deadline) as rang:
            try:
                return mailbox.open_mailbox(
                    settings, cfg.username, password,
                    deadline=deadline, allowance=Allowance(cfg.max_response, "learn.max_response"),
                )  # fmt: skip
            except BackendError:
                if rang:  # the alarm's error, turned into "protocol" by the library's layers
                    raise deadline.error("before the login") from None
                raise
    except ConfigError as err:
        raise LearnError(str(err)) from None
    except BackendError as err:  # its text never carries the password
        raise LearnError(f"IMAP {cfg.imap_url}: {err}") from None


@contextlib.contextmanager
def _alarm(deadline: Deadline) -> Iterator[list[bool]]:
    """The run's deadline as a SIGALRM while the session is opened, before the login.

    There imaplib reads the greeting and the STARTTLS exchange by itself, each
    read under its own timeout: a server trickling one byte at a time would keep
    every read inside it and the run alive for ever.  The alarm interrupts the
    read wherever it is.  Only in the main thread (signals go nowhere else): the
    command always runs there.
    """
    rang: list[bool] = []  # non-empty once the alarm went off
    if threading.current_thread() is not threading.main_thread():
        yield rang
        return

    def ring(signum: int, frame: object) -> None:
        rang.append(True)
        raise deadline.error("before the login")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(deadline.left(), 0.001))
    try:
        yield rang
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Taught(set[int]):
    """UIDs a batch taught; ``failed``: UIDs whose batch failed (not to be tried alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: set[int] = set()


class Learner:
    """One learning run over the configured folders."""

    def __init__(
        self,
        cfg: LearnConfig,
        teach: Teacher,
        *,
        teach_many: BatchTeacher | None = None,
        dry_run: bool = False,
        progress: bool = False,
        deadline: Deadline | None = None,
        store: LearnStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.teach = teach
        self.teach_many = teach_many
        self.dry_run = dry_run
        self.progress = progress
        self.deadline = deadline or run_deadline(cfg)  # share it with connect and the teachers
        self.store = store if store is not None else FileStore(cfg.state_file)
        self.totals = Totals()
        self.started = time.monotonic()

    def run(self, client: Mailbox) -> Totals:
        """Learn every folder; the state is saved after each part of a batch."""
        state = self.store.load()
        for folder, klass in ((self.cfg.spam_folder, "spam"), (self.cfg.ham_folder, "ham")):
            try:
                self._in_time(f"before folder {folder}")
                self._folder(client, state, folder, klass)
            except LearnError:
                raise
            except BoundExceeded as err:  # the session is over: so is the run
                raise LearnError(f"IMAP {self.cfg.imap_url}: {err}") from None
            except Exception as err:  # one folder's trouble must not stop the other
                log.error("learn: folder %s failed: %s: %s", folder, type(err).__name__, err)
                self.totals.skipped_folders.append(folder)
        return self.totals

    def _in_time(self, where: str) -> None:
        """Raise LearnError once the run's deadline has passed or the store says stop
        (the shared lock is no longer this host's); what was saved stays."""
        if self.deadline.expired:
            raise LearnError(f"{self.deadline.error(where)}; the rest waits for the next run")
        self.store.check()

    def _folder(self, client: Mailbox, state: State, folder: str, klass: str) -> None:
        writable = self.cfg.after != "leave" and not self.dry_run
        info = client.select_folder(folder, readonly=not writable)
        uidvalidity = int(info[b"UIDVALIDITY"])
        fstate = state.folders.setdefault(folder, FolderState())
        if fstate.uidvalidity != uidvalidity:
            if fstate.uidvalidity:
                log.warning("learn: %s UIDVALIDITY changed; relearning the folder", folder)
            fstate.uidvalidity, fstate.last_uid, fstate.retry = uidvalidity, 0, {}
        # Messages that failed in an earlier run first (a spamd restart or a Bayes lock
        # timeout must not lose them), then the new ones.
        uids = sorted(int(u) for u in fstate.retry) + sorted(
            u for u in client.search(["UID", f"{fstate.last_uid + 1}:*"]) if u > fstate.last_uid
        )
        for start in range(0, len(uids), self.cfg.batch_size):
            batch = uids[start : start + self.cfg.batch_size]
            self._in_time(f"before {folder} UID {batch[0]}")
            sizes = client.fetch(batch, [b"RFC822.SIZE"])
            for part, too_big in self._parts(batch, sizes):
                if part:
                    self._in_time(f"before {folder} UID {part[0]}")
                    self._part(client, state, fstate, folder, klass, part)
                for uid, size in too_big:
                    self._too_big(fstate, folder, uid, size)
                if not self.dry_run:
                    self.store.save(state)
                self._show(folder)
        if self.cfg.after in ("move", "delete") and not self.dry_run:
            client.expunge()

    def _parts(
        self, batch: list[int], sizes: dict[int, dict[bytes, Any]]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """The batch in order, as parts whose bodies fit in one answer under max_response.

        Each part comes with the messages after it that never fit (UID, size), so
        the state moves past them only once the part before them is saved.
        """
        room = self.cfg.max_response - FETCH_ROOM
        parts: list[tuple[list[int], list[tuple[int, int]]]] = [([], [])]
        used = 0
        for uid in batch:
            # No size: expunged since the search; the body fetch finds it gone too.
            need = int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0)) + FETCH_LINE_ROOM
            if need > room:
                parts[-1][1].append((uid, need - FETCH_LINE_ROOM))
                continue
            if parts[-1][1] or used + need > room:
                parts.append(([], []))
                used = 0
            parts[-1][0].append(uid)
            used += need
        return [p for p in parts if p[0] or p[1]]

    def _part(
        self, client: Mailbox, state: State, fstate: FolderState, folder: str, klass: str,
        part: list[int],
    ) -> None:  # fmt: skip
        """Fetch, teach and tidy one part of a batch."""
        fetched = client.fetch(part, [b"BODY.PEEK[]"])
        log.debug("learn: %s: fetched %d of UIDs %d-%d", folder, len(fetched), part[0], part[-1])
        messages: dict[int, bytes] = {}
        for uid in part:
            message = fetched.get(uid, {}).get(b"BODY[]")
            if message is None:  # expunged meanwhile
                fstate.retry.pop(str(uid), None)
            else:
                messages[uid] = message
        digests = {uid: self.store.digest(m) for uid, m in messages.items()}
        self.store.recall(state, digests.values())
        taught = self._many(state, messages, digests, klass)
        done: list[int] = []
        for uid, message in messages.items():
            if uid in taught or (
                uid not in taught.failed and self._one(state, message, digests[uid], klass)
            ):
                done.append(uid)
                fstate.retry.pop(str(uid), None)
            else:
                self._failed(fstate, folder, uid)
            fstate.last_uid = max(fstate.last_uid, uid)
        if done and not self.dry_run:
            self._after(client, done)

    def _too_big(self, fstate: FolderState, folder: str, uid: int, size: int) -> None:
        """Skip a message no answer under max_response can carry; for good, with a warning."""
        log.warning(
            "learn: %s UID %d is %d bytes, more than learn.max_response (%d) allows; not learned",
            folder, uid, size, self.cfg.max_response,
        )  # fmt: skip
        self.totals.too_big += 1
        fstate.retry.pop(str(uid), None)
        fstate.last_uid = max(fstate.last_uid, uid)

    def _many(
        self, state: State, messages: dict[int, bytes], digests: dict[int, str], klass: str
    ) -> _Taught:
        """Teach in one go what needs no forgetting first, if the method can."""
        taught = _Taught()
        if self.teach_many is None or self.dry_run:
            return taught
        self.store.check()
        uids = [u for u in messages if state.learned.get(digests[u]) in (None, klass)]
        if not uids:
            return taught
        try:
            learned = self.teach_many([messages[u] for u in uids], klass)
        except (SpamdError, OSError, subprocess.TimeoutExpired) as err:
            self._in_time("while teaching")  # cut short by the deadline: not their fault
            self.totals.failed += len(uids)
            log.warning("learn: %d message(s) could not be taught: %s", len(uids), err)
            taught.failed.update(uids)
            return taught
        for uid in uids:
            state.remember(digests[uid], klass)
        taught.update(uids)
        self.totals.learned[klass] = self.totals.learned.get(klass, 0) + learned
        self.totals.already += len(uids) - learned
        return taught

    def _failed(self, fstate: FolderState, folder: str, uid: int) -> None:
        """Count a failed run for this message; retried next run, given up after MAX_TRIES."""
        tries = fstate.retry.pop(str(uid), 0) + 1
        if tries < MAX_TRIES:
            fstate.retry[str(uid)] = tries
        else:
            log.warning("learn: %s UID %d failed in %d runs; not trying again", folder, uid, tries)

    def _one(self, state: State, message: bytes, digest: str, klass: str) -> bool:
        # A shared lock lost during the last teach (a spamd wait may outlast it): stop
        # here, rather than teach what the host that has it now is teaching too.
        self.store.check()
        before = state.learned.get(digest)
        if self.dry_run:
            self.totals.learned[klass] = self.totals.learned.get(klass, 0) + 1
            return True
        try:
            if before is not None and before != klass:
                self.teach(message, before, True)  # forget the old class first
                self.totals.relearned += 1
            outcome = self.teach(message, klass, False)
        except (SpamdError, OSError, subprocess.TimeoutExpired) as err:
            self._in_time("while teaching")  # cut short by the deadline: not its fault
            self.totals.failed += 1
            log.warning("learn: a message could not be taught: %s", err)
            if isinstance(err, SpamdError) and err.kind == "connect":
                raise LearnError(f"spamd unreachable: {err}") from err
            return False
        state.remember(digest, klass)
        if outcome == "already" and before == klass:
            self.totals.already += 1
        else:
            self.totals.learned[klass] = self.totals.learned.get(klass, 0) + 1
        return True

    def _after(self, client: Mailbox, uids: Sequence[int]) -> None:
        if self.cfg.after == "flag":
            client.add_flags(uids, [self.cfg.flag_keyword.encode()])
        elif self.cfg.after == "move":
            client.move(uids, self.cfg.move_to)
        elif self.cfg.after == "delete":
            client.delete_messages(uids)

    def _show(self, folder: str) -> None:
        if not self.progress:
            return
        count = sum(self.totals.learned.values()) + self.totals.already
        rate = count / max(time.monotonic() - self.started, 1e-6)
        per_class = ", ".join(f"{k} {v}" for k, v in sorted(self.totals.learned.items()))
        print(
            f"\r{folder}: {count} messages ({rate:.0f}/s) {per_class}   ", end="", file=sys.stderr
        )


def summary(totals: Totals, seconds: float) -> str:
    """The one log line per run."""
    return (
        f"learn: spam={totals.learned.get('spam', 0)} ham={totals.learned.get('ham', 0)}"
        f" relearned={totals.relearned} already={totals.already} failed={totals.failed}"
        f" too_big={totals.too_big}"
        f" skipped_folders={','.join(totals.skipped_folders) or '-'} seconds={seconds:.1f}"
    )
