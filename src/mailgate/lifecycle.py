"""One process lifecycle for both daemons: run, reload on SIGHUP, drain on SIGTERM.

This module owns what a composition root does around its listeners, in a fixed
order (as uvicorn and aiohttp's web_runner do it):

1. readiness to systemd once every listener accepts;
2. SIGHUP: the daemon's own reload (:func:`reload_config` validates first, and
   an invalid file keeps the old configuration);
3. SIGTERM or SIGINT: every listener stops accepting at once (``close``), then
   all drain together under one deadline (``drain``): work in progress may
   finish, what is left at the deadline is cancelled and its connections
   dropped.

A listener is anything with ``close()`` and ``drain(deadline)``; the
:class:`Tracker` gives it the bookkeeping (connection cap, tasks in flight,
the deadline) so that no listener drains differently from another.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from mailgate import logs, sdnotify
from mailgate.errors import ConfigError
from mailgate.metrics_http import MetricsServer

C = TypeVar("C")
log = logging.getLogger(__name__)


class Listener(Protocol):
    """A server a daemon runs: it stops accepting, then drains."""

    def close(self) -> None:
        """Stop accepting new connections; those open carry on."""
        ...

    async def drain(self, deadline: float) -> None:
        """Let work in progress finish within ``deadline`` seconds, cancel the rest, close."""
        ...


class Tracker:
    """A listener's open connections (with a cap) and its tasks in flight.

    ``connections`` is a plain set so a hot path may use it directly.
    """

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.connections: set[Any] = set()
        self.tasks: set[asyncio.Task[Any]] = set()

    def admit(self, conn: object) -> bool:
        """Count a new connection in, unless the cap is reached."""
        if len(self.connections) >= self.max_connections:
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: object) -> None:
        """A connection ended."""
        self.connections.discard(conn)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task held here (not garbage-collected; awaited by the drain)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def finish_tasks(self, deadline: float, what: str = "request") -> int:
        """Wait up to ``deadline`` s (0: no limit) for the tasks in flight, including any
        started meanwhile; cancel the rest; how many were cancelled."""
        if not self.tasks:
            return 0
        log.info("draining %d %s(s) in progress", len(self.tasks), what)
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline if deadline else None
        while self.tasks:
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                break
            await asyncio.wait(set(self.tasks), timeout=left)
        pending = set(self.tasks)
        if pending:
            log.warning("drain deadline passed; abandoning %d %s(s)", len(pending), what)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        return len(pending)


async def shutdown(listeners: Collection[Listener], deadline: float) -> None:
    """Every listener stops accepting at once, then all drain under one deadline."""
    for listener in listeners:
        listener.close()
    await asyncio.gather(*(listener.drain(deadline) for listener in listeners))


async def serve_until_stopped(
    logger: logging.Logger,
    listeners: Collection[Listener],
    *,
    drain_timeout: float,
    reload: Callable[[], None],
    status: str,
) -> None:
    """Announce readiness, reload on SIGHUP, and on SIGTERM/SIGINT shut down in order.

    ``logger`` is the daemon's own, so its stop lines read as they always did.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    logs.keep_flushing(loop)
    sdnotify.notify(f"READY=1\nSTATUS={status}")
    # The handlers stay for the drain: a second SIGTERM or a SIGHUP meanwhile must
    # not fall back to the default action, which would kill the process mid-drain.
    await stopping.wait()
    # A reload now would build what the drain is taking down (a new backend, warm
    # connections nobody closes): say so and ignore it.
    loop.add_signal_handler(signal.SIGHUP, logger.warning, "SIGHUP ignored: stopping")
    sdnotify.notify("STOPPING=1")
    logger.info("stopping: no new connections; draining for up to %g s", drain_timeout)
    await shutdown(listeners, drain_timeout)


def finished(logger: logging.Logger, metrics_server: MetricsServer | None) -> int:
    """A daemon's last step after its drain: stop the metrics endpoint, log, flush; exit 0."""
    if metrics_server is not None:
        metrics_server.close()
    logger.info("stopped")
    logs.flush_all()
    return 0


def reload_config(
    load: Callable[[Path | None, dict[str, str]], C], path: Path | None, overrides: dict[str, str]
) -> C | None:
    """SIGHUP's first step: the new, validated config, or None (old one kept, error logged)."""
    sdnotify.notify("RELOADING=1")
    try:
        return load(path, overrides)
    except ConfigError as err:
        log.error("reload failed, keeping the current configuration: %s", err)
        sdnotify.notify("READY=1")
        return None


def reload_or_keep(
    load: Callable[[Path | None, dict[str, str]], C],
    path: Path | None,
    overrides: dict[str, str],
    current: C,
    restart_only: tuple[str, ...] = ("server", "metrics"),
) -> C | None:
    """:func:`reload_config`, warning about sections that only a restart applies."""
    new = reload_config(load, path, overrides)
    if new is not None:
        changed = [name for name in restart_only if getattr(new, name) != getattr(current, name)]
        if changed:
            sections = " and ".join(f"[{name}]" for name in changed)
            log.warning("reload: %s changes take effect only after a restart", sections)
    return new


@dataclass(frozen=True)
class ConfigSource(Generic[C]):
    """Where a daemon's configuration came from (file and flags), to read it again on SIGHUP."""

    load: Callable[[Path | None, dict[str, str]], C]
    path: Path | None
    overrides: dict[str, str]

    def reload(self, current: C) -> C | None:
        """The new, validated config, or None (the current one kept; see :func:`reload_or_keep`)."""
        return reload_or_keep(self.load, self.path, self.overrides, current)

    def __str__(self) -> str:
        return str(self.path or "flags")


def runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """asyncio.run, or uvloop's run when chosen (or installed, for ``auto``)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:  # "auto" without uvloop ("uvloop" was checked with the config)
            pass
        else:
            return uvloop.run
    return asyncio.run
