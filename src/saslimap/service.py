"""Authentication policy: from a raw request to a verdict, with no sockets.

This module owns what happens between "a client sent these four fields" and
"answer OK, NO, or tell the client to try later": input validation (encoding,
control characters, empty values), turning login and realm into the IMAP user
name, the allowed-domains guard against an open relay, the caches and the
brute-force budget (stores in :mod:`saslimap.cache`), asking the backend, and
the one log line per check.  The backend is anything with an async ``login``
(:class:`LoginBackend`), so tests use a small fake and the daemon uses
:class:`saslimap.imap.ImapBackend`.

A fresh cache hit, the commonest request by far, has two fast paths.  The raw
login, service and realm once seen are remembered with their cache key and
their ready-made answer and log text, so a repeat is one HMAC and one cache
lookup, with nothing decoded, validated or formatted again.  A password whose
HMAC matches a cached one equals a password that was validated and verified.
And a whole request, as its bytes came off the wire, once answered that way (or
refused by the negative cache) is remembered by its HMAC (under a key of its
own), so the mux server answers an identical request again with one HMAC and
one dictionary lookup, without even parsing it (:meth:`Authenticator.repeat`).
They trust a cache entry only while the cache still holds it and it is fresh.

Order of decisions for a well-formed request:

1. a fresh cached success for this password -> OK (re-verified in the
   background once older than ``refresh_after``);
2. the same wrong password seen within ``negative_ttl`` -> NO;
3. user over the failure budget, and the password is not their cached one -> NO
   (``ratelimited``), without asking IMAP;
4. ask IMAP (concurrent identical checks share one login); accepted -> OK and
   cache; rejected -> NO, remember, spend budget; unavailable -> OK only from a
   stale cached success, else TEMPFAIL.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from mailgate import logs
from mailgate.imap import BackendUnavailable, LoginResult
from saslimap import protocol
from saslimap.cache import CredentialCache, Entry, Freshness, Hasher, Key, NegativeCache
from saslimap.config import CacheConfig, LimitsConfig, UsersConfig
from saslimap.limits import FailureBudget
from saslimap.metrics import Metrics

log = logging.getLogger(__name__)

Kind = Literal["ok", "no", "tempfail", "ratelimited", "bad_request"]


class Verdict(enum.Enum):
    """What the client is told: yes, no, or try again later."""

    OK = "ok"
    NO = "no"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class Result:
    """The outcome of one check.

    ``reason`` is a short human text safe to send back to the client and to log;
    ``user`` is the effective IMAP user name (empty when the request was refused
    before one could be formed); ``backend_seconds`` is the IMAP round trip, or
    ``None`` when the backend was not asked; ``source`` says where the answer
    came from (``imap``, ``cache``, ``negative-cache``, ``stale-cache``,
    ``policy``).  ``detail`` is for the log only.
    """

    verdict: Verdict
    reason: str
    user: str = ""
    backend_seconds: float | None = None
    error_kind: str | None = None
    detail: str = ""
    kind: Kind | None = None
    source: str = "policy"

    @property
    def label(self) -> Kind:
        """The ``result`` label of the requests metric."""
        if self.kind is not None:
            return self.kind
        return (
            "ok"
            if self.verdict is Verdict.OK
            else "no"
            if self.verdict is Verdict.NO
            else "tempfail"
        )


@dataclass(frozen=True)
class Pending:
    """A check that needs the IMAP server (from :meth:`Authenticator.decide`)."""

    key: Key
    password: str = field(repr=False)
    freshness: Freshness | None
    client_addr: str = ""
    digest: bytes = field(default=b"", repr=False)  # the password's HMAC, as counted in flight


@dataclass(frozen=True)
class _Seen:
    """What a fresh cache hit needs, for login, service and realm as they came in."""

    entry: Entry
    user: bytes  # the IMAP user as UTF-8, as the hasher takes it
    ok: Result
    line: str


@dataclass(frozen=True)
class _SeenRefusal:
    """What a repeated negative-cache NO needs, for a request's exact bytes."""

    key: Key
    verified: Entry | None  # the user's verified entry when learned: a new one may be this
    expires: float  # when the negative cache lets go of this password (clock time)
    line: str
    reply: bytes


_REPLY_OK = protocol.reply_ok()
_SEEN_MAX = 10_000  # names remembered for the fast path; cleared (not evicted) beyond


class LoginBackend(Protocol):
    """Something that can check a user name and password (the IMAP server)."""

    async def login(self, user: str, password: str, client_addr: str = "") -> LoginResult:
        """Return the verdict, or raise BackendUnavailable when there is none."""
        ...


def shown(value: str | bytes) -> str:
    """A value made safe for a log line: control and invisible characters escaped, quotes too."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the common case, on the hot path of every log line
    return "".join(
        c
        if c.isprintable() and c not in '"\\'
        else f"\\x{ord(c):02x}"
        if ord(c) < 256
        else f"\\u{ord(c):04x}"
        for c in text
    )


def _has_control(text: str) -> bool:
    # Cc covers NUL, CR, LF, TAB, DEL and the C1 controls: none belongs in a login or
    # password, and CR/LF are how a request would smuggle a second IMAP command.
    # isprintable() is False for every Cc character, so it is a fast path for the
    # common case (it is also False for some harmless ones, which the slow path allows).
    return not text.isprintable() and any(unicodedata.category(c) == "Cc" for c in text)


def _line(result: Result, login: str | bytes, service: str | bytes, realm: str | bytes) -> str:
    """The one log line of a check."""
    backend_ms = "-" if result.backend_seconds is None else f"{result.backend_seconds * 1000:.1f}"
    detail = f' detail="{shown(result.detail)}"' if result.detail else ""
    return (
        f'auth user="{shown(result.user or login)}" service="{shown(service)}" '
        f'realm="{shown(realm)}" result={result.label} source={result.source} '
        f'reason="{result.reason}" backend_ms={backend_ms}{detail}'
    )


class _Refused(Exception):
    """A request answered NO by policy, before the backend is asked."""


def _text(name: str, value: str | bytes, *, required: bool) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(f"{name} is not valid UTF-8") from None
    if required and not value:
        raise _Refused(f"empty {name}")
    if _has_control(value):
        raise _Refused(f"control character in {name}")
    return value


class Authenticator:
    """Checks credentials against a backend according to the configured policy."""

    def __init__(
        self,
        users: UsersConfig,
        backend: LoginBackend,
        clock: Callable[[], float] = time.monotonic,
        *,
        cache: CacheConfig | None = None,
        limits: LimitsConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.users = users
        self.backend = backend
        self.clock = clock
        self.limits = limits or LimitsConfig()
        self.metrics = metrics or Metrics()
        cache = cache or CacheConfig()
        hasher = Hasher()
        self.cache = CredentialCache(
            hasher,
            clock,
            ttl=cache.ttl,
            refresh_after=cache.refresh_after,
            stale_if_error=cache.stale_if_error,
            max_entries=cache.max_entries,
        )
        self.negative = NegativeCache(
            hasher, clock, ttl=cache.negative_ttl, max_entries=cache.max_entries
        )
        self.budget = FailureBudget(
            clock, limit=self.limits.failure_budget, window=self.limits.failure_window
        )
        # Distinct passwords whose check ended without a verdict (IMAP slow or down). Under
        # Dovecot's per-IP penalty a guess can outlast the response deadline; without this
        # such guesses would reach IMAP forever without ever filling the budget above.
        self.undecided = FailureBudget(
            clock, limit=self.limits.failure_budget, window=self.limits.failure_window
        )
        self._allowed = frozenset(users.allowed_domains)
        self._pending: dict[tuple[Key, bytes], asyncio.Future[LoginResult]] = {}
        self._hasher = hasher
        self.background: set[asyncio.Task[None]] = set()
        self._refreshing: set[Key] = set()
        self._seen: dict[tuple[str | bytes, str | bytes, str | bytes], _Seen] = {}
        # Whole requests by HMAC, under a key of their own (a request's bytes never share
        # a MAC key with user-and-password strings).
        self._frames: dict[bytes, _Seen | _SeenRefusal] = {}
        self._frame_hasher = Hasher()

    @property
    def failure_delay(self) -> float:
        """Seconds a NO answer waits (0: answer at once)."""
        return self.limits.failure_delay

    def cache_sizes(self) -> dict[str, int]:
        """Entries in each cache (for the metrics gauge)."""
        return {"positive": len(self.cache), "negative": len(self.negative)}

    def imap_user(self, login: str, realm: str) -> str:
        """The user name the IMAP server is asked about (login joined with the realm)."""
        user = login
        if realm and self.users.realm == "join":
            user = f"{login}@{realm}"
        return user.lower() if self.users.lowercase else user

    def _domain_allowed(self, user: str) -> bool:
        if not self._allowed:
            return True
        _, at, domain = user.rpartition("@")
        return bool(at) and domain.lower().rstrip(".") in self._allowed

    async def verify(
        self,
        login: str | bytes,
        password: str | bytes,
        service: str | bytes = "",
        realm: str | bytes = "",
        client_addr: str = "",
    ) -> Result:
        """Check one login and log one line about it; never raises for bad input."""
        return await self.finish(self.decide(login, password, service, realm, client_addr))

    async def finish(self, decided: Result | Pending) -> Result:
        """What :meth:`decide` left: the IMAP login if needed, and any failure delay."""
        result = decided if isinstance(decided, Result) else await self.complete(decided)
        if result.verdict is Verdict.NO and self.limits.failure_delay > 0:
            # Jitter so timing says nothing about why; not a secret, so plain random.
            await asyncio.sleep(self.limits.failure_delay * random.uniform(0.5, 1.5))  # noqa: S311
        return result

    def repeat(self, frame: bytes) -> bytes | None:
        """The framed reply if ``frame`` repeats a request answered from a cache; logged.

        ``frame`` is exactly what one read returned.  It matches only the complete
        bytes of an earlier request that :meth:`decide` answered from a cache (given
        as its ``frame``), so a match is a complete request with that very password.
        A success is answered again while its cache entry is still held and fresh;
        a refusal by the negative cache while that entry lasts and no password of
        the user's has been verified since (that one would be checked first).
        """
        seen = self._frames.get(self._frame_hasher.digest_bytes(frame))
        if seen is None:
            return None
        if type(seen) is _Seen:
            entry = seen.entry
            if not entry.current or self.clock() - entry.verified_at >= self.cache.refresh_after:
                return None
            self.metrics.count_hit("positive")
            self.metrics.count_request("ok")
            logs.info_line_soon(log, seen.line)
            return _REPLY_OK
        assert type(seen) is _SeenRefusal
        if self.clock() >= seen.expires or self.cache.entry(seen.key) is not seen.verified:
            return None
        self.metrics.count_hit("negative")
        self.metrics.count_request("no")
        logs.info_line_soon(log, seen.line)
        return seen.reply

    def decide(
        self,
        login: str | bytes,
        password: str | bytes,
        service: str | bytes = "",
        realm: str | bytes = "",
        client_addr: str = "",
        frame: bytes = b"",
    ) -> Result | Pending:
        """Answer at once when no IMAP login is needed (validation, caches, budget).

        Returns a logged :class:`Result`, or a :class:`Pending` to pass to
        :meth:`complete`.  The mux server answers cache hits this way without
        creating a task.  ``frame``, when given, is the whole request exactly as
        it was read (nothing before or after it): if it is answered from a
        cache, :meth:`repeat` will know it again.
        """
        seen = self._seen.get((login, service, realm))
        if seen is not None:
            raw = (
                password.encode("utf-8", "surrogatepass") if isinstance(password, str) else password
            )
            if self.cache.is_fresh(seen.entry, self._hasher.digest_raw(seen.user, raw)):
                if frame:
                    self._learn_frame(frame, seen)
                self.metrics.count_hit("positive")
                self.metrics.count_request("ok")
                logs.info_line_soon(log, seen.line)
                return seen.ok
        try:
            decided = self._decide(login, password, service, realm, client_addr, frame)
        except _Refused as refusal:
            decided = Result(Verdict.NO, str(refusal), kind="bad_request")
        if isinstance(decided, Result):
            self._record(decided, login, service, realm)
        return decided

    def _learn_frame(self, frame: bytes, seen: _Seen | _SeenRefusal) -> None:
        if len(self._frames) >= _SEEN_MAX:
            self._frames.clear()  # rare, as for _seen: they come back on use
        self._frames[self._frame_hasher.digest_bytes(frame)] = seen

    async def complete(self, pending: Pending) -> Result:
        """Ask the IMAP server for a check :meth:`decide` could not answer; logs it."""
        user = pending.key[0]
        try:
            result = await self._ask_imap(pending)
        finally:
            self.budget.end(user, pending.digest)  # begun by decide()
            self.undecided.end(user, pending.digest)
        self._record(result, user, pending.key[2], pending.key[1])
        return result

    def _record(
        self, result: Result, login: str | bytes, service: str | bytes, realm: str | bytes
    ) -> None:
        self.metrics.count_request(result.label)
        if log.isEnabledFor(logging.INFO):
            logs.info_line(log, _line(result, login, service, realm))

    def _remember(
        self, login: str | bytes, service: str | bytes, realm: str | bytes, key: Key
    ) -> Result:
        """The OK of a cache hit, after noting the names for the fast path."""
        ok = Result(Verdict.OK, "authenticated", key[0], source="cache")
        entry = self.cache.entry(key)
        if entry is not None:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()  # rare: more active names than this; they come back on use
            user = key[0].encode("utf-8", "surrogatepass")
            self._seen[(login, service, realm)] = _Seen(
                entry, user, ok, _line(ok, login, service, realm)
            )
        return ok

    def _decide(
        self,
        login: str | bytes,
        password: str | bytes,
        service: str | bytes,
        realm: str | bytes,
        client_addr: str = "",
        frame: bytes = b"",
    ) -> Result | Pending:
        login_s = _text("login", login, required=True)
        password_s = _text("password", password, required=True)
        service_s = _text("service", service, required=False)
        realm_s = _text("realm", realm, required=False)
        user = self.imap_user(login_s, realm_s)
        if not self._domain_allowed(user):
            return Result(Verdict.NO, "domain not allowed", user, kind="bad_request")
        key: Key = (user, realm_s, service_s)

        freshness = self.cache.lookup(key, password_s)
        if freshness is Freshness.FRESH or freshness is Freshness.REFRESH:
            self.metrics.count_hit("positive")
            if freshness is Freshness.REFRESH:
                self._refresh_later(key, password_s)
            return self._remember(login, service, realm, key)
        refused_until = self.negative.expires(key, password_s)
        if refused_until is not None:
            self.metrics.count_hit("negative")
            refusal = Result(Verdict.NO, "authentication failed", user, source="negative-cache")
            if frame and not self.limits.failure_delay:  # a delayed NO must wait each time
                self._learn_frame(
                    frame,
                    _SeenRefusal(
                        key, self.cache.entry(key), refused_until,
                        _line(refusal, login, service, realm), protocol.reply_no(refusal.reason),
                    ),
                )  # fmt: skip
            return refusal
        if freshness is None and self.budget.exhausted(user):
            if self.budget.spent(user):
                return Result(
                    Verdict.NO, "authentication failed", user, kind="ratelimited", source="budget"
                )
            # Only checks still in flight fill the budget: they may yet be right, so this
            # is "try later", not a wrong password.
            return Result(
                Verdict.TEMPFAIL, "too many checks in progress, try later", user,
                kind="ratelimited", source="budget",
            )  # fmt: skip
        if freshness is None and self.undecided.exhausted(user):
            # Still "try later", never NO: an outage must not look like a wrong password.
            return Result(
                Verdict.TEMPFAIL, "too many checks without a verdict, try later", user,
                kind="ratelimited", source="budget",
            )  # fmt: skip
        self.metrics.cache_misses.inc()
        # Counted in flight from now, not from when the check's task first runs: the
        # server decides every request that arrived in one event-loop turn before any
        # task starts, and a burst of guesses would all pass a budget with one unit left.
        # Identical checks share one IMAP login (_login_once), so they count once.
        digest = self._hasher.digest(user, password_s)
        self.budget.begin(user, digest)
        self.undecided.begin(user, digest)
        return Pending(key, password_s, freshness, client_addr, digest)

    async def _ask_imap(self, pending: Pending) -> Result:
        key, password_s, freshness, digest = (
            pending.key, pending.password, pending.freshness, pending.digest,
        )  # fmt: skip
        user = key[0]
        start = self.clock()
        try:
            answer = await self._login_once(key, password_s, pending.client_addr)
        except BackendUnavailable as err:
            elapsed = self.clock() - start
            self.undecided.spend(user, digest)
            if freshness is Freshness.STALE:
                self.metrics.count_hit("stale")
                return Result(
                    Verdict.OK, "authenticated", user, elapsed, err.kind, err.detail,
                    source="stale-cache",
                )  # fmt: skip
            return Result(
                Verdict.TEMPFAIL,
                f"IMAP server unavailable ({err.kind})",
                user,
                elapsed,
                err.kind,
                err.detail,
                source="imap",
            )
        elapsed = self.clock() - start
        self.undecided.forget(user)
        if answer is LoginResult.ACCEPTED:
            self.cache.store(key, password_s)
            return Result(Verdict.OK, "authenticated", user, elapsed, source="imap")
        if freshness is Freshness.STALE:
            self.cache.drop(key)  # the IMAP server now rejects what it once accepted
        self.negative.add(key, password_s)
        self.budget.spend(user, digest)
        return Result(Verdict.NO, "authentication failed", user, elapsed, source="imap")

    async def _login_once(self, key: Key, password: str, client_addr: str = "") -> LoginResult:
        """Ask the backend; identical checks already in flight share that one answer."""
        flight = (key, self._hasher.digest(key[0], password))
        pending = self._pending.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[LoginResult] = asyncio.get_running_loop().create_future()
        self._pending[flight] = future
        self.metrics.in_flight.inc()
        try:
            started = time.monotonic()
            answer = await self.backend.login(key[0], password, client_addr)
            self.metrics.imap_login_seconds.observe(time.monotonic() - started)
            future.set_result(answer)
            return answer
        except BaseException as err:
            if isinstance(err, BackendUnavailable):
                self.metrics.imap_errors.labels(err.kind).inc()
                future.set_exception(err)
            else:  # cancelled (shutdown) or a bug: sharers get an outage, not a verdict
                future.set_exception(BackendUnavailable("protocol", "check abandoned"))
            future.exception()  # mark retrieved: there may be no sharer to read it
            raise
        finally:
            self.metrics.in_flight.dec()
            del self._pending[flight]

    def _refresh_later(self, key: Key, password: str) -> None:
        """Re-verify a cached success in the background (at most one per user at a time)."""
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        task = asyncio.get_running_loop().create_task(self._refresh(key, password))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(lambda _t: self._refreshing.discard(key))

    async def _refresh(self, key: Key, password: str) -> None:
        try:
            answer = await self._login_once(key, password)
        except BackendUnavailable as err:
            log.info('refresh user="%s" kept: IMAP unavailable (%s)', shown(key[0]), err.kind)
            return
        if answer is LoginResult.ACCEPTED:
            self.cache.store(key, password)
            log.debug('refresh user="%s" still valid', shown(key[0]))
        else:
            self.cache.drop(key)
            log.info('refresh user="%s" dropped: the IMAP server now rejects it', shown(key[0]))

    def close(self) -> None:
        """Cancel background refreshes (on shutdown or reload)."""
        for task in list(self.background):
            task.cancel()
