"""The filter with a shared store, against fakes: who decides a notice, when a learn run
stops, what the daemon keeps across SIGHUP (real Redis: tests/integration/filter)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Collection
from pathlib import Path

import pytest

from filter import app
from filter.config import Config, LearnConfig, NoticesConfig
from filter.learn import FileStore, Learner, LearnError, State
from filter.metrics import Metrics
from filter.notices import Notices
from filter.quarantine import Entry, new_id
from filter.shared import LockLost
from mailgate.config import StateConfig
from mailgate.lifecycle import ConfigSource
from tests.clock import FakeClock
from tests.filter.fakes import FakeForwarder, FakeMailbox, FlakyTeacher

ADMINS = NoticesConfig(admins=("admin@example.com",), max_per_hour=3)


class FakeThrottle:
    """The shared throttle: answers from ``answers`` in turn; ``None`` plays Redis down."""

    def __init__(self, *answers: tuple[bool, int] | None) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    async def admit(self, category: str, per_hour: int) -> tuple[bool, int] | None:
        self.asked.append((category, per_hour))
        return self.answers.pop(0) if self.answers else None


def virus() -> Entry:
    return Entry(new_id(), "virus", "EICAR", "a@b", ["c@d"], 0.0, 1)


async def test_the_shared_throttle_decides_when_it_answers() -> None:
    """With an answer from the store, every host's hour decides, and its held-back count is told."""
    fwd = FakeForwarder()
    shared = FakeThrottle((True, 0), (False, 0), (True, 5), (True, 0), (True, 0))
    notices = Notices(ADMINS, fwd, "gw", FakeClock(), shared=shared)
    for _ in range(5):
        await notices.notify(virus(), b"")
    assert [("virus", 3)] * 5 == shared.asked
    assert 4 == len(fwd.sent)  # more than this host's own limit of 3: the store said yes
    assert b"5 more virus notice(s)" in fwd.sent[1].data


async def test_without_an_answer_this_hosts_throttle_decides() -> None:
    """Redis down (no answer): max_per_hour per category from this host's memory, as with one."""
    fwd = FakeForwarder()
    clock = FakeClock()
    notices = Notices(ADMINS, fwd, "gw", clock, shared=FakeThrottle())
    for _ in range(10):
        await notices.notify(virus(), b"")
    assert 3 == len(fwd.sent)
    clock.advance(3601)
    await notices.notify(virus(), b"")
    assert b"7 more virus notice(s)" in fwd.sent[-1].data


async def test_an_outage_does_not_give_a_host_a_fresh_hour() -> None:
    """Notices sent while shared count against this host's own hour when Redis goes away,
    and those held back meanwhile are told once the store answers again."""
    fwd = FakeForwarder()
    clock = FakeClock()
    shared = FakeThrottle((True, 0), (True, 0), (True, 0))
    notices = Notices(ADMINS, fwd, "gw", clock, shared=shared)
    for _ in range(5):  # three allowed by the store, then it is down
        await notices.notify(virus(), b"")
    assert 3 == len(fwd.sent)
    shared.answers.append((True, 1))  # back: one more was held back on another host
    await notices.notify(virus(), b"")
    assert b"3 more virus notice(s)" in fwd.sent[-1].data


class FakeStore:
    """A LearnStore in memory that can lose its lock: check() and save() then refuse."""

    def __init__(self) -> None:
        self.inner = FileStore(Path("/nonexistent"))
        self.lost = False
        self.saved: list[State] = []

    def load(self) -> State:
        return State()

    def digest(self, message: bytes) -> str:
        return self.inner.digest(message)

    def recall(self, state: State, digests: Collection[str]) -> None:
        pass

    def check(self) -> None:
        if self.lost:
            raise LockLost("learn lock lost (taken over)")

    def save(self, state: State) -> None:
        self.check()
        self.saved.append(copy.deepcopy(state))
        state.fresh.clear()


def test_a_lost_lock_stops_the_run_before_its_next_teach_or_save() -> None:
    """Lost while a message is taught: nothing more is taught, that part is not saved, no later
    part is read; what was saved before stays."""
    store = FakeStore()
    box = FakeMailbox({n: f"message {n}".encode() for n in range(1, 7)})

    class Teacher(FlakyTeacher):
        def __call__(self, message: bytes, klass: str, forget: bool) -> str:
            if message == b"message 3":
                store.lost = True  # the lock expired and another host took it
            return super().__call__(message, klass, forget)

    teacher = Teacher(set())
    cfg = dataclasses.replace(LearnConfig(), batch_size=2)
    with pytest.raises(LearnError, match="lock lost"):
        Learner(cfg, teacher, store=store).run(box)
    assert [b"message 1", b"message 2", b"message 3"] == teacher.taught
    assert [2] == [s.folders["spam"].last_uid for s in store.saved]
    assert [1, 2, 3, 4] == box.fetched  # nothing read after the loss was seen


def test_the_local_state_file_stays_the_default(tmp_path: Path) -> None:
    """Without a store given, a run keeps its state in learn.state_file as before."""
    cfg = dataclasses.replace(LearnConfig(), state_file=tmp_path / "state.json")
    Learner(cfg, FlakyTeacher(set())).run(FakeMailbox({1: b"one"}))
    assert 1 == State.load(cfg.state_file).folders["spam"].last_uid


# -- the daemon ------------------------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A good shared secret (32 random-looking bytes, mode 0600)."""
    path = tmp_path / "state.key"
    path.write_bytes(bytes(range(100, 132)))
    path.chmod(0o600)
    return path


def _with_state(url: str, secret: Path) -> Config:
    # Nothing listens on ports 1 and 2: the store never comes up, and is never needed here.
    return dataclasses.replace(Config(), state=StateConfig(url=url, secret_file=secret))


async def test_the_daemon_keeps_its_store_across_a_reload_unless_state_changed(
    secret: Path,
) -> None:
    """SIGHUP rebuilds the pipeline on the same store; another [state] opens another and
    closes the old one once notices using it are done."""
    cfg = _with_state("redis://127.0.0.1:1/0", secret)
    reread = [cfg]  # what the next SIGHUP reads
    daemon = app.Daemon(cfg, ConfigSource(lambda path, flags: reread[0], None, {}))
    first = daemon.state
    assert first is not None
    reread[0] = dataclasses.replace(cfg, notices=ADMINS)
    daemon.reload()
    assert first is daemon.state
    reread[0] = _with_state("redis://127.0.0.1:2/0", secret)
    daemon.reload()
    assert daemon.state is not None
    assert first is not daemon.state
    await asyncio.gather(*daemon._closing)
    assert first._closed
    await daemon.state.close()


def test_the_state_gauge_exists_only_with_a_shared_store(secret: Path) -> None:
    """mailfilter_state_up is exported (0 until Redis answers) only when [state] is set."""
    metrics = Metrics()
    assert app.open_state(Config(), metrics) is None
    assert metrics.registry.get_sample_value("mailfilter_state_up") is None
    state = app.open_state(_with_state("redis://127.0.0.1:1/0", secret), metrics)
    assert state is not None
    assert 0.0 == metrics.registry.get_sample_value("mailfilter_state_up")
    asyncio.run(state.close())
