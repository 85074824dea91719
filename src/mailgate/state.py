"""State shared by several gateway hosts, in Redis: connection, deadline, outages.

This module owns the one way both daemons talk to the shared store
(``[state]``): building the redis-py asyncio client (``redis://``,
``rediss://`` with a verified CA, ``unix://``, or Sentinel), loading the
secret the hosts share (:func:`load_secret`), and :class:`SharedState`,
which runs every operation under a deadline (``state.timeout``, 50 ms by
default) and turns any failure into "no answer" (``None``) so the caller
falls back to its own memory.  A failure marks the store down: one warning
per outage, the ``*_state_up`` gauge at 0, no operation tried (none waits)
until a background probe sees Redis answer again, then one line saying so.

What is kept there, and how it is decided atomically, belongs to each
daemon (:mod:`saslimap.shared`, :mod:`filter.shared`); they never import
each other, only this.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import Redis as SyncRedis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

from mailgate.config import Address, ConfigError, StateConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_SECRET = 32
"""The fewest bytes a shared secret may have."""
_MIN_DISTINCT = 8  # a 32-byte random (or 64 hex digits) has far more distinct bytes

Redis = aioredis.Redis

_until: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mailgate_state_until", default=None
)
"""When the current request's share of the store's deadline ends (monotonic), if in one."""

_PROBE_TTL_MS = 60_000  # the probe's key goes by itself
# In a script, as every operation is: a Redis user whose ACL allows SET but no longer
# EVALSHA would otherwise pass the probe and fail the next operation, once per
# retry_interval for as long as the ACL stays so.
_PROBE = "return redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])"


def load_secret(path: Path, key: str = "state.secret_file") -> bytes:
    """The secret every host shares, refused if others may read it or it is weak.

    At least 32 bytes (a trailing newline is not counted), mode 0600 or 0400
    (no group or other bits), and not a repetition of a few characters: a
    weak key would let anyone who can read Redis test guesses against the
    HMACs kept there.  ``head -c 32 /dev/urandom > FILE`` makes a good one.
    """
    try:
        # O_NONBLOCK, and the type checked on the open file before any read: a FIFO
        # or a device (/dev/urandom) would block or never end the read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{key}: {path} is not a regular file")
            data = file.read()
        except OSError as err:
            raise ConfigError(f"{key}: cannot read {path}: {err.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{key}: {path} is mode {stat.S_IMODE(st.st_mode):04o}; "
            "it must be readable by its owner only (chmod 600)"
        )
    secret = data.rstrip(b"\r\n")
    if len(secret) < MIN_SECRET:
        raise ConfigError(
            f"{key}: {path} holds {len(secret)} bytes; at least {MIN_SECRET} random bytes are "
            "needed (head -c 32 /dev/urandom > FILE)"
        )
    if len(set(secret)) < _MIN_DISTINCT:
        raise ConfigError(f"{key}: {path} does not look random (too few distinct bytes)")
    return secret


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"state.password_file: cannot read {path}: {err}") from None


def _settings(cfg: StateConfig, connect: float, wait: float) -> dict[str, Any]:
    """redis-py's connection settings for ``[state]``, the same for both clients.

    No retries inside redis-py: the caller's deadline is the whole budget of
    an operation, and a failure falls back to local memory at once.
    """
    settings: dict[str, Any] = {
        "password": _read_password(cfg.password_file),
        "socket_connect_timeout": connect,
        "socket_timeout": wait,
        "client_name": "mailgate",
    }
    parts = urlsplit(cfg.url) if cfg.url else None
    if parts is not None and parts.username:
        settings["username"] = parts.username
    if parts is not None and parts.scheme == "rediss":
        settings["ssl_cert_reqs"] = "required"
        if cfg.ca_file is not None:
            settings["ssl_ca_certs"] = str(cfg.ca_file)
        if cfg.sentinels:
            settings["ssl"] = True  # from_url would have said so; Sentinel needs telling
    return settings


def _sentinel_setup(
    cfg: StateConfig, wait: float
) -> tuple[list[tuple[str, int]], dict[str, Any], int]:
    """The sentinels' addresses, their own connection settings, and the database number."""
    parts = urlsplit(cfg.url) if cfg.url else None
    db = int(parts.path.strip("/") or 0) if parts is not None and parts.path else 0
    nodes = [Address.parse(s, unix=False) for s in cfg.sentinels]
    own = {"socket_connect_timeout": cfg.connect_timeout, "socket_timeout": wait}
    return [(n.host, n.port) for n in nodes], own, db


def client(cfg: StateConfig) -> Redis:
    """A redis-py asyncio client for ``[state]`` (nothing is connected yet)."""
    settings = _settings(cfg, cfg.connect_timeout, max(cfg.timeout, cfg.connect_timeout))
    settings["retry"] = Retry(NoBackoff(), 0)
    if cfg.sentinels:
        nodes, own, db = _sentinel_setup(cfg, cfg.connect_timeout)
        master: Redis = Sentinel(nodes, sentinel_kwargs=own, **settings).master_for(
            cfg.sentinel_service, db=db
        )
        return master
    return aioredis.from_url(cfg.url, **settings)


def sync_client(cfg: StateConfig, timeout: float) -> SyncRedis:
    """A blocking client for ``[state]``, for a tool that is not asyncio (``mail-filter learn``).

    The same URL forms, TLS verification, password file and Sentinel lookup as
    :func:`client`; each socket wait is at most ``timeout`` and nothing is
    retried, so a command's wait is bounded by it.
    """
    settings = _settings(cfg, max(timeout, cfg.connect_timeout), timeout)
    settings["retry"] = SyncRetry(NoBackoff(), 0)
    if cfg.sentinels:
        nodes, own, db = _sentinel_setup(cfg, timeout)
        master: SyncRedis = SyncSentinel(nodes, sentinel_kwargs=own, **settings).master_for(
            cfg.sentinel_service, db=db
        )
        return master
    return SyncRedis.from_url(cfg.url, **settings)


class SharedState:
    """The shared store for one daemon, used only while it answers within its deadline."""

    def __init__(
        self,
        cfg: StateConfig,
        secret: bytes,
        *,
        redis: Redis | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.prefix = cfg.key_prefix
        self.timeout = cfg.timeout
        self.redis = redis if redis is not None else client(cfg)
        self._secret = secret
        self._on_change = on_change or (lambda _up: None)
        self.up = False
        self._probe: asyncio.Task[None] | None = None
        self._later: set[asyncio.Task[None]] = set()
        self._probe_script = self.redis.register_script(_PROBE)
        self._closed = False
        self._on_change(False)

    def digest(self, *parts: str | bytes) -> bytes:
        """HMAC-SHA256 under the shared secret: equal on every host, useless without it."""
        data = b"\0".join(p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p
                          for p in parts)  # fmt: skip
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def key(self, *parts: str) -> str:
        """A key under this gateway group's prefix."""
        return self.prefix + ":".join(parts)

    def start(self) -> None:
        """Connect in the background (the daemon does not wait for Redis to start)."""
        if self._probe is None and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(self._reconnect(first=True))

    async def run(self, op: Callable[[Redis], Awaitable[T]], what: str) -> T | None:
        """``op``'s answer, or ``None`` if the store is down, errs or misses the deadline.

        Inside :meth:`request`, every operation shares what is left of one
        deadline: a request never waits for the store longer than ``timeout``
        in all.  An operation cut short by that sharing (left less than half the
        deadline by the ones before it, which were answered) does not count as
        the store failing.
        """
        if not self.up:
            return None
        until = _until.get()
        limit = self.timeout if until is None else min(self.timeout, until - time.monotonic())
        if limit <= 0:
            return None
        try:
            async with asyncio.timeout(limit):
                return await op(self.redis)
        except TimeoutError as err:
            if limit < self.timeout / 2:
                # Cut short by the request's earlier operations, which the store did
                # answer: not an outage (a store that is down misses its first one).
                return None
            self.failed(what, err)
            return None
        except (RedisError, OSError, ValueError) as err:
            self.failed(what, err)
            return None

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """One request's operations share one deadline (nested: the outer one's)."""
        if _until.get() is not None:
            yield
            return
        token = _until.set(time.monotonic() + self.timeout)
        try:
            yield
        finally:
            _until.reset(token)

    def later(self, work: Awaitable[object]) -> None:
        """Run ``work`` (say, recording a verdict) without the request waiting for it.

        Outside any request's deadline (each operation gets the full one); the
        store keeps the task until it ends, and :meth:`close` gives it a moment.
        """
        loop = asyncio.get_running_loop()

        async def run() -> None:
            await work

        task = loop.create_task(run(), context=contextvars.Context())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def failed(self, what: str, err: BaseException) -> None:
        """The store did not answer ``what``: warn once for this outage, probe until it is back."""
        if self.up:
            self.up = False
            self._on_change(False)
            reason = "no answer within the deadline" if isinstance(err, TimeoutError) else err
            log.warning(
                "shared state %s unavailable (%s: %s); using this host's memory until it is back",
                self.where, what, reason,
            )  # fmt: skip
        if (self._probe is None or self._probe.done()) and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    @property
    def where(self) -> str:
        """The store as an administrator wrote it (never with a password)."""
        if self.cfg.sentinels:
            return f"sentinel {self.cfg.sentinel_service} via {', '.join(self.cfg.sentinels)}"
        return self.cfg.url

    async def _reconnect(self, first: bool = False) -> None:
        """Probe until the store answers (``first``: at start, where nothing has warned yet).

        The probe is a scripted write under our prefix, not a PING: a Redis that answers
        PING but refuses writes (a read-only replica, MISCONF on a full disk, OOM) or
        scripts (an ACL) is still down for every operation here, and taking it for back
        would warn once per ``retry_interval`` for the whole outage.
        """
        while not self._closed:
            if not first:
                await asyncio.sleep(self.cfg.retry_interval)
            try:
                async with asyncio.timeout(self.cfg.connect_timeout + self.timeout):
                    await self._probe_script(
                        keys=[self.key("state", "probe")], args=[_PROBE_TTL_MS]
                    )
            except (RedisError, OSError, TimeoutError, ValueError) as err:
                if first:
                    log.warning(
                        "shared state %s unavailable at start (%s); using this host's memory "
                        "until it is back", self.where, err or "no answer",
                    )  # fmt: skip
                first = False
                continue
            self.up = True
            self._on_change(True)
            log.info("shared state %s available: limits and caches are shared", self.where)
            return

    async def settled(self) -> None:
        """Wait until the work :meth:`later` started has ended (tests, shutdown)."""
        while self._later:
            await asyncio.wait(list(self._later))

    async def close(self) -> None:
        """Stop probing, let work still recording verdicts end (one deadline), close."""
        if self._later:
            await asyncio.wait(list(self._later), timeout=self.timeout)
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
        with contextlib.suppress(RedisError, OSError):  # a dead connection: nothing to say
            await self.redis.aclose()
        # With sentinels, the master's pool asks a Sentinel object of its own, whose
        # connections to each sentinel the master's aclose() leaves open.
        pool = getattr(self.redis, "connection_pool", None)  # a test's fake has none
        manager = getattr(pool, "sentinel_manager", None)
        if isinstance(manager, Sentinel):
            with contextlib.suppress(RedisError, OSError):
                await manager.aclose()


def open_shared(
    cfg: StateConfig, on_change: Callable[[bool], None] | None = None
) -> SharedState | None:
    """The shared store ``[state]`` names, or ``None`` for in-process memory.

    Raises ConfigError for a missing or weak secret (the daemon refuses to start).
    """
    if not cfg.enabled:
        return None
    assert cfg.secret_file is not None  # require_state checked it
    return SharedState(cfg, load_secret(cfg.secret_file), on_change=on_change)


def escape_glob(text: str) -> str:
    """``text`` as a literal inside a Redis SCAN ``MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def delete_matching(redis: Redis, pattern: str, batch: int = 500) -> int:
    """UNLINK every key matching ``pattern`` (SCAN, so Redis is never blocked); how many."""
    deleted = 0
    keys: list[bytes] = []
    async for k in redis.scan_iter(match=pattern, count=batch):
        keys.append(k)
        if len(keys) >= batch:
            deleted += int(await redis.unlink(*keys))
            keys = []
    if keys:
        deleted += int(await redis.unlink(*keys))
    return deleted


class StateUnavailable(Exception):
    """A command-line tool could not reach the shared store."""


async def for_tool(cfg: StateConfig, patience: float = 10.0) -> SharedState:
    """A connected store for a command-line tool (which, unlike a daemon, may wait ``patience``).

    Raises ConfigError (no ``[state]``, or a weak secret) or StateUnavailable.
    """
    state = open_shared(cfg)
    if state is None:
        raise ConfigError("state.url: no shared state is configured (state.url is empty)")
    state.timeout = patience
    try:
        async with asyncio.timeout(cfg.connect_timeout + patience):
            await state.redis.ping()
    except (RedisError, OSError, TimeoutError, ValueError) as err:
        await state.close()
        raise StateUnavailable(f"shared state {state.where}: {err or 'no answer'}") from None
    state.up = True
    return state
