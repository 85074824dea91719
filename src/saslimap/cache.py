"""What saslimap remembers between checks: verified passwords and recent wrong ones.

This module owns the keyed hash (:class:`Hasher`) and two small, socket-free
stores, each on an injected clock so expiry is tested without sleeping:

- :class:`CredentialCache` — successes only.  It keeps an HMAC-SHA256 of the
  password under a random per-process key (never the password, never a plain
  hash that could be brute-forced offline), compared in constant time.  An entry
  is *fresh* until ``refresh_after``, *usable but due for re-verification* until
  ``ttl``, and *stale* (usable only while the IMAP server is unavailable) until
  ``ttl + stale_if_error``.
- :class:`NegativeCache` — a wrong password remembered briefly, so a phone that
  retries the same wrong password does not reach IMAP (or the budget) again.

The brute-force budgets are limits, not caches: :mod:`saslimap.limits`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable

from cachetools import TTLCache

Clock = Callable[[], float]
Key = tuple[str, str, str]  # (IMAP user, realm, service)


_BLOCK = 64  # SHA-256's block size, in bytes


class Hasher:
    """HMAC-SHA256 under a random key that lives only in this process's memory."""

    def __init__(self, key: bytes | None = None) -> None:
        key = key or secrets.token_bytes(32)
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        # RFC 2104 with the keyed inner and outer states computed once: a digest is
        # then two state copies.  hmac.digest() sets OpenSSL's HMAC up anew on every
        # call, which measured as most of a cache hit's latency in the daemon.
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key.ljust(_BLOCK, b"\0")))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key.ljust(_BLOCK, b"\0")))

    def digest(self, user: str, password: str) -> bytes:
        """Bind the password to the user so equal passwords of two users differ."""
        return self.digest_raw(
            user.encode("utf-8", "surrogatepass"), password.encode("utf-8", "surrogatepass")
        )

    def digest_bytes(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` as it is (a whole request as it came off the wire)."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def digest_raw(self, user: bytes, password: bytes) -> bytes:
        """:meth:`digest` of the UTF-8 bytes (a request's password as it came off the wire)."""
        return self.digest_bytes(b"%s\0%s" % (user, password))


class Freshness(enum.Enum):
    """How a cached success may be used."""

    FRESH = "fresh"  # answer OK
    REFRESH = "refresh"  # answer OK and re-verify in the background
    STALE = "stale"  # answer OK only if IMAP is unavailable


class Entry:
    """One verified success; ``current`` turns False once the cache lets go of it.

    The authenticator's fast path holds entries of users it answered recently
    and trusts one only while it is current, so a dropped, replaced, evicted or
    expired entry is never used from there.
    """

    __slots__ = ("current", "digest", "verified_at")

    def __init__(self, digest: bytes, verified_at: float) -> None:
        self.digest = digest
        self.verified_at = verified_at
        self.current = True


class _Entries(TTLCache[Key, Entry]):
    """A TTLCache that marks the entries it evicts or expires as no longer current."""

    def popitem(self) -> tuple[Key, Entry]:
        key, entry = super().popitem()
        entry.current = False
        return key, entry

    def expire(self, time: float | None = None) -> list[tuple[Key, Entry]]:
        expired: list[tuple[Key, Entry]] = super().expire(time)
        for _, entry in expired:
            entry.current = False
        return expired


class CredentialCache:
    """Verified successes, keyed by user, realm and service."""

    def __init__(
        self,
        hasher: Hasher,
        clock: Clock,
        *,
        ttl: float = 3600.0,
        refresh_after: float = 300.0,
        stale_if_error: float = 4 * 3600.0,
        max_entries: int = 100_000,
    ) -> None:
        self.hasher = hasher
        self.clock = clock
        self.ttl = ttl
        self.refresh_after = refresh_after
        self.lifetime = ttl + stale_if_error  # how long an entry is of any use
        self.max_entries = max_entries
        # The store itself forgets entries once they are of no use, even as stale.
        self._store = _Entries(maxsize=max_entries, ttl=self.lifetime, timer=clock)

    def __len__(self) -> int:
        return len(self._store)

    def lookup(self, key: Key, password: str) -> Freshness | None:
        """How a matching entry may be used, or ``None`` (no entry, or another password)."""
        return self.lookup_digest(key, self.hasher.digest(key[0], password))

    def entry(self, key: Key) -> Entry | None:
        """The user's current entry, if any (for :meth:`is_fresh` later)."""
        return self._store.get(key)

    def is_fresh(self, entry: Entry, digest: bytes) -> bool:
        """Whether a held entry is still current, fresh, and for this password's digest."""
        return (
            entry.current
            and self.clock() - entry.verified_at < self.refresh_after
            and hmac.compare_digest(entry.digest, digest)
        )

    def lookup_digest(self, key: Key, digest: bytes) -> Freshness | None:
        """:meth:`lookup` for a password already hashed with :attr:`hasher`."""
        entry = self._store.get(key)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None
        age = self.clock() - entry.verified_at
        if age < self.refresh_after:
            return Freshness.FRESH
        if age < self.ttl:
            return Freshness.REFRESH
        return Freshness.STALE

    def store(self, key: Key, password: str, age: float = 0.0) -> None:
        """Remember a password the IMAP server accepted ``age`` seconds ago (on any host)."""
        if self._store.maxsize > 0:
            self.drop(key)
            self._store[key] = Entry(self.hasher.digest(key[0], password), self.clock() - age)

    def drop(self, key: Key) -> None:
        """Forget a user's entry (IMAP now rejects it: the password changed)."""
        old = self._store.pop(key, None)
        if old is not None:
            old.current = False


class NegativeCache:
    """Wrong passwords seen recently, per user; HMACs only."""

    def __init__(
        self, hasher: Hasher, clock: Clock, *, ttl: float = 60.0, max_entries: int = 100_000
    ) -> None:
        self.hasher = hasher
        self.clock = clock
        self.ttl = ttl
        # (key, password HMAC) -> when it was added; the store expires it ttl later.
        self._store: TTLCache[tuple[Key, bytes], float] = TTLCache(
            maxsize=max_entries, ttl=ttl, timer=clock
        )

    def __len__(self) -> int:
        return len(self._store)

    def _key(self, key: Key, password: str) -> tuple[Key, bytes]:
        return key, self.hasher.digest(key[0], password)

    def expires(self, key: Key, password: str) -> float | None:
        """When the entry for this password goes (clock time), or None if there is none."""
        added = self._store.get(self._key(key, password))
        return None if added is None else added + self.ttl

    def add(self, key: Key, password: str) -> None:
        """Remember that the IMAP server rejected this password for this user."""
        if self._store.maxsize > 0:
            self._store[self._key(key, password)] = self.clock()
