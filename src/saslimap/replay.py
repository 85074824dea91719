"""The replay memo: requests answered from a cache, known again at a glance.

A fresh cache hit is the commonest request by far, and most are repeats:
the same client asking with the same bytes again and again.  This module owns
what makes a repeat cheap, at two levels:

- by names: login, service and realm, as they came in, once answered from the
  credential cache, are remembered with their cache entry and their ready-made
  answer and log line (:class:`Seen`), so a repeat is one HMAC and one cache
  check, with nothing decoded, validated or formatted again.  A password whose
  HMAC matches a cached one equals a password that was validated and verified;
- by bytes: a whole request, exactly as it came off the wire, once answered
  that way (or refused by the negative cache, :class:`SeenRefusal`), is
  remembered by its HMAC under a key of its own, so the mux server answers an
  identical request again with one HMAC and one dictionary lookup, without even
  parsing it (:meth:`ReplayMemo.repeat`).

Both trust a cache entry only while the cache still holds it and it is fresh.
The authenticator (:mod:`saslimap.service`) reads :attr:`ReplayMemo.names`
and calls :meth:`ReplayMemo.repeat` directly: these are the paths tuned
against saslauthd (docs/benchmarks.md), so nothing stands between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailgate import logs
from saslimap import protocol
from saslimap.cache import CredentialCache, Entry, Hasher, Key
from saslimap.metrics import Metrics
from saslimap.results import Result, Verdict, line, log

_REPLY_OK = protocol.reply_ok()
_SEEN_MAX = 10_000  # names or requests remembered; cleared (not evicted) beyond


@dataclass(frozen=True)
class Seen:
    """What a fresh cache hit needs, for login, service and realm as they came in."""

    entry: Entry
    user: bytes  # the IMAP user as UTF-8, as the hasher takes it
    ok: Result
    line: str


@dataclass(frozen=True)
class SeenRefusal:
    """What a repeated negative-cache NO needs, for a request's exact bytes."""

    key: Key
    verified: Entry | None  # the user's verified entry when learned: a new one may be this
    expires: float  # when the negative cache lets go of this password (clock time)
    line: str
    reply: bytes


Names = tuple[str | bytes, str | bytes, str | bytes]  # login, service, realm as they came in


class ReplayMemo:
    """Cache answers remembered by names and by whole requests, for the fast paths."""

    def __init__(
        self, cache: CredentialCache, clock: Callable[[], float], metrics: Metrics
    ) -> None:
        self.cache = cache
        self.clock = clock
        self.metrics = metrics
        self.names: dict[Names, Seen] = {}
        # Whole requests by HMAC, under a key of their own (a request's bytes never share
        # a MAC key with user-and-password strings).
        self._frames: dict[bytes, Seen | SeenRefusal] = {}
        self._frame_hasher = Hasher()

    def repeat(self, frame: bytes) -> bytes | None:
        """The framed reply if ``frame`` repeats a request answered from a cache; logged.

        ``frame`` is exactly what one read returned.  It matches only the complete
        bytes of an earlier request that was answered from a cache (given to
        :meth:`learn_frame` or :meth:`learn_refusal`), so a match is a complete
        request with that very password.  A success is answered again while its
        cache entry is still held and fresh; a refusal by the negative cache while
        that entry lasts and no password of the user's has been verified since
        (that one would be checked first).
        """
        seen = self._frames.get(self._frame_hasher.digest_bytes(frame))
        if seen is None:
            return None
        if type(seen) is Seen:
            entry = seen.entry
            if not entry.current or self.clock() - entry.verified_at >= self.cache.refresh_after:
                return None
            self.metrics.count_hit("positive")
            self.metrics.count_request("ok")
            logs.info_line_soon(log, seen.line)
            return _REPLY_OK
        assert type(seen) is SeenRefusal
        if self.clock() >= seen.expires or self.cache.entry(seen.key) is not seen.verified:
            return None
        self.metrics.count_hit("negative")
        self.metrics.count_request("no")
        logs.info_line_soon(log, seen.line)
        return seen.reply

    def learn_frame(self, frame: bytes, seen: Seen | SeenRefusal) -> None:
        """Know ``frame`` (a whole request, nothing before or after it) again by its bytes."""
        if len(self._frames) >= _SEEN_MAX:
            self._frames.clear()  # rare, as for names: they come back on use
        self._frames[self._frame_hasher.digest_bytes(frame)] = seen

    def remember(
        self, login: str | bytes, service: str | bytes, realm: str | bytes, key: Key
    ) -> Result:
        """The OK of a cache hit, after noting the names for the fast path."""
        ok = Result(Verdict.OK, "authenticated", key[0], source="cache")
        entry = self.cache.entry(key)
        if entry is not None:
            if len(self.names) >= _SEEN_MAX:
                self.names.clear()  # rare: more active names than this; they come back on use
            user = key[0].encode("utf-8", "surrogatepass")
            self.names[(login, service, realm)] = Seen(
                entry, user, ok, line(ok, login, service, realm)
            )
        return ok

    def learn_refusal(
        self, frame: bytes, refusal: Result, key: Key, expires: float, names: Names
    ) -> None:
        """Know ``frame`` again as refused by the negative cache until ``expires``."""
        login, service, realm = names
        self.learn_frame(
            frame,
            SeenRefusal(
                key, self.cache.entry(key), expires,
                line(refusal, login, service, realm), protocol.reply_no(refusal.reason),
            ),
        )  # fmt: skip
