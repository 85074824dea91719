"""Authentication policy: from a raw request to a verdict, with no sockets.

This module owns what happens between "a client sent these four fields" and
"answer OK, NO, or tell the client to try later": input validation (encoding,
control characters, empty values), turning login and realm into the IMAP user
name, the allowed-domains guard against an open relay, asking the backend, and
the one log line per check.  The backend is anything with an async ``login``
(:class:`LoginBackend`), so tests use a small fake and the daemon uses
:class:`saslimap.imap.ImapBackend`.
"""

from __future__ import annotations

import enum
import logging
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from saslimap.config import UsersConfig
from saslimap.imap import BackendUnavailable, LoginResult

log = logging.getLogger(__name__)


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
    ``None`` when the backend was not asked.  ``detail`` is for the log only.
    """

    verdict: Verdict
    reason: str
    user: str = ""
    backend_seconds: float | None = None
    error_kind: str | None = None
    detail: str = ""


class LoginBackend(Protocol):
    """Something that can check a user name and password (the IMAP server)."""

    async def login(self, user: str, password: str) -> LoginResult:
        """Return the verdict, or raise BackendUnavailable when there is none."""
        ...


def shown(value: str | bytes) -> str:
    """A value made safe for a log line: control and invisible characters escaped, quotes too."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
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
    return any(unicodedata.category(c) == "Cc" for c in text)


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
    """Checks credentials against a backend according to the ``[users]`` policy."""

    def __init__(
        self,
        users: UsersConfig,
        backend: LoginBackend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = users
        self.backend = backend
        self.clock = clock
        self._allowed = frozenset(users.allowed_domains)

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
    ) -> Result:
        """Check one login and log one line about it; never raises for bad input."""
        try:
            result = await self._verify(login, password, service, realm)
        except _Refused as refusal:
            result = Result(Verdict.NO, str(refusal))
        log.info(
            'auth user="%s" service="%s" realm="%s" result=%s reason="%s" backend_ms=%s%s',
            shown(result.user or login),
            shown(service),
            shown(realm),
            result.verdict.value,
            result.reason,
            "-" if result.backend_seconds is None else f"{result.backend_seconds * 1000:.1f}",
            f' detail="{shown(result.detail)}"' if result.detail else "",
        )
        return result

    async def _verify(
        self,
        login: str | bytes,
        password: str | bytes,
        service: str | bytes,
        realm: str | bytes,
    ) -> Result:
        login_s = _text("login", login, required=True)
        password_s = _text("password", password, required=True)
        _text("service", service, required=False)
        realm_s = _text("realm", realm, required=False)
        user = self.imap_user(login_s, realm_s)
        if not self._domain_allowed(user):
            return Result(Verdict.NO, "domain not allowed", user)
        start = self.clock()
        try:
            answer = await self.backend.login(user, password_s)
        except BackendUnavailable as err:
            return Result(
                Verdict.TEMPFAIL,
                f"IMAP server unavailable ({err.kind})",
                user,
                self.clock() - start,
                err.kind,
                err.detail,
            )
        elapsed = self.clock() - start
        if answer is LoginResult.ACCEPTED:
            return Result(Verdict.OK, "authenticated", user, elapsed)
        return Result(Verdict.NO, "authentication failed", user, elapsed)
