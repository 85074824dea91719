"""The portal's sessions: a server-side table, signed cookie values, CSRF tokens. No HTTP.

This module owns who is logged in.  A session is a random id (32 bytes from
:mod:`secrets`) that the browser holds in a cookie, signed with the key from
``portal.secret_file`` (:mod:`itsdangerous`), and a row in an in-memory table
here: the login, the address whose mail it sees, whether it is an
administrator, its CSRF token, when it began and when it was last used.  The
table is the truth: logging out deletes the row, so the cookie, replayed,
finds nothing; a session idle for ``session_idle`` seconds or older than
``session_max`` is gone at its next lookup; at ``max_sessions`` the least
recently used goes.  Every login gets a new id (no fixation: an id the
browser brought is never promoted to a session).

Before login there is no session, only a signed random value (the *pre-login
token*) in its own cookie, whose HMAC is the login form's CSRF token: a login
form posted from elsewhere (login CSRF) lacks it.

Time comes from an injected clock, so expiry is tested without sleeping.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer

# What a cookie value may be at most before it is even looked at (ours are ~70 bytes).
MAX_COOKIE = 200


@dataclass
class Session:
    """One logged-in browser."""

    id: str
    login: str
    address: str  # the envelope recipient whose held mail this session sees
    admin: bool
    csrf: str
    created: float
    last_seen: float


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens (a CSRF token against the session's)."""
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


MAX_PER_LOGIN = 20
"""Sessions one login may hold at once (browsers, phones); a further login ends its oldest."""


class Sessions:
    """The session table and the signing of cookie values."""

    def __init__(
        self,
        secret: bytes,
        *,
        idle: float,
        max_age: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Separate keys for separate purposes, derived from the one secret: a value
        # signed as one thing is never accepted as another.
        self._signer = Signer(secret, salt="mailgate-portal-session", digest_method=hashlib.sha256)
        self._pre_signer = Signer(secret, salt="mailgate-portal-pre", digest_method=hashlib.sha256)
        self._csrf_key = hmac.new(secret, b"mailgate-portal-login-csrf", hashlib.sha256).digest()
        self.idle = idle
        self.max_age = max_age
        self.max_sessions = max_sessions
        self.clock = clock
        self._table: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    # Sessions

    def create(self, login: str, address: str, admin: bool) -> tuple[Session, str]:
        """A new session with a fresh id and CSRF token, and the cookie value naming it."""
        now = self.clock()
        # One login's sessions first: a user who logs in again and again (cheap once
        # saslimap caches the password) evicts their own oldest, never everyone else's.
        own = [sid for sid, held in self._table.items() if held.login == login]
        for sid in own[: max(0, len(own) - MAX_PER_LOGIN + 1)]:
            del self._table[sid]
        while len(self._table) >= self.max_sessions:
            self._table.popitem(last=False)  # least recently used first
        session = Session(
            id=secrets.token_urlsafe(32), login=login, address=address, admin=admin,
            csrf=secrets.token_urlsafe(32), created=now, last_seen=now,
        )  # fmt: skip
        self._table[session.id] = session
        return session, self._signer.sign(session.id).decode("ascii")

    def lookup(self, cookie: str | None) -> Session | None:
        """The live session a cookie value names, its idle time renewed; None for anything else.

        A value that is unsigned, badly signed, unknown, ended by logout, idle too
        long or too old is None (and an expired row is dropped).
        """
        session_id = self._unsign(self._signer, cookie)
        if session_id is None:
            return None
        session = self._table.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen >= self.idle or now - session.created >= self.max_age:
            del self._table[session_id]
            return None
        session.last_seen = now
        self._table.move_to_end(session_id)
        return session

    def end(self, session: Session) -> None:
        """Logout: the row goes, so the same cookie finds nothing afterwards."""
        self._table.pop(session.id, None)

    def end_all(self) -> None:
        """Every session ends (the secret changed)."""
        self._table.clear()

    # The login form's CSRF protection

    def new_pre(self) -> str:
        """A signed random value for the pre-login cookie."""
        return self._pre_signer.sign(secrets.token_urlsafe(24)).decode("ascii")

    def pre_value(self, cookie: str | None) -> str | None:
        """The random value inside a pre-login cookie, if it is one of ours."""
        return self._unsign(self._pre_signer, cookie)

    def login_csrf(self, pre: str) -> str:
        """The login form's CSRF token for a pre-login value."""
        return hmac.new(self._csrf_key, pre.encode("ascii"), hashlib.sha256).hexdigest()

    @staticmethod
    def _unsign(signer: Signer, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > MAX_COOKIE or not cookie.isascii():
            return None
        try:
            return signer.unsign(cookie).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return None
