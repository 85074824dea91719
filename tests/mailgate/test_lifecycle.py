"""The shared lifecycle: connection cap, tasks in flight, one drain deadline for all listeners."""

from __future__ import annotations

import asyncio

import pytest

from mailgate import lifecycle
from mailgate.lifecycle import Tracker


async def test_tracker_caps_connections() -> None:
    """admit() counts connections in up to the cap, forget() makes room again."""
    tracker = Tracker(2)
    a, b, c = object(), object(), object()
    assert tracker.admit(a)
    assert tracker.admit(b)
    assert not tracker.admit(c)
    tracker.forget(a)
    assert tracker.admit(c)
    assert {b, c} == tracker.connections


async def test_finished_tasks_leave_the_tracker() -> None:
    """A spawned task is held until it ends, then dropped."""
    tracker = Tracker(1)
    task = tracker.spawn(asyncio.sleep(0))
    assert {task} == tracker.tasks
    await task
    assert set() == tracker.tasks


async def test_drain_waits_for_work_within_the_deadline() -> None:
    """Work that ends before the deadline finishes; nothing is abandoned."""
    tracker = Tracker(1)
    done = []

    async def work() -> None:
        await asyncio.sleep(0.05)
        done.append(True)

    tracker.spawn(work())
    assert 0 == await tracker.finish_tasks(2.0)
    assert [True] == done


async def test_drain_cancels_what_is_left_at_the_deadline() -> None:
    """Work still running at the deadline is cancelled, and counted."""
    tracker = Tracker(1)
    task = tracker.spawn(asyncio.sleep(60))
    assert 1 == await tracker.finish_tasks(0.05)
    assert task.cancelled()


class FakeListener:
    """Records the order of close() and drain() calls on a shared log."""

    def __init__(self, name: str, events: list[str], work: float) -> None:
        self.name, self.events, self.work = name, events, work

    def close(self) -> None:
        self.events.append(f"close {self.name}")

    async def drain(self, deadline: float) -> None:
        self.events.append(f"drain {self.name}")
        await asyncio.sleep(min(self.work, deadline))
        self.events.append(f"drained {self.name}")


async def test_shutdown_closes_every_listener_before_any_drains() -> None:
    """No listener accepts while another drains; all drain together under one deadline."""
    events: list[str] = []
    listeners = [FakeListener("mux", events, 0.05), FakeListener("dovecot", events, 0.01)]
    await lifecycle.shutdown(listeners, 1.0)
    assert ["close mux", "close dovecot"] == events[:2]
    assert {"drain mux", "drain dovecot"} == set(events[2:4])
    assert "drained dovecot" == events[4]  # shorter work ends first: the drains overlap


@pytest.mark.parametrize("choice", ["asyncio", "auto", "uvloop"])
def test_runner_honours_the_event_loop_choice(choice: str) -> None:
    """event_loop = asyncio runs asyncio's loop; auto and uvloop run uvloop (installed here)."""

    async def which() -> int:
        return int("uvloop" in type(asyncio.get_running_loop()).__module__)

    expected = 0 if choice == "asyncio" else 1
    assert expected == lifecycle.runner(choice)(which())


async def test_drain_also_waits_for_work_started_during_it() -> None:
    """A check that starts while the drain waits is waited for (or cancelled) too."""
    tracker = Tracker(1)
    late: list[asyncio.Task[object]] = []

    async def first() -> None:
        await asyncio.sleep(0.02)
        late.append(tracker.spawn(asyncio.sleep(60)))

    tracker.spawn(first())
    assert 1 == await tracker.finish_tasks(0.2)
    assert late[0].cancelled()
