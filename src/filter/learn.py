"""``mail-filter learn``: teach SpamAssassin's Bayes from the admin mailbox's spam and ham folders.

This module owns the learning run: log in to the internal IMAP server (same
URL forms and CA options as saslimap), read new messages from each folder in
batches, teach each one to spamd (``TELL``) or to a local ``sa-learn``, and
remember per folder the UIDVALIDITY and the last UID learned, in a state file
written atomically, so each message is learned once.  A UIDVALIDITY change
relearns that folder (Bayes de-duplicates, so nothing is counted twice).  A
message that moved between folders is relearned as its new class (forgotten,
then learned), recognised by a digest of its bytes kept in the state file.

Exit status: 0 when everything went through, 1 when any message or folder
failed (the state keeps what succeeded), 78 for a bad configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imapclient import IMAPClient

from filter.config import LearnConfig
from filter.spamd import SpamdClient, SpamdError, encode_tell
from saslimap.config import parse_imap_url
from saslimap.imap import make_ssl_context

log = logging.getLogger(__name__)

MAX_DIGESTS = 200_000  # remembered learned messages (for "moved to the other folder")


class LearnError(Exception):
    """The run cannot go on (IMAP unreachable, login refused, spamd down)."""


@dataclass
class FolderState:
    """What was learned from one folder."""

    uidvalidity: int = 0
    last_uid: int = 0


@dataclass
class State:
    """The state file: per folder, and digests of learned messages with their class."""

    folders: dict[str, FolderState] = field(default_factory=dict)
    learned: dict[str, str] = field(default_factory=dict)  # sha256 of the message -> class

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


@dataclass
class Totals:
    """Counts for the summary line."""

    learned: dict[str, int] = field(default_factory=dict)
    relearned: int = 0
    already: int = 0
    failed: int = 0
    skipped_folders: list[str] = field(default_factory=list)


Teacher = Callable[[bytes, str, bool], str]  # (message, class, forget) -> result text


def spamd_teacher(cfg: LearnConfig, spamd_address: str) -> Teacher:
    """Teach through spamd's TELL (spamd must run with --allow-tell)."""
    client = SpamdClient(spamd_address, timeout=cfg.timeout)

    def teach(message: bytes, klass: str, forget: bool) -> str:
        response = asyncio.run(client.exchange(encode_tell(message, klass, remove=forget)))
        if response.code != 0:
            raise SpamdError("protocol", f"TELL refused: {response.code} {response.message}")
        done = response.headers.get("didremove" if forget else "didset", "")
        return "learned" if done else "already"

    return teach


def sa_learn_teacher(cfg: LearnConfig) -> Teacher:
    """Teach with sa-learn on a local Bayes database (no spamd needed)."""

    def teach(message: bytes, klass: str, forget: bool) -> str:
        with tempfile.NamedTemporaryFile(prefix="learn-", suffix=".eml") as fh:
            fh.write(message)
            fh.flush()
            argv = ["sa-learn", "--forget" if forget else f"--{klass}"]
            if cfg.sa_learn_dbpath:
                argv += ["--dbpath", cfg.sa_learn_dbpath]
            argv.append(fh.name)
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=cfg.timeout, check=False
            )
        if done.returncode != 0:
            raise SpamdError("protocol", f"sa-learn failed: {done.stderr.strip()[:200]}")
        return "already" if "Learned tokens from 0 message" in done.stdout else "learned"

    return teach


def _password(cfg: LearnConfig) -> str:
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text().rstrip("\r\n")
        except OSError as err:
            raise LearnError(f"learn.password_file: cannot read ({err.strerror})") from err
    return cfg.password


def connect(cfg: LearnConfig) -> Any:
    """A logged-in IMAPClient (TLS as the URL says; certificates verified)."""
    target = parse_imap_url(cfg.imap_url, "learn.imap_url")
    context = None if target.scheme == "imap+plaintext" else make_ssl_context(cfg.ca_file)
    try:
        client = IMAPClient(
            target.host, port=target.port, ssl=target.scheme == "imaps",
            ssl_context=context, timeout=cfg.timeout,
        )  # fmt: skip
        client._imap.debug = 0  # no protocol trace: it would log the password
        if target.scheme == "imap":
            client.starttls(context)
        if b"AUTH=PLAIN" in client.capabilities():
            client.plain_login(cfg.username, _password(cfg))
        else:
            client.login(cfg.username, _password(cfg))
    except Exception as err:  # every library failure: no learning possible
        raise LearnError(f"IMAP {target}: {type(err).__name__}: {err}") from None
    return client


class Learner:
    """One learning run over the configured folders."""

    def __init__(
        self, cfg: LearnConfig, teach: Teacher, *, dry_run: bool = False, progress: bool = False
    ) -> None:
        self.cfg = cfg
        self.teach = teach
        self.dry_run = dry_run
        self.progress = progress
        self.totals = Totals()
        self.started = time.monotonic()

    def run(self, client: Any) -> Totals:
        """Learn every folder; the state file is saved after each batch."""
        state = State.load(self.cfg.state_file)
        for folder, klass in ((self.cfg.spam_folder, "spam"), (self.cfg.ham_folder, "ham")):
            try:
                self._folder(client, state, folder, klass)
            except LearnError:
                raise
            except Exception as err:  # one folder's trouble must not stop the other
                log.error("learn: folder %s failed: %s: %s", folder, type(err).__name__, err)
                self.totals.skipped_folders.append(folder)
        return self.totals

    def _folder(self, client: Any, state: State, folder: str, klass: str) -> None:
        writable = self.cfg.after != "leave" and not self.dry_run
        info = client.select_folder(folder, readonly=not writable)
        uidvalidity = int(info[b"UIDVALIDITY"])
        fstate = state.folders.setdefault(folder, FolderState())
        if fstate.uidvalidity != uidvalidity:
            if fstate.uidvalidity:
                log.warning("learn: %s UIDVALIDITY changed; relearning the folder", folder)
            fstate.uidvalidity, fstate.last_uid = uidvalidity, 0
        uids = sorted(
            u for u in client.search(["UID", f"{fstate.last_uid + 1}:*"]) if u > fstate.last_uid
        )
        for start in range(0, len(uids), self.cfg.batch_size):
            batch = uids[start : start + self.cfg.batch_size]
            fetched = client.fetch(batch, [b"BODY.PEEK[]"])
            done: list[int] = []
            for uid in batch:
                message = fetched.get(uid, {}).get(b"BODY[]")
                if message is None:
                    continue
                if self._one(state, message, klass):
                    done.append(uid)
                fstate.last_uid = max(fstate.last_uid, uid)
            if done and not self.dry_run:
                self._after(client, done)
            if not self.dry_run:
                state.save(self.cfg.state_file)
            self._show(folder)
        if self.cfg.after in ("move", "delete") and not self.dry_run:
            client.expunge()

    def _one(self, state: State, message: bytes, klass: str) -> bool:
        digest = hashlib.sha256(message).hexdigest()
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
            self.totals.failed += 1
            log.warning("learn: a message could not be taught: %s", err)
            if isinstance(err, SpamdError) and err.kind == "connect":
                raise LearnError(f"spamd unreachable: {err}") from err
            return False
        state.learned[digest] = klass
        if outcome == "already" and before == klass:
            self.totals.already += 1
        else:
            self.totals.learned[klass] = self.totals.learned.get(klass, 0) + 1
        return True

    def _after(self, client: Any, uids: Sequence[int]) -> None:
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
        f" skipped_folders={','.join(totals.skipped_folders) or '-'} seconds={seconds:.1f}"
    )
