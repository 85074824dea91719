"""The run deadline and the byte allowance per answer, on a hand-turned clock."""

from __future__ import annotations

import pytest

from mailgate.bounds import Allowance, BoundExceeded, Deadline


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_down_and_caps_waits() -> None:
    """Time left shrinks with the clock; a wait is cut to it, and nothing is left after."""
    clock = Clock()
    deadline = Deadline(10, "learn.run_timeout", clock)
    assert 5.0 == deadline.cap(5.0)
    clock.now += 7
    assert (3.0, 3.0, False) == (deadline.left(), deadline.cap(5.0), deadline.expired)
    clock.now += 3
    assert (0.0, 0.0, True) == (deadline.left(), deadline.cap(5.0), deadline.expired)


def test_deadline_error_names_the_setting() -> None:
    """The error says which setting ran out, how long it was, and what was going on."""
    err = Deadline(2, "learn.run_timeout", Clock()).error("while reading a literal")
    assert ("deadline", "learn.run_timeout (2 s) passed while reading a literal") == (
        err.kind,
        err.detail,
    )


def test_allowance_takes_up_to_its_limit_exactly() -> None:
    """An answer may bring exactly the limit; one byte more is refused, unread."""
    allowance = Allowance(10, "learn.max_response")
    allowance.take(4, "a line")
    allowance.take(6, "a literal")
    with pytest.raises(BoundExceeded) as caught:
        allowance.take(1, "a response line")
    assert "size" == caught.value.kind
    assert "past learn.max_response (10 bytes)" in caught.value.detail
    assert 0 == allowance.left


def test_allowance_is_renewed_for_each_request() -> None:
    """A new request gets the whole limit again, whatever the last answer used."""
    allowance = Allowance(10, "learn.max_response")
    allowance.take(10, "a literal")
    allowance.renew()
    allowance.take(10, "a literal")


def test_announced_size_is_refused_whole() -> None:
    """A size over what is left is refused without counting any of it."""
    allowance = Allowance(10, "learn.max_response")
    with pytest.raises(BoundExceeded, match="a literal of 5000000000 bytes"):
        allowance.take(5_000_000_000, "a literal of 5000000000 bytes")
    assert 10 == allowance.left
