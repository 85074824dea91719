"""mail-filter learn without a server: which messages a run tries, and when it gives up."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from filter.config import LearnConfig
from filter.learn import MAX_TRIES, Learner, State, spamd_teacher
from filter.spamd import Response, SpamdClient, SpamdError
from tests.filter.fakes import FakeMailbox, FlakyTeacher


def run(cfg: LearnConfig, box: FakeMailbox, teacher: FlakyTeacher) -> int:
    box.fetched.clear()
    return Learner(cfg, teacher).run(box).failed


@pytest.fixture
def cfg(tmp_path: Path) -> LearnConfig:
    """The defaults, with the state file in the test's directory."""
    return dataclasses.replace(LearnConfig(), state_file=tmp_path / "state.json")


def test_failed_message_is_retried_next_run(cfg: LearnConfig) -> None:
    """A message that failed (spamd timed out) is tried again and learned in the next run."""
    box = FakeMailbox({1: b"one", 2: b"two", 3: b"three"})
    teacher = FlakyTeacher({b"two"})
    assert 1 == run(cfg, box, teacher)
    assert {"2": 1} == State.load(cfg.state_file).folders["spam"].retry
    teacher.bad.clear()
    assert 0 == run(cfg, box, teacher)
    assert [b"one", b"three", b"two"] == teacher.taught
    assert [2] == box.fetched
    assert {} == State.load(cfg.state_file).folders["spam"].retry


def test_message_is_given_up_after_max_tries(cfg: LearnConfig) -> None:
    """A message failing in MAX_TRIES runs is not tried again; the others go on."""
    box = FakeMailbox({1: b"bad"})
    teacher = FlakyTeacher({b"bad"})
    for _ in range(MAX_TRIES):
        run(cfg, box, teacher)
    assert {} == State.load(cfg.state_file).folders["spam"].retry
    box.messages[2] = b"good"
    assert 0 == run(cfg, box, teacher)
    assert [2] == box.fetched
    assert [b"good"] == teacher.taught


def test_expunged_message_leaves_the_retry_list(cfg: LearnConfig) -> None:
    """A message waiting for a retry that was deleted meanwhile is forgotten."""
    box = FakeMailbox({1: b"bad"})
    run(cfg, box, FlakyTeacher({b"bad"}))
    del box.messages[1]
    run(cfg, box, FlakyTeacher(set()))
    assert {} == State.load(cfg.state_file).folders["spam"].retry


def test_old_state_file_without_retries_loads(cfg: LearnConfig) -> None:
    """A state file written before retries existed still loads."""
    cfg.state_file.write_text('{"folders": {"spam": {"uidvalidity": 7, "last_uid": 3}}}')
    assert 3 == State.load(cfg.state_file).folders["spam"].last_uid


class BatchTeacher:
    """Teaches a batch at once (as sa-learn on a folder does); can be made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[bytes], str]] = []
        self.down = False
        self.known: set[bytes] = set()

    def __call__(self, messages: Sequence[bytes], klass: str) -> int:
        if self.down:
            raise SpamdError("protocol", "sa-learn failed (exit 2): lock timeout")
        self.calls.append((list(messages), klass))
        new = [m for m in messages if m not in self.known]
        self.known.update(messages)
        return len(new)


def test_batch_method_teaches_a_batch_in_one_call(cfg: LearnConfig) -> None:
    """With a batch teacher, each fetched batch is one call; counts come from its answer."""
    box = FakeMailbox({uid: b"m%d" % uid for uid in range(1, 6)})
    single, many = FlakyTeacher(set()), BatchTeacher()
    cfg = dataclasses.replace(cfg, batch_size=2)
    totals = Learner(cfg, single, teach_many=many).run(box)
    assert [2, 2, 1] == [len(messages) for messages, _ in many.calls]
    assert ({"spam": 5}, 0, []) == (totals.learned, totals.failed, single.taught)


def test_failed_batch_is_retried_next_run_not_one_by_one(cfg: LearnConfig) -> None:
    """A failed batch is not retried message by message; next run teaches it again."""
    box = FakeMailbox({1: b"a", 2: b"b"})
    single, many = FlakyTeacher(set()), BatchTeacher()
    many.down = True
    assert 2 == Learner(cfg, single, teach_many=many).run(box).failed
    assert [] == single.taught
    assert {"1": 1, "2": 1} == State.load(cfg.state_file).folders["spam"].retry
    many.down = False
    assert 0 == Learner(cfg, single, teach_many=many).run(box).failed
    assert [([b"a", b"b"], "spam")] == many.calls


def test_class_change_goes_through_forget_then_learn(cfg: LearnConfig) -> None:
    """A message learned as ham that shows up in spam is forgotten and relearned alone."""
    box = FakeMailbox({1: b"moved"})
    state = State()
    state.learned[hashlib.sha256(b"moved").hexdigest()] = "ham"
    state.save(cfg.state_file)
    single, many = FlakyTeacher(set()), BatchTeacher()
    totals = Learner(cfg, single, teach_many=many).run(box)
    assert ([], [b"moved", b"moved"], 1) == (many.calls, single.taught, totals.relearned)


def test_tell_names_the_spamd_user(cfg: LearnConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """TELL carries [spamd] user, so it trains the Bayes database SYMBOLS scores with."""
    sent: list[bytes] = []

    async def exchange(self: SpamdClient, request: bytes) -> Response:
        sent.append(request)
        return Response(0, "EX_OK", {"didset": "local"}, b"")

    monkeypatch.setattr(SpamdClient, "exchange", exchange)
    teach = spamd_teacher(cfg, "127.0.0.1:783", "filter")
    assert "learned" == teach(b"Subject: x\r\n\r\nx\r\n", "spam", False)
    assert b"\r\nUser: filter\r\n" in sent[0]
