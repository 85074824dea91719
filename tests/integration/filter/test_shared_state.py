"""mail-filter with a shared store on a real redis-server: notice throttles across hosts,
learn's lock, its fenced state, and two ``mail-filter learn`` runs against one Dovecot.

The session's redis-server (tests/integration/conftest.py: loopback, a
password, no persistence) is shared: tests keep apart by key_prefix; those
that pause a server or make it refuse writes get one of their own.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import re
import secrets
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from devstack.daemons import _toml
from devstack.dovecot import Dovecot
from devstack.ports import free_port
from devstack.redis import Redis
from devstack.tls import TlsFiles
from filter import shared
from filter.config import LearnConfig, NoticesConfig
from filter.learn import Learner, LearnError
from filter.notices import Notices
from filter.quarantine import Entry, new_id
from filter.shared import (
    LearnBusy,
    LearnLock,
    LockLost,
    SharedLearnStore,
    SharedNotices,
    close_learn_store,
    learn_key,
    open_learn_store,
)
from mailgate.config import StateConfig
from mailgate.state import SharedState, open_shared, sync_client
from tests.clock import FakeClock
from tests.filter.fakes import FakeForwarder, FakeMailbox, FlakyTeacher
from tests.integration.conftest import USERS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

MAIL_FILTER = str(Path(sys.executable).parent / "mail-filter")
_counter = iter(range(1_000_000))


@pytest.fixture
def own_redis() -> Iterator[Redis]:
    """A redis-server of the test's own, to stop or pause."""
    root = Path(tempfile.mkdtemp(prefix="ro", dir="/tmp"))
    with Redis(root / "redis") as server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """The hosts' shared secret: 32 random bytes in hex (raw ones may end in a newline,
    which load_secret does not count), mode 0600."""
    path = tmp_path / "state.key"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def state_for(server: Redis, secret: Path) -> StateConfig:
    """[state] for ``server`` (its password file, if any) under a key prefix of its own."""
    prefix = f"t{next(_counter)}-{os.getpid()}:"
    return StateConfig(url=server.url, secret_file=secret, key_prefix=prefix,
                       password_file=server.password_file)  # fmt: skip


@pytest.fixture
def cfg(redis_server: Redis, secret: Path) -> StateConfig:
    """[state] on the module's server."""
    return state_for(redis_server, secret)


# -- notices ----------------------------------------------------------------------

ADMINS = NoticesConfig(admins=("admin@example.com",), max_per_hour=3)


def virus() -> Entry:
    return Entry(new_id(), "virus", "EICAR", "a@b", ["c@d"], 0.0, 1)


async def connected(cfg: StateConfig) -> SharedState:
    """A daemon's store, once its background probe saw Redis answer."""
    up = asyncio.Event()
    state = open_shared(cfg, lambda ok: up.set() if ok else None)
    assert state is not None
    state.start()
    async with asyncio.timeout(10):
        await up.wait()
    return state


async def test_two_hosts_share_the_hour_of_notices(redis_server: Redis, cfg: StateConfig) -> None:
    """Ten virus notices alternating between two hosts: max_per_hour go out in all, and the
    next one after the hour tells of the seven every host held back."""
    a, b = await connected(cfg), await connected(cfg)
    fwd_a, fwd_b = FakeForwarder(), FakeForwarder()
    hosts = [Notices(ADMINS, fwd_a, "gw-a", shared=SharedNotices(a)),
             Notices(ADMINS, fwd_b, "gw-b", shared=SharedNotices(b))]  # fmt: skip
    for n in range(10):
        await hosts[n % 2].notify(virus(), b"")
    assert 3 == len(fwd_a.sent) + len(fwd_b.sent)
    # An hour later (Redis TIME cannot be moved): the hour's notices have left the window.
    redis_server.cli("DEL", cfg.key_prefix + "filter:notice:virus")
    await hosts[1].notify(virus(), b"")
    assert b"7 more virus notice(s)" in fwd_b.sent[-1].data
    assert "0" == redis_server.cli("EXISTS", cfg.key_prefix + "filter:notice:virus:held")
    await a.close()
    await b.close()


async def test_a_hung_redis_leaves_notices_to_each_hosts_throttle(
    own_redis: Redis, secret: Path
) -> None:
    """Redis not answering: notices still go out, each host within its own max_per_hour."""
    state = await connected(state_for(own_redis, secret))
    fwd = FakeForwarder()
    notices = Notices(ADMINS, fwd, "gw-a", shared=SharedNotices(state))
    own_redis.pause()
    try:
        async with asyncio.timeout(10):  # a hang guard; each try ends at state.timeout
            for _ in range(5):
                await notices.notify(virus(), b"")
        assert (3, False) == (len(fwd.sent), state.up)
    finally:
        own_redis.resume()
        await state.close()


# -- the learn lock -----------------------------------------------------------------


def test_one_host_learns_at_a_time_and_gives_the_lock_back(cfg: StateConfig) -> None:
    """A second lock is refused naming the holder; after release the next host gets it."""
    redis = sync_client(cfg, 2.0)
    key = learn_key(cfg.key_prefix, "lock")
    a, b = LearnLock(redis, key, "test"), LearnLock(redis, key, "test")
    a.acquire()
    with pytest.raises(LearnBusy) as busy:
        b.acquire()
    assert f"{socket.gethostname()} pid {os.getpid()}" == busy.value.holder
    a.release()
    assert redis.get(key) is None
    b.acquire()
    b.release()
    redis.close()


def test_extending_checks_the_lock_is_still_ours(cfg: StateConfig) -> None:
    """A lock taken over after it expired is neither extended nor released by its old owner."""
    redis = sync_client(cfg, 2.0)
    key = learn_key(cfg.key_prefix, "lock")
    lock = LearnLock(redis, key, "test")
    lock.acquire()
    redis.pexpire(key, 1000)  # as if most of the ttl had gone by
    assert lock.extend()
    assert 1000 < int(redis.pttl(key))
    redis.set(key, "gw2 pid 7 abc")
    assert not lock.extend()
    with pytest.raises(LockLost):
        lock.check()
    lock.release()
    assert b"gw2 pid 7 abc" == redis.get(key)
    redis.close()


def test_the_lock_is_extended_in_the_background_while_a_run_goes_on(cfg: StateConfig) -> None:
    """Started, the lock's thread extends it every third of its ttl; released, it stops."""
    redis = sync_client(cfg, 2.0)
    key = learn_key(cfg.key_prefix, "lock")
    lock = LearnLock(redis, key, "test", ttl=0.9)
    lock.acquire()
    redis.pexpire(key, 100_000)  # longer than any extension sets: one shows as a drop
    lock.start()
    deadline = time.monotonic() + 10
    while int(redis.pttl(key)) > 900:
        assert time.monotonic() < deadline, "the lock was never extended"
        time.sleep(0.02)
    lock.release()
    assert lock._thread is not None
    assert not lock._thread.is_alive()
    assert redis.get(key) is None
    redis.close()


def test_a_lock_not_extended_for_its_ttl_counts_as_lost(cfg: StateConfig) -> None:
    """Once a whole ttl went by since the last extension, this host stops trusting its lock."""
    redis = sync_client(cfg, 2.0)
    clock = FakeClock()
    lock = LearnLock(redis, learn_key(cfg.key_prefix, "lock"), "test", clock=clock)
    lock.acquire()
    lock.check()
    clock.advance(shared.LOCK_TTL)
    with pytest.raises(LockLost, match="not extended in time"):
        lock.check()
    lock.release()
    redis.close()


def test_the_blocking_client_reaches_redis_by_every_url_form(
    redis_server: Redis, secret: Path
) -> None:
    """mailgate.state.sync_client: redis:// with a password file, unix://, and rediss://
    verified against ca_file, as the asyncio client does."""
    base = state_for(redis_server, secret)
    for url, ca in ((redis_server.url, None), (redis_server.unix_url, None),
                    (redis_server.tls_url, redis_server.ca_file)):  # fmt: skip
        client = sync_client(dataclasses.replace(base, url=url, ca_file=ca), 2.0)
        assert client.ping(), url
        client.close()


# -- learn's state in Redis (fake mailbox) ------------------------------------------


class Folders(FakeMailbox):
    """A mailbox with a spam and a ham folder."""

    def __init__(self, spam: dict[int, bytes], ham: dict[int, bytes]) -> None:
        super().__init__(spam)
        self.folders = {"spam": spam, "ham": ham}

    def select_folder(self, folder: str, readonly: bool = True) -> dict[bytes, Any]:
        self.selected = self.folders.get(folder, {})
        return {b"UIDVALIDITY": 7}


class Recorder:
    """A teacher that records (message, class, forget) and can run a hook before each."""

    def __init__(self, before: Any = None) -> None:
        self.calls: list[tuple[bytes, str, bool]] = []
        self.before = before

    def __call__(self, message: bytes, klass: str, forget: bool) -> str:
        if self.before is not None:
            self.before(message)
        self.calls.append((message, klass, forget))
        return "learned"


def learn_with(
    state: StateConfig, box: FakeMailbox, teacher: Any, tmp_path: Path, **learn: Any
) -> Any:
    """One run with the shared store (lock taken, given back at the end)."""
    lcfg = dataclasses.replace(LearnConfig(), state_file=tmp_path / "state.json", **learn)
    store = open_learn_store(state)
    try:
        return Learner(lcfg, teacher, store=store).run(box)
    finally:
        close_learn_store(store)


def folders(server: Redis, cfg: StateConfig) -> dict[str, Any]:
    raw = server.cli("HGETALL", learn_key(cfg.key_prefix, "folders")).splitlines()
    return {k: json.loads(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}


def test_the_state_lives_in_redis_and_a_second_run_learns_nothing(
    redis_server: Redis, cfg: StateConfig, tmp_path: Path
) -> None:
    """A run keeps its state in Redis (not the state file) and gives the lock back; the next
    run, from any host, finds nothing new."""
    box = FakeMailbox({1: b"one", 2: b"two", 3: b"three"})
    first = FlakyTeacher(set())
    assert 3 == learn_with(cfg, box, first, tmp_path, batch_size=2).learned["spam"]
    assert {"uidvalidity": 7, "last_uid": 3, "retry": {}} == folders(redis_server, cfg)["spam"]
    assert not (tmp_path / "state.json").exists()
    assert "0" == redis_server.cli("EXISTS", learn_key(cfg.key_prefix, "lock"))
    second = FlakyTeacher(set())
    learn_with(cfg, box, second, tmp_path)
    assert [] == second.taught


def test_a_message_moved_to_the_other_folder_is_relearned(cfg: StateConfig, tmp_path: Path) -> None:
    """The shared digests know a message learned as ham: found in spam, it is forgotten first."""
    learn_with(cfg, Folders({}, {1: b"moved"}), Recorder(), tmp_path)
    teacher = Recorder()
    totals = learn_with(cfg, Folders({1: b"moved"}, {}), teacher, tmp_path)
    assert [(b"moved", "ham", True), (b"moved", "spam", False)] == teacher.calls
    assert 1 == totals.relearned


def test_a_run_whose_lock_was_taken_over_saves_nothing_more(
    redis_server: Redis, cfg: StateConfig, tmp_path: Path
) -> None:
    """The save is fenced in Redis: once another host holds the lock, this run's part is not
    written and the run stops; the part saved before stays, the other host's lock too."""
    key = learn_key(cfg.key_prefix, "lock")

    def take_over(message: bytes) -> None:
        if message == b"m3":  # this host's lock expired; another host took it
            redis_server.cli("SET", key, "gw2 pid 7 abc")

    box = FakeMailbox({n: f"m{n}".encode() for n in range(1, 6)})
    with pytest.raises(LockLost, match="not saved"):
        learn_with(cfg, box, Recorder(take_over), tmp_path, batch_size=2)
    assert 2 == folders(redis_server, cfg)["spam"]["last_uid"]
    assert "gw2 pid 7 abc" == redis_server.cli("GET", key)


def test_redis_refusing_writes_mid_run_stops_it_and_keeps_what_was_saved(
    own_redis: Redis, secret: Path, tmp_path: Path
) -> None:
    """Redis answering errors while a part is taught (out of memory): the run ends with an
    error at that part's save; the parts saved before stay, and the lock is given back."""
    state = state_for(own_redis, secret)

    def full(message: bytes) -> None:
        if message == b"m3":
            own_redis.cli("CONFIG", "SET", "maxmemory", "1")  # every write is refused

    box = FakeMailbox({n: f"m{n}".encode() for n in range(1, 6)})
    with pytest.raises(LearnError, match="saving failed"):
        learn_with(state, box, Recorder(full), tmp_path, batch_size=2)
    own_redis.cli("CONFIG", "SET", "maxmemory", "0")
    assert 2 == folders(own_redis, state)["spam"]["last_uid"]
    assert "0" == own_redis.cli("EXISTS", learn_key(state.key_prefix, "lock"))


def test_redis_hanging_mid_run_ends_it_with_an_error(
    own_redis: Redis, secret: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis not answering while a part is taught: the save waits PATIENCE, then the run ends
    with an error; no later part is read."""
    monkeypatch.setattr(shared, "PATIENCE", 0.3)  # each Redis wait of the run
    state = state_for(own_redis, secret)

    def hang(message: bytes) -> None:
        if message == b"m3":
            own_redis.pause()

    box = FakeMailbox({n: f"m{n}".encode() for n in range(1, 6)})
    try:
        with pytest.raises(LearnError, match="saving failed"):
            learn_with(state, box, Recorder(hang), tmp_path, batch_size=2)
    finally:
        own_redis.resume()
    assert [1, 2, 3, 4] == box.fetched
    # The save Redis read before it hung runs when it wakes: fenced by this run's token
    # (it would be refused had the lock expired meanwhile) and recording only messages
    # that were taught, so either state is right.
    assert folders(own_redis, state)["spam"]["last_uid"] in (2, 4)


def test_a_dry_run_reads_the_shared_state_without_the_lock(
    redis_server: Redis, cfg: StateConfig, tmp_path: Path
) -> None:
    """--dry-run with a shared store needs no lock (another host may be learning) and writes
    nothing."""
    learn_with(cfg, FakeMailbox({1: b"one"}), Recorder(), tmp_path)
    redis_server.cli("SET", learn_key(cfg.key_prefix, "lock"), "gw2 pid 7 abc")
    store = open_learn_store(cfg, dry_run=True)
    lcfg = dataclasses.replace(LearnConfig(), state_file=tmp_path / "state.json")
    try:
        totals = Learner(lcfg, Recorder(), store=store, dry_run=True).run(
            FakeMailbox({1: b"one", 2: b"two"})
        )
    finally:
        close_learn_store(store)
    assert 1 == totals.learned["spam"]
    assert 1 == folders(redis_server, cfg)["spam"]["last_uid"]
    assert "gw2 pid 7 abc" == redis_server.cli("GET", learn_key(cfg.key_prefix, "lock"))


def test_only_the_newest_digests_are_kept(
    redis_server: Redis, cfg: StateConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_DIGESTS the oldest learned messages are forgotten, as in the state file."""
    monkeypatch.setattr(shared, "MAX_DIGESTS", 2)
    box = FakeMailbox({1: b"one", 2: b"two", 3: b"three"})
    learn_with(cfg, box, Recorder(), tmp_path, batch_size=1)
    store: SharedLearnStore = open_learn_store(cfg, dry_run=True)
    try:
        kept = sorted(redis_server.cli("HKEYS", learn_key(cfg.key_prefix, "learned")).split())
        assert sorted(store.digest(m) for m in (b"two", b"three")) == kept
    finally:
        close_learn_store(store)


# -- the command ------------------------------------------------------------------------


def learn_config(path: Path, state: StateConfig, learn: dict[str, object], spamd: str) -> Path:
    settings: dict[str, dict[str, object]] = {
        "spamd": {"address": spamd},
        "learn": learn,
        "state": {"url": state.url, "secret_file": str(state.secret_file),
                  "key_prefix": state.key_prefix,
                  "password_file": str(state.password_file or "")},
    }  # fmt: skip
    path.write_text(_toml(settings, ("spamd", "learn", "state")))
    return path


def run_learn(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAIL_FILTER, "learn", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def nowhere(tmp_path: Path) -> dict[str, object]:
    """[learn] for an IMAP server nobody runs: a run that got past the lock would fail on it."""
    return {"imap_url": f"imap+plaintext://127.0.0.1:{free_port()}", "username": "admin",
            "password": "pw", "state_file": str(tmp_path / "state.json")}  # fmt: skip


def test_learn_exits_75_when_redis_is_down_at_the_start(secret: Path, tmp_path: Path) -> None:
    """No Redis: exit 75 (EX_TEMPFAIL) saying why, before any IMAP login (no lock, no run)."""
    down = StateConfig(url=f"redis://127.0.0.1:{free_port()}/0", secret_file=secret)
    run = run_learn(learn_config(tmp_path / "f.toml", down, nowhere(tmp_path), "127.0.0.1:1"))
    assert 75 == run.returncode, run.stderr
    assert "not learning without the shared lock" in run.stderr
    assert "IMAP" not in run.stderr


def test_learn_exits_0_while_another_host_learns(
    redis_server: Redis, cfg: StateConfig, tmp_path: Path
) -> None:
    """The lock held elsewhere: exit 0 naming the holder, nothing else done."""
    key = learn_key(cfg.key_prefix, "lock")
    redis_server.cli("SET", key, "gw2 pid 4242 0123abcd", "PX", "30000")
    run = run_learn(learn_config(tmp_path / "f.toml", cfg, nowhere(tmp_path), "127.0.0.1:1"))
    assert 0 == run.returncode, run.stderr
    assert "another gateway host is learning (gw2 pid 4242)" in run.stderr
    assert "IMAP" not in run.stderr


class CountingSpamd:
    """A stand-in for spamd that answers TELL and counts it: (Message-ID, class, Set/Remove).

    Bayes itself would hide a message taught twice (it counts it once); this
    does not.  The first TELL waits for ``gate`` so that the learning host is
    still at it while the other one tries the lock.
    """

    def __init__(self) -> None:
        self.tells: list[tuple[str, str, str]] = []
        self.gate = threading.Event()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                head, _, body = head.partition(b"\r\n\r\n")
                fields = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
                )
                while len(body) < int(fields["Content-length"]):
                    body += self.request.recv(65536)
                outer.gate.wait(30)
                found = re.search(rb"^Message-ID: (\S+)", body, re.M | re.I)
                how = "Set" if "Set" in fields else "Remove"
                outer.tells.append((found.group(1).decode() if found else "?",
                                    fields["Message-class"], how))  # fmt: skip
                done = "DidSet" if how == "Set" else "DidRemove"
                self.request.sendall(f"SPAMD/1.1 0 EX_OK\r\n{done}: local\r\n\r\n".encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> CountingSpamd:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def message(kind: str, n: int) -> bytes:
    return (
        f"From: someone{n}@{kind}.test\r\nTo: user@example.com\r\nSubject: {kind} {n}\r\n"
        f"Message-ID: <race-{kind}-{n}@test>\r\n\r\n{kind} words {n}\r\n"
    ).encode()


def wait_for_first(procs: Sequence[subprocess.Popen[str]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "neither learn run ended"
        time.sleep(0.02)


def test_two_hosts_learning_at_the_same_moment_teach_each_message_once(
    dovecot: Dovecot, tls: TlsFiles, redis_server: Redis, cfg: StateConfig, tmp_path: Path
) -> None:
    """Issue 16: two `mail-filter learn` started together on two hosts (two configs, one
    Redis, one admin mailbox): one learns, the other exits 0 saying so; every message is
    taught once, the lock is given back, and a later run finds nothing new."""
    admin = "backslash@example.com"  # a session user no other test reads mail of
    (tmp_path / "pw").write_text(USERS[admin] + "\n")
    spam = [message("spam", n) for n in range(4)]
    ham = [message("ham", n) for n in range(3)]
    for folder, batch in (("race-spam", spam), ("race-ham", ham)):
        for body in batch:
            dovecot.append_message(admin, folder, body)
    with CountingSpamd() as spamd:
        configs = []
        for host in ("gw-a", "gw-b"):
            learn = {
                "imap_url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert),
                "username": admin, "password_file": str(tmp_path / "pw"),
                "spam_folder": "race-spam", "ham_folder": "race-ham", "batch_size": 2,
                "state_file": str(tmp_path / f"{host}-state.json"),
            }  # fmt: skip
            configs.append(learn_config(tmp_path / f"{host}.toml", cfg, learn, spamd.address))
        procs = [
            subprocess.Popen([MAIL_FILTER, "learn", "--config", str(c)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c in configs
        ]  # fmt: skip
        wait_for_first(procs)
        spamd.gate.set()
        errs = [p.communicate(timeout=60)[1] for p in procs]
        runs = [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]
        assert [0, 0] == [code for code, _ in runs], runs
        busy = [err for _, err in runs if "another gateway host is learning" in err]
        learned = [err for _, err in runs if "learn: spam=4 ham=3" in err]
        assert (1, 1) == (len(busy), len(learned)), runs
        assert redis_server.password is not None
        assert not [err for _, err in runs if redis_server.password in err]
        expected = [f"<race-spam-{n}@test>" for n in range(4)]
        expected += [f"<race-ham-{n}@test>" for n in range(3)]
        assert collections.Counter(expected) == collections.Counter(t[0] for t in spamd.tells)
        assert "0" == redis_server.cli("EXISTS", learn_key(cfg.key_prefix, "lock"))
        again = run_learn(configs[1])
        assert 0 == again.returncode, again.stderr
        assert "learn: spam=0 ham=0" in again.stderr
        assert 7 == len(spamd.tells)
    assert [] == list(tmp_path.glob("*-state.json"))
