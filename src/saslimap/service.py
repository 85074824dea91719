"""Authentication policy: from a raw request to a verdict, with no sockets.

This module owns the order of decisions between "a client sent these fields"
and "answer OK, NO, or tell the client to try later", and the one log line per
check.  The pieces it orders live next to it: the input checks
(:mod:`saslimap.names`), the caches (:mod:`saslimap.cache`), the budgets and
per-IP limits (:mod:`saslimap.limits`), the replay memo of the fast paths
(:mod:`saslimap.replay`), and the IMAP step with its shared logins
(:mod:`saslimap.inflight`).  The backend is anything with an async ``login``
(:class:`LoginBackend`), so tests use a small fake and the daemon uses
:class:`saslimap.imap.ImapBackend`.

Order of decisions for a well-formed request:

0. (Dovecot listener only: the client's address is known) the address over its
   failure budget, or filled by checks in flight -> "try later" (``ratelimited``),
   without asking IMAP or any cache; every NO adds to the address's penalty, a
   delay before the answer;
1. a fresh cached success for this password -> OK (re-verified in the
   background once older than ``refresh_after``);
2. the same wrong password seen within ``negative_ttl`` -> NO;
3. user over the failure budget (per user and client network where the address
   is known), and the password is not their cached or last verified one -> NO
   when one of theirs is known (it is almost surely wrong, and must count), else
   "try later"; without asking IMAP, but for one check per user per
   ``trickle_interval`` (:mod:`saslimap.inflight`);
4. ask IMAP (concurrent identical checks share one login); accepted -> OK and
   cache; rejected -> NO, remember, spend budget; unavailable -> OK only from a
   stale cached success, else TEMPFAIL.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from mailgate import logs
from saslimap.cache import Freshness, Hasher
from saslimap.config import CacheConfig, IpLimitsConfig, LimitsConfig, UsersConfig
from saslimap.inflight import MIN_TRACKED, LoginBackend, Pending, SharedLogins, Stores
from saslimap.limits import Decision, IpLimiter, Verified, budget_key
from saslimap.metrics import Metrics
from saslimap.names import Names, Refused
from saslimap.replay import ReplayMemo, Seen, SeenRefusal
from saslimap.results import Kind, Result, Verdict, line, log, shown
from saslimap.shared import IpAdmission, SharedChecks

# Re-exported: importers have always found these here.
__all__ = [
    "Authenticator", "Kind", "LoginBackend", "Pending", "Result", "Verdict", "shown",
]  # fmt: skip


class Authenticator:
    """Checks credentials against a backend according to the configured policy."""

    # The replay memo's own method and stores, bound once in __init__: the fast paths
    # reach them with no call or lookup more than when they lived in this class.
    repeat: Callable[[bytes], bytes | None]
    """The framed reply if one read repeats a request answered from a cache (logged)."""
    _seen: dict[tuple[str | bytes, str | bytes, str | bytes], Seen]
    _learn_frame: Callable[[bytes, Seen | SeenRefusal], None]

    def __init__(
        self,
        users: UsersConfig,
        backend: LoginBackend,
        clock: Callable[[], float] = time.monotonic,
        *,
        cache: CacheConfig | None = None,
        limits: LimitsConfig | None = None,
        metrics: Metrics | None = None,
        iplimits: IpLimitsConfig | None = None,
        verified: Verified | None = None,
        shared: SharedChecks | None = None,
    ) -> None:
        self.users = users
        self.shared = shared
        self.backend = backend
        self.clock = clock
        self.limits = limits = limits or LimitsConfig()
        self.metrics = metrics or Metrics()
        self._hasher = hasher = Hasher()
        stores = Stores.build(cache or CacheConfig(), limits, hasher, clock, verified)
        self.cache, self.negative = stores.cache, stores.negative
        self.verified = stores.verified  # handed on to the next configuration's on SIGHUP
        self.budget, self.undecided = stores.budget, stores.undecided
        self.iplimits = IpLimiter.from_config(
            iplimits or IpLimitsConfig(),
            clock,
            max(MIN_TRACKED, (cache or CacheConfig()).max_entries),
        )
        self.names = Names(users)
        self.logins = SharedLogins(backend, stores, hasher, clock, self.metrics, shared)
        self.background = self.logins.background
        self.memo = ReplayMemo(self.cache, clock, self.metrics)
        self.repeat = self.memo.repeat
        self._seen = self.memo.names
        self._learn_frame = self.memo.learn_frame

    @property
    def failure_delay(self) -> float:
        """Seconds a NO answer waits (0: answer at once)."""
        return self.limits.failure_delay

    def cache_sizes(self) -> dict[str, int]:
        """Entries in each cache (for the metrics gauge)."""
        return {"positive": len(self.cache), "negative": len(self.negative)}

    def imap_user(self, login: str, realm: str) -> str:
        """The user name the IMAP server is asked about (login joined with the realm)."""
        return self.names.imap_user(login, realm)

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

    async def verify_client(
        self, login: str, password: str, service: str, client_addr: str
    ) -> tuple[Result, float]:
        """:meth:`verify` for a client whose address is known, under the per-IP limits.

        Returns the result and the seconds to wait before answering it: the
        address's penalty after a NO (on top of any failure delay), else 0.
        With a shared store, the per-IP and the per-user steps share one state
        deadline: the check never waits for Redis longer than that in all.
        """
        if self.shared is None:
            return await self._verify_client(login, password, service, client_addr)
        with self.shared.state.request():
            return await self._verify_client(login, password, service, client_addr)

    async def _verify_client(
        self, login: str, password: str, service: str, client_addr: str
    ) -> tuple[Result, float]:
        user = budget_key(login, fold_case=self.limits.fold_case)
        shared: IpAdmission | None = None
        if self.shared is not None and self.iplimits.counts(client_addr):
            # Every host's failures from this network (None: the store is down, and
            # this host's own count stands).
            shared = await self.shared.ip_admit(client_addr, user, password)
            if shared is not None and shared.kind == "exempt":
                self.iplimits.succeeded(client_addr)  # a right password came through another host
        decision = self.iplimits.decide(client_addr)
        if decision.allowed and shared is not None and shared.kind in ("spent", "busy"):
            busy = shared.kind == "busy"
            decision = Decision(False, 0.0 if busy else self.iplimits.max_delay, busy=busy)
        if not decision.allowed and shared is not None and shared.kind == "go":
            assert self.shared is not None
            self.shared.ip_settle(shared, "refused")  # only ends its count in flight
        if not decision.allowed:
            self.metrics.count_request("ratelimited")
            log.info('auth user="%s" rip=%s result=ratelimited source=ip-limit',
                     shown(login), shown(client_addr))  # fmt: skip
            # "Try later", never a wrong password: a user sharing the address (a carrier
            # NAT) must not be refused or banned for someone else's guesses.  Decided
            # before any cache is looked at, so it tests no password either.
            why = (
                "too many checks in progress from this address, try later" if decision.busy
                else "too many failed logins from this address, try later"
            )  # fmt: skip
            refused = Result(Verdict.TEMPFAIL, why, kind="ratelimited", source="ip-limit")
            return refused, decision.penalty
        # The pair counts in flight from now (before the first await) until answered.
        end = self.iplimits.begin(client_addr, user, password)
        try:
            result = await self.verify(login, password, service, "", client_addr)
            delay = self.iplimits.answered(client_addr, result.verdict, user, password)
            if shared is not None and self.shared is not None and shared.kind in ("go", "exempt"):
                self.shared.ip_settle(shared, result.verdict.value)  # the answer does not wait
                if shared.kind == "go" and result.verdict is Verdict.NO:
                    # Every host's failures from the network, this one included.
                    delay = max(delay, self.iplimits.penalty(shared.failures + 1))
            return result, delay
        finally:
            end()

    async def finish(self, decided: Result | Pending) -> Result:
        """What :meth:`decide` left: the IMAP login if needed, and any failure delay."""
        result = decided if isinstance(decided, Result) else await self.complete(decided)
        if result.verdict is Verdict.NO and self.limits.failure_delay > 0:
            # Jitter so timing says nothing about why; not a secret, so plain random.
            await asyncio.sleep(self.limits.failure_delay * random.uniform(0.5, 1.5))  # noqa: S311
        return result

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
        except Refused as refusal:
            decided = Result(Verdict.NO, str(refusal), refusal.user, kind="bad_request")
        if isinstance(decided, Result):
            self._record(decided, login, service, realm)
        return decided

    async def complete(self, pending: Pending) -> Result:
        """Ask the IMAP server for a check :meth:`decide` could not answer; logs it."""
        result = await self.logins.complete(pending)
        self._record(result, pending.key[0], pending.key[2], pending.key[1])
        return result

    def _record(
        self, result: Result, login: str | bytes, service: str | bytes, realm: str | bytes
    ) -> None:
        self.metrics.count_request(result.label)
        if log.isEnabledFor(logging.INFO):
            logs.info_line(log, line(result, login, service, realm))

    def _decide(
        self,
        login: str | bytes,
        password: str | bytes,
        service: str | bytes,
        realm: str | bytes,
        client_addr: str = "",
        frame: bytes = b"",
    ) -> Result | Pending:
        key, password_s = self.names.check(login, password, service, realm)
        user = key[0]
        freshness = self.cache.lookup(key, password_s)
        if freshness is Freshness.FRESH or freshness is Freshness.REFRESH:
            self.metrics.count_hit("positive")
            if freshness is Freshness.REFRESH:
                self.logins.refresh_later(key, password_s)
            return self.memo.remember(login, service, realm, key)
        refused_until = self.negative.expires(key, password_s)
        if refused_until is not None:
            self.metrics.count_hit("negative")
            refusal = Result(Verdict.NO, "authentication failed", user, source="negative-cache")
            if frame and not self.limits.failure_delay:  # a delayed NO must wait each time
                self.memo.learn_refusal(frame, refusal, key, refused_until, (login, service, realm))
            return refusal
        # Over the budgets, or counted in flight from now (see saslimap.inflight).
        return self.logins.admit(key, password_s, freshness, client_addr)

    def close(self) -> None:
        """Cancel background refreshes (on shutdown or reload)."""
        self.logins.close()
