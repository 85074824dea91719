"""Checks in flight: what a request that needs the IMAP server goes through.

This module owns the last step of the decision order (:mod:`saslimap.service`)
and the work behind it:

- a check of a password never verified is held back while the user's budgets
  are used up (by wrong passwords, by checks still in flight, or by checks that
  ended without a verdict): answered "try later", so the answer cannot lock the
  real user out or get them banned, except where a password of the user's is
  known and this is not it (NO, so held guesses still count); over a spent
  budget one check per user per ``trickle_interval`` still goes to IMAP (except
  where the budget is one client address's: that address alone is held
  back).  A check is
  otherwise counted against the budgets from the moment it is decided
  (:meth:`SharedLogins.admit`), not from when its task first runs: the mux
  server decides every request of one event-loop turn before any task starts,
  and a burst of guesses would all pass a budget with one unit left;
- identical checks in flight (same user, realm, service and password) share one
  IMAP login and count once;
- the answer teaches the caches and budgets: accepted -> cached; rejected ->
  remembered by the negative cache, budget spent; unavailable -> OK only from a
  stale cached success, else TEMPFAIL, and counted as undecided;
- cached successes due for re-verification are re-checked in the background
  (at most one per user at a time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from cachetools import TTLCache

from mailgate.imap import BackendUnavailable, LoginResult
from saslimap.cache import CredentialCache, Freshness, Hasher, Key, NegativeCache
from saslimap.config import CacheConfig, LimitsConfig
from saslimap.limits import FailureBudget, Trickle, Verified, budget_key
from saslimap.metrics import Metrics
from saslimap.results import Result, Verdict, log, shown
from saslimap.shared import Admission, Outcome, SharedChecks

_HELD = {
    "busy": "too many checks in progress, try later",
    "address": "too many failed or unanswered checks from this address, try later",
    "user": "too many failed or unanswered checks for this user, try later",
}


class LoginBackend(Protocol):
    """Something that can check a user name and password (the IMAP server)."""

    async def login(self, user: str, password: str, client_addr: str = "") -> LoginResult:
        """Return the verdict, or raise BackendUnavailable when there is none."""
        ...


@dataclass(frozen=True)
class Pending:
    """A check that needs the IMAP server (from :meth:`Authenticator.decide`)."""

    key: Key
    password: str = field(repr=False)
    freshness: Freshness | None
    client_addr: str = ""
    digest: bytes = field(default=b"", repr=False)  # the password's HMAC, as counted in flight
    counted: str = ""  # the budget's key (budget_key: user and client network)
    name: str = ""  # the user's own key (the ceiling, the trickle, the verified memo)


@dataclass(frozen=True)
class Stores:
    """What an IMAP answer updates: the caches and the two per-user budgets."""

    cache: CredentialCache
    negative: NegativeCache
    budget: FailureBudget  # wrong passwords, per budget_key (user and client network)
    # Distinct passwords whose check ended without a verdict (IMAP slow or down), keyed
    # like the budget above. Under Dovecot's per-IP penalty a guess can outlast the
    # response deadline; without this such guesses would reach IMAP forever without
    # ever filling the budget above. Per client network too: keyed on the user alone,
    # an attacker slowed by the penalty on its own address would lock the user out.
    undecided: FailureBudget
    ceiling: FailureBudget  # wrong passwords per user from every address together
    trickle: Trickle  # over a spent budget or ceiling: one check per user per interval
    verified: Verified  # the last verified password per user: never held back
    fold_case: bool = True

    @classmethod
    def build(
        cls,
        cache: CacheConfig,
        limits: LimitsConfig,
        hasher: Hasher,
        clock: Callable[[], float],
        verified: Verified | None = None,
    ) -> Stores:
        """Empty stores as the ``[cache]`` and ``[limits]`` sections set them.

        The budgets track as many users as the cache holds entries (at least
        ``MIN_TRACKED``): a flood of made-up names evicts the least recently
        failing, and the bound is the operator's, not a constant.  ``verified``:
        the previous configuration's, kept across a reload unless its settings
        changed (``remember_verified = 0`` then empties it).
        """
        limit, window = limits.failure_budget, limits.failure_window
        tracked = max(MIN_TRACKED, cache.max_entries)
        if verified is None or (verified.remember, verified.max_users) != (
            limits.remember_verified, tracked,
        ):  # fmt: skip
            verified = Verified(clock, limits.remember_verified, tracked)  # settings changed
        return cls(
            CredentialCache(
                hasher, clock, ttl=cache.ttl, refresh_after=cache.refresh_after,
                stale_if_error=cache.stale_if_error, max_entries=cache.max_entries,
            ),
            NegativeCache(hasher, clock, ttl=cache.negative_ttl, max_entries=cache.max_entries),
            FailureBudget(clock, limit=limit, window=window, max_users=tracked),
            FailureBudget(clock, limit=limit, window=window, max_users=tracked),
            FailureBudget(clock, limit=limits.user_ceiling, window=window, max_users=tracked),
            Trickle(clock, limits.trickle_interval, tracked),
            verified,
            limits.fold_case,
        )  # fmt: skip


MIN_TRACKED = 10_000
"""The fewest users (and client networks) the budgets track, whatever the cache's bound."""


class SharedLogins:
    """IMAP logins for checks in flight: counted, shared when identical, learned from."""

    def __init__(
        self,
        backend: LoginBackend,
        stores: Stores,
        hasher: Hasher,
        clock: Callable[[], float],
        metrics: Metrics,
        shared: SharedChecks | None = None,
    ) -> None:
        self.backend = backend
        self.stores = stores
        self.shared = shared
        self.clock = clock
        self.metrics = metrics
        self._hasher = hasher
        self._pending: dict[tuple[Key, bytes], asyncio.Future[LoginResult]] = {}
        # Passwords IMAP rejected here lately (user key, HMAC), for as long as another
        # host's cached entry of them could live: such an entry is not answered from,
        # even if the shared store missed being told (a blip during the rejection).
        cache = stores.cache
        self._rejected: TTLCache[tuple[Key, bytes], bool] = TTLCache(
            max(1, min(cache.max_entries, MIN_TRACKED)), cache.lifetime or 1e-9, timer=clock
        )
        self.background: set[asyncio.Task[None]] = set()
        self._refreshing: set[Key] = set()

    def admit(
        self, key: Key, password: str, freshness: Freshness | None, client_addr: str
    ) -> Result | Pending:
        """A refusal if the user's budgets are used up, else a check counted in flight from now.

        A password that was once verified (``freshness`` not ``None``) is never
        refused here: over budget, only the cached verified password still works.
        """
        user = key[0]
        s = self.stores
        name = budget_key(user, fold_case=s.fold_case)
        counted = budget_key(user, client_addr, fold_case=s.fold_case)
        if freshness is None:
            held = self._held(name, counted)
            # The user's own last verified password is never held back (its HMAC is
            # computed only here, for a check that would otherwise be held).
            if held and not s.verified.knows(name, password):
                guessed = s.budget.spent(counted) or s.ceiling.spent(name)
                if guessed and (s.cache.entry(key) is not None or name in s.verified):
                    # A password of the user's is known and this is not it: answered as
                    # the wrong password it almost surely is, so held guesses still count
                    # (per-IP limits, fail2ban on 535) and the known password cannot be
                    # tested against for free.  A changed password waits for a trickle
                    # slot or the window, as before.
                    return Result(
                        Verdict.NO, "authentication failed", user, kind="ratelimited",
                        source="budget",
                    )  # fmt: skip
                return Result(Verdict.TEMPFAIL, held, user, kind="ratelimited", source="budget")
        digest = self._hasher.digest(name, password)
        for budget, where in ((s.budget, counted), (s.undecided, counted), (s.ceiling, name)):
            budget.begin(where, digest)
        return Pending(key, password, freshness, client_addr, digest, counted, name)

    def _held(self, name: str, counted: str) -> str:
        """Why a check of a password never verified is held back ("try later"), or "".

        "Try later", not "wrong password": the real user's right password may be
        among the held, and a wrong-password answer would let an attacker get the
        real user refused, or banned by fail2ban (:meth:`admit` answers NO only
        where a password of the user's is known and this one is not it).
        """
        s = self.stores
        here = (s.budget, s.undecided)  # both per user and client network (when known)
        if not (any(b.exhausted(counted) for b in here) or s.ceiling.exhausted(name)):
            return ""
        spent_here = any(b.spent(counted) for b in here)
        if not (spent_here or s.ceiling.spent(name)):
            # Only checks still in flight fill a budget: they may yet be right.
            return "too many checks in progress, try later"
        if counted != name and spent_here and not s.ceiling.spent(name):
            # This address's guesses (wrong, or slowed past the deadline by the IMAP
            # server's own penalty for that address): held back, and no trickle, so
            # what reaches IMAP from it stays at the budget; other addresses go on.
            return "too many failed or unanswered checks from this address, try later"
        if not s.trickle.take(name):
            return "too many failed or unanswered checks for this user, try later"
        return ""

    async def complete(self, pending: Pending) -> Result:
        """Ask the other hosts (if shared), then the IMAP server; not logged.

        With a shared store, every host's caches and budgets are consulted
        first (they may answer, or hold the check back, as this host's own
        would); where the store is down this host's own decision stands.
        """
        s = self.stores
        admission: Admission | None = None
        try:
            if self.shared is not None:
                known = pending.freshness is not None or s.verified.knows(
                    pending.name, pending.password
                )
                with self.shared.state.request():  # one deadline for every step
                    admission = await self._shared_admit(pending, known)
                if admission is not None and admission.kind != "go":
                    return self._from_shared(pending, admission)
                if admission is not None and admission.stale and pending.freshness is None:
                    # Verified on another host long ago: OK only while IMAP is down.
                    pending = replace(pending, freshness=Freshness.STALE)
            self.metrics.cache_misses.inc()
            result = await self._ask(pending)
            if admission is not None and self.shared is not None:
                self.shared.settle(admission, _outcome(result))  # the answer does not wait
            return result
        finally:  # begun by admit()
            s.budget.end(pending.counted, pending.digest)
            s.undecided.end(pending.counted, pending.digest)
            s.ceiling.end(pending.name, pending.digest)

    async def _shared_admit(self, pending: Pending, known: bool) -> Admission | None:
        """Every host's answer, where a cached entry is one this host may answer from."""
        assert self.shared is not None
        p = pending
        admission = await self.shared.admit(
            p.key, p.password, p.name, p.counted, p.client_addr, known
        )
        if (
            admission is not None
            and admission.kind == "hit"
            and (
                (p.key, p.digest) in self._rejected
                or not self.shared.entry_is_genuine(p.key, admission)
            )
        ):
            # Rejected here since, or not written by a host with the secret (a forged
            # time): decided as if there were no entry.
            admission = await self.shared.admit(
                p.key, p.password, p.name, p.counted, p.client_addr, known, skip_entry=True
            )
        return admission

    def _from_shared(self, pending: Pending, admission: Admission) -> Result:
        """The answer another host's state gives, learned into this host's own."""
        s, user = self.stores, pending.key[0]
        if admission.kind == "hit":
            self.metrics.count_hit("shared")
            s.cache.store(pending.key, pending.password, age=admission.age)
            s.verified.learn(pending.name, pending.password)
            if admission.age >= s.cache.refresh_after:
                self.refresh_later(pending.key, pending.password)
            return Result(Verdict.OK, "authenticated", user, source="shared-cache")
        if admission.kind == "neg":
            self.metrics.count_hit("negative")
            s.negative.add(pending.key, pending.password)
            return Result(Verdict.NO, "authentication failed", user, source="shared-negative")
        if admission.known:  # as admit() answers: a known password, and this is not it
            return Result(
                Verdict.NO, "authentication failed", user, kind="ratelimited",
                source="shared-budget",
            )  # fmt: skip
        return Result(
            Verdict.TEMPFAIL, _HELD.get(admission.held, _HELD["user"]), user, kind="ratelimited",
            source="shared-budget",
        )  # fmt: skip

    async def _ask(self, pending: Pending) -> Result:
        key, password, freshness, digest = (
            pending.key, pending.password, pending.freshness, pending.digest,
        )  # fmt: skip
        s = self.stores
        user = key[0]
        start = self.clock()
        try:
            answer = await self._login_once(key, password, digest, pending.client_addr)
        except BackendUnavailable as err:
            elapsed = self.clock() - start
            s.undecided.spend(pending.counted, digest)
            if freshness is Freshness.STALE:
                self.metrics.count_hit("stale")
                return Result(
                    Verdict.OK, "authenticated", user, elapsed, err.kind, err.detail,
                    source="stale-cache",
                )  # fmt: skip
            return Result(
                Verdict.TEMPFAIL, f"IMAP server unavailable ({err.kind})", user, elapsed,
                err.kind, err.detail, source="imap",
            )  # fmt: skip
        elapsed = self.clock() - start
        s.undecided.forget(pending.counted)
        if answer is LoginResult.ACCEPTED:
            self._rejected.pop((key, digest), None)
            s.cache.store(key, password)
            s.verified.learn(pending.name, password)
            return Result(Verdict.OK, "authenticated", user, elapsed, source="imap")
        if freshness is Freshness.STALE:
            s.cache.drop(key)  # the IMAP server now rejects what it once accepted
        s.verified.reject(pending.name, password)
        self._rejected[key, digest] = True
        s.negative.add(key, password)
        s.budget.spend(pending.counted, digest)
        s.ceiling.spend(pending.name, digest)
        return Result(Verdict.NO, "authentication failed", user, elapsed, source="imap")

    async def _login_once(
        self, key: Key, password: str, digest: bytes, client_addr: str = ""
    ) -> LoginResult:
        """Ask the backend; identical checks already in flight share that one answer."""
        flight = (key, digest)
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

    def refresh_later(self, key: Key, password: str) -> None:
        """Re-verify a cached success in the background (at most one per user at a time)."""
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        task = asyncio.get_running_loop().create_task(self._refresh(key, password))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(lambda _t: self._refreshing.discard(key))

    async def _refresh(self, key: Key, password: str) -> None:
        name = budget_key(key[0], fold_case=self.stores.fold_case)
        digest = self._hasher.digest(name, password)
        try:
            answer = await self._login_once(key, password, digest)
        except BackendUnavailable as err:
            log.info('refresh user="%s" kept: IMAP unavailable (%s)', shown(key[0]), err.kind)
            return
        accepted = answer is LoginResult.ACCEPTED
        if accepted:
            self.stores.cache.store(key, password)
            self.stores.verified.learn(name, password)
            log.debug('refresh user="%s" still valid', shown(key[0]))
        else:
            self.stores.cache.drop(key)
            self.stores.verified.reject(name, password)
            log.info('refresh user="%s" dropped: the IMAP server now rejects it', shown(key[0]))
        if accepted:
            self._rejected.pop((key, digest), None)
        else:
            self._rejected[key, digest] = True
        if self.shared is not None:
            self.shared.learn(key, password, name, "ok" if accepted else "dropped")

    def close(self) -> None:
        """Cancel background refreshes (on shutdown or reload)."""
        for task in list(self.background):
            task.cancel()


def _outcome(result: Result) -> Outcome:
    """What a check's answer teaches the other hosts."""
    if result.source != "imap":
        return "unavailable"  # answered from a stale entry: IMAP gave no verdict
    if result.verdict is Verdict.OK:
        return "ok"
    return "no" if result.verdict is Verdict.NO else "unavailable"
