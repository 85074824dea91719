"""Brute-force limits: distinct wrong passwords counted in a sliding window.

This module owns one counter and the two limits built on it, all pure and
driven by an injected clock (no sockets, no sleeping):

- :class:`WindowCounter` — distinct failures (password HMACs) per key within a
  sliding window: a phone retrying the same wrong password counts once.
- :class:`FailureBudget` — per user (:func:`budget_key`: per user and client
  network where the address is known, so one address's guesses never spend
  the budget of the user's own logins from another).  Checks still in flight
  count from the moment they are decided (identical ones once), so a burst of
  guesses cannot all slip past a budget with one unit left.
- :class:`Trickle` — over a user's budget, one check per user per interval
  still reaches IMAP: an attacker who knows only a user name can slow that
  user's first login, never refuse it.
- :class:`IpLimiter` — per client address (IPv6 per /64), where the client's
  address is known (the Dovecot protocol carries it, saslauthd's does not):

  - each counted failure raises a penalty, a delay before the failure answer
    (``base_delay`` doubling up to ``max_delay``), as Dovecot does;
  - at ``budget`` failures within ``window``, checks in flight included, the
    address is told "try later" at once, without asking IMAP or any cache,
    until the window slides on;
  - a successful login exempts the address for ``exempt_after_success`` seconds
    (an office NAT with one user's typo does not punish the others);
  - addresses in ``trusted_networks`` are never limited.

The authenticator (:mod:`saslimap.service`) decides with both; the listeners
only pass the client's address on and carry out the answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cachetools import TTLCache

from saslimap.cache import Hasher
from saslimap.config import IpLimitsConfig
from saslimap.results import Verdict

Clock = Callable[[], float]


def network_key(address: str) -> str:
    """The unit of limiting: the IPv4 address, or the IPv6 /64 it is in."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address  # not an address (unix socket, "unknown"): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class WindowCounter:
    """Distinct failures (password HMACs) per key within a sliding window.

    A failure counts from when it last happened until ``window`` seconds later;
    the same HMAC again only moves that time on.  At most ``max_keys`` keys are
    tracked (the least recently failing go first), so a flood of keys is bounded.
    """

    def __init__(self, clock: Clock, window: float, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.window = window
        # key -> {HMAC: when it last failed}; the store drops a key a window after its
        # last failure (re-inserting restarts its TTL: a key stays tracked while failing).
        self._keys: TTLCache[str, dict[bytes, float]] = TTLCache(max_keys, window, timer=clock)

    def _pruned(self, key: str) -> dict[bytes, float] | None:
        seen = self._keys.get(key)
        if seen is not None:
            cutoff = self.clock() - self.window
            for digest in [d for d, t in seen.items() if t <= cutoff]:
                del seen[digest]
        return seen

    def recent(self, key: str) -> Mapping[bytes, float]:
        """The key's failures within the window, by HMAC (older ones are dropped)."""
        return self._pruned(key) or {}

    def count(self, key: str) -> int:
        """Distinct failures of the key within the window."""
        seen = self._pruned(key)
        return 0 if seen is None else len(seen)

    def add(self, key: str, digest: bytes) -> None:
        """Count a failure (a repeat of one already counted only moves its time on)."""
        seen = self._pruned(key) or {}
        seen[digest] = self.clock()
        self._keys[key] = seen

    def forget(self, key: str) -> None:
        """Clear the key's failures."""
        self._keys.pop(key, None)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def budget_key(user: str, client_addr: str = "", *, fold_case: bool = True) -> str:
    """What a per-user budget counts under: the user as the IMAP server sees it.

    Lower-cased by default as Dovecot's ``%Lu`` lower-cases it, ASCII letters only
    (each case variant must not get a fresh budget, and two names the server
    tells apart, such as "straße" and "strasse", must not share one), and with
    the client's network when an address is known and is one (anything else in
    the field, such as "ip;port", would give every port a budget of its own).
    """
    name = user.translate(_ASCII_LOWER) if fold_case else user
    return f"{name}\0{network_key(client_addr)}" if _is_ip(client_addr) else name


def _is_ip(address: str) -> bool:
    if not address:
        return False
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return True


class Trickle:
    """At most one check per key per ``interval`` seconds (0: none at all)."""

    def __init__(self, clock: Clock, interval: float, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.interval = interval
        self._last: TTLCache[str, float] = TTLCache(max_keys, interval or 1e-9, timer=clock)

    def take(self, key: str) -> bool:
        """Whether a check for ``key`` may go now (and if so, the next waits an interval)."""
        if self.interval <= 0 or key in self._last:
            return False
        self._last[key] = self.clock()
        return True


class Verified:
    """The last password verified per user, as an HMAC, remembered long after the cache drops it.

    It never answers a check: over a budget, a password it knows is let through to
    IMAP (which decides) instead of being held back, so guesses for a user name
    cannot hold back a user verified within ``remember`` seconds, after the cache
    entry expired or a ``SIGHUP`` flushed the caches (the authenticator hands this
    store on to the next one).  Only a user never verified since the process
    started can be slowed by the trickle.  Its own random key: digests from it are
    comparable only with each other.
    """

    def __init__(self, clock: Clock, remember: float, max_users: int = 100_000) -> None:
        self.remember = remember
        self.max_users = max_users
        self.enabled = remember > 0
        self._hasher = Hasher()
        self._known: TTLCache[str, bytes] = TTLCache(max_users, remember or 1e-9, timer=clock)

    def knows(self, name: str, password: str) -> bool:
        """Whether ``password`` is the one last verified for ``name``."""
        known = self._known.get(name)
        return known is not None and hmac.compare_digest(known, self._hasher.digest(name, password))

    def learn(self, name: str, password: str) -> None:
        """``password`` was just verified for ``name``."""
        if self.enabled:
            self._known[name] = self._hasher.digest(name, password)

    def reject(self, name: str, password: str) -> None:
        """The IMAP server refused ``password`` for ``name``: forget it if it was the one known."""
        if self.knows(name, password):
            del self._known[name]

    def __contains__(self, name: object) -> bool:
        """Whether a password was verified for ``name`` within the memo's time."""
        return name in self._known


class FailureBudget:
    """Distinct wrong passwords per user within a sliding window, and checks in flight."""

    def __init__(
        self, clock: Clock, *, limit: int = 10, window: float = 900.0, max_users: int = 100_000
    ) -> None:
        self.limit = limit
        self._failed = WindowCounter(clock, window, max_users)
        # user -> {password HMAC: checks of it in flight}; identical checks share one
        # IMAP login, so they count once.
        self._in_flight: dict[str, dict[bytes, int]] = {}

    def exhausted(self, user: str) -> bool:
        """Whether the user's failures, plus checks of theirs still in flight, use up the budget.

        Counting checks in flight keeps a burst of concurrent guesses from all
        slipping past a budget that has one unit left.
        """
        if self.limit <= 0:
            return False
        recent = self._failed.recent(user)
        flying = self._in_flight.get(user, {})
        return len(recent) + sum(1 for d in flying if d not in recent) >= self.limit

    def spent(self, user: str) -> bool:
        """Whether the user's failures alone, without checks in flight, use up the budget."""
        return 0 < self.limit <= self._failed.count(user)

    def begin(self, user: str, digest: bytes) -> None:
        """A check of the password with this HMAC, which may spend budget, has started."""
        flying = self._in_flight.setdefault(user, {})
        flying[digest] = flying.get(digest, 0) + 1

    def end(self, user: str, digest: bytes) -> None:
        """That check has finished (call after :meth:`spend`, if it failed)."""
        flying = self._in_flight.get(user)
        if flying is None or digest not in flying:
            return
        if flying[digest] > 1:
            flying[digest] -= 1
            return
        del flying[digest]
        if not flying:
            del self._in_flight[user]

    def spend(self, user: str, digest: bytes) -> None:
        """Count the wrong password with this HMAC (a repeat of one already counted is free)."""
        self._failed.add(user, digest)

    def failures(self, user: str) -> int:
        """Distinct wrong passwords within the window."""
        return self._failed.count(user)

    def forget(self, user: str) -> None:
        """Clear the user's count (used when a verdict arrives for the undecided budget)."""
        self._failed.forget(user)


@dataclass(frozen=True)
class Decision:
    """What to do with a request from an address."""

    allowed: bool  # False: refuse without asking IMAP
    penalty: float  # seconds to wait before a FAIL answer
    busy: bool = False  # refused only because of checks in flight (no penalty to wait)


class IpLimiter:
    """Failure counts, penalties and exemptions per client network."""

    def __init__(
        self,
        clock: Clock,
        *,
        budget: int = 30,
        window: float = 900.0,
        base_delay: float = 1.0,
        max_delay: float = 15.0,
        exempt_after_success: float = 3600.0,
        trusted_networks: Sequence[str] = (),
        max_tracked: int = 100_000,
    ) -> None:
        self.budget = budget
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]
        self._failed = FailureBudget(clock, limit=budget, window=window, max_users=max_tracked)
        self._exempt: TTLCache[str, bool] = TTLCache(
            max_tracked, exempt_after_success or 1e-9, timer=clock
        )
        self._exempt_enabled = exempt_after_success > 0
        self._hasher = Hasher()

    @classmethod
    def from_config(
        cls, cfg: IpLimitsConfig, clock: Clock, max_tracked: int = 100_000
    ) -> IpLimiter:
        """The limits an ``[iplimits]`` section sets (``max_tracked``: the store's bound)."""
        return cls(
            clock, budget=cfg.budget, window=cfg.window, base_delay=cfg.base_delay,
            max_delay=cfg.max_delay, exempt_after_success=cfg.exempt_after_success,
            trusted_networks=cfg.trusted_networks, max_tracked=max_tracked,
        )  # fmt: skip

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # "::ffff:10.1.2.3" from a dual-stack listener is 10.1.2.3
        return any(ip in net for net in self.trusted)

    def counts(self, address: str) -> bool:
        """Whether checks from this address are limited at all (known, not trusted)."""
        return bool(address) and not self._trusted(address)

    def decide(self, address: str) -> Decision:
        """Whether to ask IMAP for this address, and the penalty if the answer is FAIL."""
        if not address or self._trusted(address):
            return Decision(True, 0.0)
        key = network_key(address)
        if key in self._exempt:
            return Decision(True, 0.0)
        failures = self._failed.failures(key)
        if self._failed.exhausted(key):
            if self._failed.spent(key):
                return Decision(False, self.max_delay)
            # Checks in flight fill the budget: they may yet be right, so "try later".
            return Decision(False, 0.0, busy=True)
        return Decision(True, self.penalty(failures))

    def begin(self, address: str, user: str, password: str) -> Callable[[], None]:
        """Count a check from ``address`` in flight; call what this returns when it ends.

        Without this, 150 simultaneous guesses from one address all passed a
        budget of 30 before the first answer came back.  The same (user,
        password) pair in flight twice counts once, as its failure would.
        """
        if not address or self._trusted(address):
            return _nothing
        key = network_key(address)
        digest = self._pair(key, user, password)
        self._failed.begin(key, digest)
        return lambda: self._failed.end(key, digest)

    def _pair(self, key: str, user: str, password: str) -> bytes:
        return self._hasher.digest(f"{key}\0{user}", password)

    def answered(self, address: str, verdict: Verdict, user: str, password: str) -> float:
        """Learn from a check's verdict; the delay before answering it (the penalty after NO)."""
        if verdict is Verdict.OK:
            self.succeeded(address)
        elif verdict is Verdict.NO:
            # A failure is a distinct (user, password) pair: a mail client retrying one
            # wrong password is one failure, but one password sprayed over many users
            # is one failure per user.  Bound to the network, not the address: the
            # same pair from two addresses of one IPv6 /64 is one failure, as their
            # limit is one.
            self.failed(address, self._pair(network_key(address), user, password))
            return self.decide(address).penalty
        return 0.0

    def penalty(self, failures: int) -> float:
        """Delay for an address with ``failures`` counted failures: 0, then doubling."""
        if failures <= 0 or self.base_delay <= 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** (failures - 1)))

    def failed(self, address: str, password_digest: bytes) -> None:
        """Count a wrong password from this address (a repeat of the same one is free)."""
        if not address or self._trusted(address):
            return
        key = network_key(address)
        if key in self._exempt:
            return
        self._failed.spend(key, password_digest)

    def succeeded(self, address: str) -> None:
        """A right password from this address: forgive and exempt it for a while."""
        if not address:
            return
        key = network_key(address)
        self._failed.forget(key)
        if self._exempt_enabled:
            self._exempt[key] = True


def _nothing() -> None:
    """Nothing to end: an address that is not counted."""
