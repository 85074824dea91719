"""IMAP checks for saslimap: worker threads, a bound on concurrency and queue, warm sessions.

The blocking login itself is :mod:`mailgate.imap` (the one imapclient
wrapper); this module owns running it from asyncio: at most
``max_concurrency`` logins at once, a bounded queue, one overall deadline per
check, and a pool of connections opened and TLS-negotiated ahead of demand.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mailgate.imap import (
    BackendUnavailable,
    ImapSettings,
    LoginResult,
    Session,
    authenticate_on,
    check_login,
    open_session,
)
from saslimap.config import ImapConfig

__all__ = ["BackendUnavailable", "ImapBackend", "ImapSettings", "LoginResult", "WarmPool"]

log = logging.getLogger(__name__)


def settings_from_config(cfg: ImapConfig) -> ImapSettings:
    """The ``[imap]`` section as connection settings (with its verifying TLS context)."""
    return ImapSettings.from_url(
        cfg.url, cfg.ca_file, connect_timeout=cfg.connect_timeout,
        response_timeout=cfg.response_timeout, mechanism=cfg.mechanism,
        send_client_address=cfg.send_client_address,
    )  # fmt: skip


class WarmPool:
    """IMAP sessions opened and TLS-negotiated ahead of demand (each used for one login).

    Worker threads take sessions (:meth:`take`); an asyncio task keeps the pool
    at its size, closes sessions idle longer than ``max_idle`` (before the
    server's own pre-login timeout would), and backs off while the server is
    unreachable.  The newest session is taken first; the oldest expire first.
    """

    def __init__(self, settings: ImapSettings, size: int, max_idle: float) -> None:
        self.settings = settings
        self.size = size
        self.max_idle = max_idle
        self._sessions: collections.deque[tuple[float, Session]] = collections.deque()
        self._opener = ThreadPoolExecutor(1, thread_name_prefix="imap-warm")
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def start(self) -> None:
        """Begin filling the pool (from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._keep_filled())

    def take(self) -> Session | None:
        """A fresh session, or None (called from worker threads)."""
        session = None
        while session is None:
            try:
                opened, candidate = self._sessions.pop()
            except IndexError:
                break
            if time.monotonic() - opened < self.max_idle:
                session = candidate
            else:
                candidate.close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wanted.set)
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    async def _keep_filled(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            now = time.monotonic()
            while self._sessions and now - self._sessions[0][0] >= self.max_idle:
                try:
                    _, old = self._sessions.popleft()
                except IndexError:
                    break
                old.close()
            while len(self._sessions) < self.size:
                try:
                    await loop.run_in_executor(self._opener, self._open_one)
                except BackendUnavailable as err:
                    backoff = min(max(backoff * 2, 0.5), 10.0)
                    log.debug("warm connection failed (%s); retrying in %.1f s", err.kind, backoff)
                    break
                backoff = 0.0
            self._wanted.clear()
            if backoff:
                await asyncio.sleep(backoff)  # the server is unreachable: do not retry per request
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), self.max_idle / 4)

    def _open_one(self) -> None:
        # In the opener thread; it may finish after close(), which must not leak it.
        self._sessions.append((time.monotonic(), open_session(self.settings)))
        if self._closed:
            self._close_all()

    def close(self) -> None:
        """Stop refilling and close every idle session."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._opener.shutdown(wait=False, cancel_futures=True)
        self._close_all()

    def _close_all(self) -> None:
        while self._sessions:
            try:
                _, session = self._sessions.pop()
            except IndexError:
                break
            session.close()


class ImapBackend:
    """IMAP checks in worker threads: bounded concurrency and queue, a deadline, warm sessions.

    At most ``max_concurrency`` logins run at once and at most ``max_queue``
    checks wait for a slot; a check beyond that is refused at once as ``busy``
    rather than piling up behind a slow server.
    """

    def __init__(
        self,
        settings: ImapSettings,
        max_concurrency: int = 16,
        *,
        max_queue: int = 64,
        warm_connections: int = 0,
        warm_max_idle: float = 20.0,
        check: Callable[[ImapSettings, str, str, str], LoginResult] | None = None,
    ) -> None:
        self.settings = settings
        self.max_queue = max_queue
        self.pool = (
            WarmPool(settings, warm_connections, warm_max_idle)
            if warm_connections > 0 and check is None
            else None
        )
        self._check = check or self._check_pooled
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="imap-login")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        # Socket timeouts bound each step; this bounds the whole exchange:
        # connect + greeting, STARTTLS, handshake, CAPABILITY, the login itself.
        self.deadline = settings.connect_timeout * 2 + settings.response_timeout * 3

    @classmethod
    def from_config(cls, cfg: ImapConfig) -> ImapBackend:
        """The backend described by the ``[imap]`` section."""
        return cls(
            settings_from_config(cfg),
            cfg.max_concurrency,
            max_queue=cfg.max_queue,
            warm_connections=cfg.warm_connections,
            warm_max_idle=cfg.warm_max_idle,
        )

    def start(self) -> None:
        """Begin keeping warm sessions (if configured); call from the event loop."""
        if self.pool is not None:
            self.pool.start()

    def _check_pooled(
        self, settings: ImapSettings, user: str, password: str, client_addr: str = ""
    ) -> LoginResult:
        session = self.pool.take() if self.pool is not None else None
        if session is not None:
            try:
                return authenticate_on(session, settings, user, password, client_addr)
            except BackendUnavailable as err:
                if err.kind not in ("closed", "connect"):
                    raise
                # The server dropped the idle connection; a new one decides.
                log.debug("warm connection was closed by the server (%s); reconnecting", err.kind)
        return check_login(settings, user, password, client_addr)

    async def login(self, user: str, password: str, client_addr: str = "") -> LoginResult:
        """Check the credentials against the IMAP server."""
        if self._slots.locked() and self._waiting >= self.max_queue:
            raise BackendUnavailable("busy", f"{self._waiting} checks already queued")
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        self._waiting += 1
        queued = True
        try:
            async with asyncio.timeout(self.deadline):
                async with self._slots:
                    self._waiting -= 1
                    queued = False
                    return await loop.run_in_executor(
                        self._executor, self._check, self.settings, user, password, client_addr
                    )
        except TimeoutError:
            waited = time.monotonic() - start
            raise BackendUnavailable("timeout", f"no verdict within {waited:.1f} s") from None
        finally:
            if queued:
                self._waiting -= 1

    def close(self) -> None:
        """Stop the worker threads; checks still running finish on their own socket timeouts."""
        if self.pool is not None:
            self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
