"""mail-filter learn, bounded: a deadline per run, parts that fit max_response, hostile servers."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

import filter as filter_package
from filter import learn
from filter.config import LearnConfig
from filter.learn import Learner, LearnError, State, run_deadline
from filter.spamd import Response, SpamdClient
from mailgate.bounds import BoundExceeded
from tests.fakes import FolderImap, ScriptedImap
from tests.filter.fakes import FakeMailbox, FlakyTeacher

MiB = 1024 * 1024
PASSWORD = "hunter2 sëcret"

Misbehave = Callable[[bytes], Iterable[bytes] | None]


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowTeacher(FlakyTeacher):
    """Takes ``seconds`` of the clock per message; then fails for those in ``bad``."""

    def __init__(self, clock: Clock, seconds: float, bad: set[bytes] | None = None) -> None:
        super().__init__(bad or set())
        self.clock = clock
        self.seconds = seconds

    def __call__(self, message: bytes, klass: str, forget: bool) -> str:
        self.clock.now += self.seconds
        return super().__call__(message, klass, forget)


@pytest.fixture
def cfg(tmp_path: Path) -> LearnConfig:
    """The defaults, the state file in the test's directory, the smallest max_response."""
    return dataclasses.replace(
        LearnConfig(), state_file=tmp_path / "state.json", max_response=MiB, password=PASSWORD
    )


def sized(n: int, size: int) -> bytes:
    """Message ``n`` of exactly ``size`` bytes."""
    head = b"Subject: %d\r\n\r\n" % n
    return head + b"x" * (size - len(head))


# -- parts that fit max_response ------------------------------------------------


def test_batch_is_fetched_in_parts_that_fit(cfg: LearnConfig) -> None:
    """Bodies that would pass max_response together are fetched in parts, in order."""
    box = FakeMailbox({n: sized(n, 400_000) for n in range(1, 6)})
    totals = Learner(cfg, FlakyTeacher(set())).run(box)
    assert [[1, 2], [3, 4], [5]] == box.parts
    assert ({"spam": 5}, 0) == (totals.learned, totals.too_big)


def test_message_over_max_response_is_skipped_for_good(
    cfg: LearnConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A message no answer under max_response can carry is never fetched, and not retried."""
    box = FakeMailbox({1: b"small one", 2: sized(2, MiB), 3: b"small three"})
    teacher = FlakyTeacher(set())
    with caplog.at_level(logging.WARNING):
        totals = Learner(cfg, teacher).run(box)
    assert ([1, 3], 1) == (box.fetched, totals.too_big)
    assert "spam UID 2 is 1048576 bytes, more than learn.max_response" in caplog.text
    folder = State.load(cfg.state_file).folders["spam"]
    assert (3, {}) == (folder.last_uid, folder.retry)
    box.fetched.clear()
    assert 0 == Learner(cfg, teacher).run(box).too_big
    assert [] == box.fetched
    assert "too_big=1" in learn.summary(totals, 1.0)


def test_run_stopped_mid_batch_keeps_exactly_the_parts_before(cfg: LearnConfig) -> None:
    """The state moves past a skipped message only once the part before it is saved."""
    box = FakeMailbox({1: sized(1, 600_000), 2: sized(2, 600_000), 3: sized(3, 2 * MiB)})
    box.fail_on[2] = BoundExceeded("deadline", "learn.run_timeout (1 s) passed")
    with pytest.raises(LearnError, match=r"deadline: learn\.run_timeout"):
        Learner(cfg, FlakyTeacher(set())).run(box)
    assert [[1], [2]] == box.parts
    assert 1 == State.load(cfg.state_file).folders["spam"].last_uid


# -- the run deadline, on a hand-turned clock ------------------------------------


def test_run_stops_at_the_deadline_and_keeps_what_it_learned(cfg: LearnConfig) -> None:
    """Past run_timeout the run stops before the next part; the next run goes on from there."""
    cfg = dataclasses.replace(cfg, run_timeout=2.5, batch_size=1)
    clock = Clock()
    box = FakeMailbox({n: b"message %d" % n for n in range(1, 6)})
    teacher = SlowTeacher(clock, 1.0)
    with pytest.raises(LearnError) as caught:
        Learner(cfg, teacher, deadline=run_deadline(cfg, clock)).run(box)
    assert (
        "deadline: learn.run_timeout (2.5 s) passed before spam UID 4;"
        " the rest waits for the next run"
    ) == str(caught.value)
    assert 3 == State.load(cfg.state_file).folders["spam"].last_uid
    Learner(cfg, teacher, deadline=run_deadline(cfg, clock)).run(box)
    assert [b"message %d" % n for n in range(1, 6)] == teacher.taught


def test_teaching_cut_short_by_the_deadline_is_not_held_against_the_message(
    cfg: LearnConfig,
) -> None:
    """A teach that failed because the run's time ran out is no try: the next run teaches it."""
    cfg = dataclasses.replace(cfg, run_timeout=2.0)
    clock = Clock()
    box = FakeMailbox({1: b"first", 2: b"slow"})
    with pytest.raises(LearnError, match="passed while teaching"):
        Learner(cfg, SlowTeacher(clock, 1.5, {b"slow"}), deadline=run_deadline(cfg, clock)).run(box)
    assert {} == State.load(cfg.state_file).folders  # the part was not saved: nothing counted
    teacher = FlakyTeacher(set())
    Learner(cfg, teacher).run(box)
    assert [b"first", b"slow"] == teacher.taught


def test_teachers_wait_no_longer_than_the_time_left(
    cfg: LearnConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spamd's TELL and sa-learn get their timeout, or the time left if that is shorter."""
    clock = Clock()
    deadline = run_deadline(dataclasses.replace(cfg, run_timeout=100.0), clock)
    seen: list[float] = []

    async def exchange(self: SpamdClient, request: bytes) -> Response:
        seen.append(self.timeout)
        return Response(0, "EX_OK", {"didset": "local"}, b"")

    def run(
        *args: object, timeout: float, text: bool = False, **kwargs: object
    ) -> subprocess.CompletedProcess[str | bytes]:
        seen.append(timeout)
        out = "Learned tokens from 1 message(s)"
        return subprocess.CompletedProcess([], 0, out if text else out.encode(), "")

    monkeypatch.setattr(SpamdClient, "exchange", exchange)
    monkeypatch.setattr(subprocess, "run", run)
    tell = learn.spamd_teacher(cfg, "127.0.0.1:783", deadline=deadline)
    local = learn.sa_learn_teacher(cfg, deadline)
    batch = learn.sa_learn_batch_teacher(cfg, deadline)
    tell(b"m", "spam", False)
    clock.now += 90
    tell(b"m", "spam", False)
    local(b"m", "spam", False)
    batch([b"m", b"n"], "spam")
    assert [60.0, 10.0, 10.0, 10.0] == seen


# -- hostile IMAP servers ----------------------------------------------------------

HEAD = b"* 3 FETCH (UID 3 BODY[] {5000000000}\r\n"


def endless_line() -> Iterator[bytes]:
    """A response line that never ends."""
    yield b"* 3 FETCH (UID 3 FLAGS ("
    while True:
        yield b"x" * 65536


def trickle() -> Iterator[bytes]:
    """A proper answer, a byte every 0.2 s (each well inside the response timeout)."""
    for byte in itertools.cycle(b"* 3 FETCH (UID 3 FLAGS ())\r\n"):
        time.sleep(0.2)
        yield bytes([byte])


def gigantic_literal() -> Iterator[bytes]:
    """A literal announced at 5 GB, and bytes for it for as long as anyone reads."""
    yield HEAD
    while True:
        yield b"x" * 65536


HOSTILE: dict[str, tuple[Callable[[], Iterable[bytes]], str]] = {
    # max_response is at least 1 MiB, so imaplib's line limit comes first.
    "endless line": (endless_line, "size: a response line longer than 1000000 bytes"),
    "trickle": (trickle, "deadline: learn.run_timeout (1.5 s) passed while reading"),
    "gigantic literal": (gigantic_literal, "size: a literal of 5000000000 bytes"),
}


def on_body_fetch(number: int, hostile: Callable[[], Iterable[bytes]]) -> Misbehave:
    """Misbehave from the ``number``-th body fetch on (1 is the first)."""
    seen = itertools.count(1)

    def misbehave(line: bytes) -> Iterable[bytes] | None:
        if b"BODY.PEEK[]" in line and next(seen) >= number:
            return hostile()
        return None

    return misbehave


@pytest.fixture
def hostile_server() -> Iterator[Callable[[Misbehave], ScriptedImap]]:
    """Starts a FolderImap server with four spam messages and a misbehaviour; closes it after."""
    servers: list[ScriptedImap] = []

    def start(misbehave: Misbehave) -> ScriptedImap:
        folders = {"spam": {n: b"Subject: %d\r\n\r\nspam %d\r\n" % (n, n) for n in range(1, 5)}}
        server = ScriptedImap(FolderImap.GREETING, FolderImap(folders, misbehave))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_server_ends_the_run_in_time_and_keeps_the_state(
    cfg: LearnConfig,
    hostile_server: Callable[[Misbehave], ScriptedImap],
    case: str,
) -> None:
    """Endless, trickling or gigantic: the run ends with LearnError in time, in bounded memory."""
    behaviour, error = HOSTILE[case]
    server = hostile_server(on_body_fetch(2, behaviour))
    cfg = dataclasses.replace(
        cfg, imap_url=f"imap+plaintext://127.0.0.1:{server.port}", username="admin",
        batch_size=2, run_timeout=1.5, timeout=10.0,
    )  # fmt: skip
    teacher = FlakyTeacher(set())
    tracemalloc.start()
    try:
        begin = time.monotonic()
        learner = Learner(cfg, teacher)
        box = learn.connect(cfg, learner.deadline)
        try:
            with pytest.raises(LearnError) as caught:
                learner.run(box)
        finally:
            box.logout()
        seconds = time.monotonic() - begin
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"IMAP {cfg.imap_url}: {error}" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert seconds < cfg.run_timeout + 0.5
    assert peak < 3 * cfg.max_response
    assert [b"Subject: 1\r\n\r\nspam 1\r\n", b"Subject: 2\r\n\r\nspam 2\r\n"] == teacher.taught
    state = State.load(cfg.state_file)
    assert 2 == state.folders["spam"].last_uid
    assert {hashlib.sha256(m).hexdigest() for m in teacher.taught} == set(state.learned)


@pytest.mark.parametrize("case", HOSTILE)
def test_command_exits_1_with_one_clear_line(
    tmp_path: Path,
    hostile_server: Callable[[Misbehave], ScriptedImap],
    case: str,
) -> None:
    """mail-filter learn: exit 1, one error line, no traceback, no password, state untouched."""
    behaviour, error = HOSTILE[case]
    server = hostile_server(on_body_fetch(1, behaviour))
    state = tmp_path / "state.json"
    state.write_text('{"folders": {"spam": {"uidvalidity": 7, "last_uid": 0}}, "learned": {}}')
    before = state.read_bytes()
    config = tmp_path / "filter.toml"
    config.write_text(
        "[learn]\n"
        f'imap_url = "imap+plaintext://127.0.0.1:{server.port}"\n'
        f'username = "admin"\npassword = "{PASSWORD}"\nstate_file = "{state}"\n'
        "run_timeout = 1.5\ntimeout = 10.0\nmax_response = 1048576\n"
    )
    src = str(Path(filter_package.__file__).resolve().parents[1])  # this tree's src/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    begin = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "filter.cli", "learn", "--config", str(config)],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert 1 == run.returncode
    lines = run.stderr.splitlines()
    assert 1 == len(lines), run.stderr
    assert "learn failed: IMAP imap+plaintext://" in lines[0]
    assert error in lines[0]
    assert PASSWORD not in run.stderr
    assert before == state.read_bytes()
    assert time.monotonic() - begin < 10  # 1.5 s of run, plus starting Python


def test_a_greeting_trickled_a_byte_at_a_time_ends_at_the_deadline(cfg: LearnConfig) -> None:
    """Before the login imaplib reads by itself; a greeting sent one byte every 0.2 s (each
    read well inside its timeout) still ends the run at run_timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            for byte in itertools.cycle(b"* OK still greeting "):
                if stop.wait(0.2):
                    return
                conn.sendall(bytes([byte]))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    cfg = dataclasses.replace(
        cfg, imap_url=f"imap+plaintext://127.0.0.1:{listener.getsockname()[1]}",
        username="admin", run_timeout=1.0, timeout=10.0,
    )  # fmt: skip
    begin = time.monotonic()
    try:
        with pytest.raises(LearnError) as caught:
            learn.connect(cfg)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - begin < 1.5
    assert "learn.run_timeout (1 s) passed before the login" in str(caught.value)
