"""mail-filter's state shared by several gateway hosts: keys, Lua scripts, the learn lock.

This module owns what mail-filter keeps in the shared store (``[state]``,
:mod:`mailgate.state`) and how each decision there is made atomically:

- the notice throttle (:class:`SharedNotices`, for the daemon, asyncio): per
  category the notices any host sent in the last hour, as a sorted set scored
  by Redis ``TIME`` (the hosts' clocks need not agree), and the count of those
  held back since the last one went out.  One Lua script decides, so two hosts
  cannot both send the hour's last notice.  It runs under the state deadline;
  with no answer the caller throttles by its own memory (:mod:`filter.notices`).
- ``mail-filter learn``'s lock (:class:`LearnLock`, for the command, blocking):
  ``SET NX PX`` with a token naming the host, extended by a background thread
  while the run goes on (compare-and-``PEXPIRE``: extending also checks the lock
  is still ours), released by compare-and-delete.  If it is lost (not extended
  in time, or taken over after it expired) the run stops before it saves again.
- learn's state (:class:`SharedLearnStore`): per folder UIDVALIDITY, last UID
  and retry counts, and the digests of learned messages with their class.
  Every save is fenced: one script writes only while the lock holds this run's
  token, so a host whose lock expired cannot overwrite the next host's work.
  Messages are named by an HMAC under the hosts' shared secret, not a plain
  hash anyone could compute from a message to see whether it was learned.

Keys, under ``key_prefix``::

    filter:notice:<category>        sorted set: a member per notice sent, by Redis time (ms)
    filter:notice:<category>:held   notices held back since the last one sent
    filter:learn:lock               the learning run's token ("<host> pid <pid> <random>")
    filter:learn:folders            hash: folder -> JSON {uidvalidity, last_uid, retry}
    filter:learn:learned            hash: HMAC of a message -> "spam" or "ham"
    filter:learn:order              sorted set: the same HMACs by when learned (the newest
                                    MAX_DIGESTS are kept, as in the state file)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from filter.learn import MAX_DIGESTS, FolderState, LearnError, State
from mailgate.config import StateConfig
from mailgate.state import SharedState, StateUnavailable, load_secret, sync_client

log = logging.getLogger(__name__)

T = TypeVar("T")

NOTICE_WINDOW = 3600.0  # seconds: "in any sliding hour"
# A held-back count nobody reads for a week (no notice of that category went out
# since) is dropped rather than kept for ever.
_HELD_TTL_MS = 7 * 24 * 3600 * 1000

LOCK_TTL = 30.0
"""Seconds the learn lock lives unless extended (every third of it): how long the other
hosts wait after a learning host died before one of them may learn."""
PATIENCE = 5.0
"""Seconds one Redis operation of ``mail-filter learn`` may take (it is in no mail's path,
so it waits longer than the daemon's ``state.timeout``; well under LOCK_TTL / 3)."""

_ERRORS = (RedisError, OSError, ValueError)

# KEYS: 1 notices sent (sorted set), 2 held back.  ARGV: 1 at most this many per
# window, 2 the window (ms), 3 a random tag (two notices in one millisecond stay two).
_NOTICE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {0, 0}
end
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
local held = tonumber(redis.call('GET', KEYS[2]) or 0)
redis.call('DEL', KEYS[2])
return {1, held}
"""

# KEYS: 1 lock.  ARGV: 1 token, 2 ttl (ms).  1 if extended, 0 if not ours (any more).
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: 1 lock.  ARGV: 1 token.  Never deletes another run's lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: 1 lock, 2 folders, 3 learned, 4 order.  ARGV: 1 token, 2 digests kept at most,
# 3 number of folders n, then n (folder, JSON) pairs, then (digest, class) pairs.
# 0 (and nothing written) unless the lock holds this run's token.
_SAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
while i < #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[4], now, ARGV[i])
  i = i + 2
end
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[2])
if over > 0 then
  for _, d in ipairs(redis.call('ZRANGE', KEYS[4], 0, over - 1)) do
    redis.call('HDEL', KEYS[3], d)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, over - 1)
end
return 1
"""


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- notices (the daemon) -------------------------------------------------------


class SharedNotices:
    """The notice throttle every host of the group shares."""

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self._admit = state.redis.register_script(_NOTICE)

    async def admit(self, category: str, per_hour: int) -> tuple[bool, int] | None:
        """(send it?, notices held back by every host since the last one sent); ``None``:
        the store did not answer within its deadline, decide locally."""
        keys = [self.state.key("filter", "notice", category),
                self.state.key("filter", "notice", category, "held")]  # fmt: skip
        args: list[Any] = [per_hour, round(NOTICE_WINDOW * 1000), secrets.token_hex(4),
                           _HELD_TTL_MS]  # fmt: skip

        async def run(_r: Any) -> Any:
            return await self._admit(keys=keys, args=args)

        reply = await self.state.run(run, "notice throttle")
        if reply is None:
            return None
        return int(reply[0]) == 1, int(reply[1])


# -- mail-filter learn (a blocking command) -------------------------------------


def learn_key(prefix: str, name: str) -> str:
    """One of learn's keys (lock, folders, learned, order) under ``key_prefix``."""
    return f"{prefix}filter:learn:{name}"


class LearnBusy(Exception):
    """Another gateway host holds the learn lock (``holder``: its token, if still there)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class LockLost(LearnError):
    """The learn lock is no longer this run's: it stops before saving anything more."""


class StoreFailed(LearnError):
    """The shared store failed mid-run: it stops; what was saved stays saved."""


class LearnLock:
    """The lock that lets one gateway host learn at a time.

    Taken with ``SET NX PX``, kept by a thread extending it every third of its
    ttl, given back with compare-and-delete.  ``clock`` is this host's
    monotonic clock: the lock counts as lost, here, once it was last extended
    a whole ttl ago, since Redis has then let it expire.
    """

    def __init__(
        self,
        redis: SyncRedis,
        key: str,
        where: str,
        *,
        ttl: float = LOCK_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.where = where
        self.ttl = ttl
        self.clock = clock
        self.token = f"{socket.gethostname()} pid {os.getpid()} {secrets.token_hex(8)}"
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)
        self._guard = threading.Lock()
        self._valid_until = 0.0
        self._lost = ""
        self._warned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    def acquire(self) -> None:
        """Take the lock. Raises LearnBusy (another host has it) or StateUnavailable."""
        for _ in range(2):  # the holder's lock may expire between our SET and our GET
            started = self.clock()
            try:
                if self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                    with self._guard:
                        self._valid_until = started + self.ttl
                    return
                holder = self.redis.get(self.key)
            except _ERRORS as err:
                raise StateUnavailable(f"shared state {self.where}: {err or 'no answer'}") from None
            if holder is not None:  # "<host> pid <pid>" without the random part
                raise LearnBusy(_text(holder).rsplit(" ", 1)[0])
        raise LearnBusy("a host whose run just ended")

    def start(self) -> None:
        """Extend the lock in the background while the run goes on."""
        self._thread = threading.Thread(target=self._beat, name="learn-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self.extend():
                return

    def extend(self) -> bool:
        """Extend the lock if it is still ours; False once it is lost (for good)."""
        started = self.clock()
        try:
            ours = int(self._extend(keys=[self.key], args=[self.token, self.ttl_ms])) == 1
        except _ERRORS as err:
            if self.clock() >= self._until():
                self._lose(f"not extended before it expired: {err or 'no answer'}")
                return False
            if not self._warned:  # tried again at the next beat, still within the ttl
                self._warned = True
                log.warning("learn: could not extend the lock in %s (%s); trying again",
                            self.where, err or "no answer")  # fmt: skip
            return True
        if not ours:
            self._lose("it expired, or another host took it")
            return False
        with self._guard:
            self._valid_until = started + self.ttl
        return True

    def _until(self) -> float:
        with self._guard:
            return self._valid_until

    def _lose(self, why: str) -> None:
        with self._guard:
            if not self._lost:
                self._lost = why
        log.warning("learn: the lock in %s is no longer this host's (%s)", self.where, why)

    def check(self) -> None:
        """Raise LockLost unless the lock is (still) this run's."""
        with self._guard:
            lost, until = self._lost, self._valid_until
        if not lost and self.clock() >= until:
            lost = "not extended in time"
            self._lose(lost)
        if lost:
            raise LockLost(
                f"learn lock in {self.where} lost ({lost}); stopping before saving state "
                "another host may own now"
            )

    def release(self) -> None:
        """Stop extending, and delete the lock if it is still ours (else it just expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(PATIENCE + 1)
        try:
            self._release(keys=[self.key], args=[self.token])
        except _ERRORS as err:
            log.warning(
                "learn: the lock in %s was not released (%s); it expires within %.0f s",
                self.where, err or "no answer", self.ttl,
            )  # fmt: skip


class SharedLearnStore:
    """learn's state in the shared store (``learn.state_file`` is not used then).

    ``lock``: the run's lock, which every save checks in Redis itself; ``None``
    for a dry run, which reads and never saves.
    """

    def __init__(
        self, redis: SyncRedis, prefix: str, secret: bytes, lock: LearnLock | None, where: str
    ) -> None:
        self.redis = redis
        self.lock = lock
        self.where = where
        self._secret = secret
        self.keys = [learn_key(prefix, k) for k in ("lock", "folders", "learned", "order")]
        self._save = redis.register_script(_SAVE)

    def _call(self, what: str, op: Callable[[], T]) -> T:
        try:
            return op()
        except _ERRORS as err:
            raise StoreFailed(
                f"shared state {self.where}: {what} failed ({err or 'no answer'}); "
                "what was saved stays saved, the next run goes on from there"
            ) from None

    def load(self) -> State:
        raw: dict[bytes | str, bytes | str] = self._call(
            "loading", lambda: self.redis.hgetall(self.keys[1])
        )
        folders: dict[str, FolderState] = {}
        for name, value in raw.items():
            try:
                fields = json.loads(value)
                folders[_text(name)] = FolderState(
                    int(fields["uidvalidity"]), int(fields["last_uid"]),
                    {str(k): int(v) for k, v in fields.get("retry", {}).items()},
                )  # fmt: skip
            except (ValueError, TypeError, KeyError, AttributeError) as err:
                raise LearnError(
                    f"shared state {self.where}: folder {_text(name)!r} unreadable ({err})"
                ) from None
        return State(folders)

    def digest(self, message: bytes) -> str:
        return hmac.new(self._secret, b"learn\0" + message, hashlib.sha256).hexdigest()[:32]

    def recall(self, state: State, digests: Collection[str]) -> None:
        wanted = [d for d in digests if d not in state.learned]
        if not wanted:
            return
        found = self._call("looking up", lambda: self.redis.hmget(self.keys[2], wanted))
        for digest, klass in zip(wanted, found, strict=True):
            if klass is not None:
                state.learned[digest] = _text(klass)

    def check(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def save(self, state: State) -> None:
        if self.lock is None:
            raise LearnError("a dry run saves nothing")
        self.lock.check()
        args: list[Any] = [self.lock.token, MAX_DIGESTS, len(state.folders)]
        for name, folder in state.folders.items():
            args += [name, json.dumps(vars(folder))]
        for digest, klass in state.fresh.items():
            args += [digest, klass]
        written = self._call("saving", lambda: self._save(keys=self.keys, args=args))
        if int(written) != 1:
            raise LockLost(
                f"learn lock in {self.where} lost (another host holds it); this part was "
                "not saved and is taught again by a later run (Bayes counts it once)"
            )
        state.fresh.clear()


def open_learn_store(cfg: StateConfig, dry_run: bool = False) -> SharedLearnStore:
    """Connect to the shared store and, unless ``dry_run``, take the learn lock and keep it.

    Raises ConfigError (a weak secret), StateUnavailable (Redis cannot be
    reached: no run without the lock, or two hosts would learn the same
    messages) or LearnBusy.
    """
    assert cfg.secret_file is not None  # require_state checked it
    secret = load_secret(cfg.secret_file)
    redis = sync_client(cfg, PATIENCE)
    where = (f"sentinel {cfg.sentinel_service} via {', '.join(cfg.sentinels)}"
             if cfg.sentinels else cfg.url)  # fmt: skip
    lock = None
    try:
        if dry_run:
            try:
                redis.ping()
            except _ERRORS as err:
                raise StateUnavailable(f"shared state {where}: {err or 'no answer'}") from None
        else:
            lock = LearnLock(redis, learn_key(cfg.key_prefix, "lock"), where)
            lock.acquire()
            lock.start()
    except BaseException:
        redis.close()
        raise
    return SharedLearnStore(redis, cfg.key_prefix, secret, lock, where)


def close_learn_store(store: SharedLearnStore) -> None:
    """Give the lock back (if this run has it) and close the connections."""
    if store.lock is not None:
        store.lock.release()
    store.redis.close()
