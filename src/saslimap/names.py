"""From a request's raw fields to the IMAP user name and cache key: the input checks.

This module owns what makes a request well-formed before anything is looked
up: valid UTF-8, no control characters, no empty login or password; the realm
joined or ignored and the name lowercased as configured; the allowed-domains
guard against relaying for foreign accounts; and, with ``users.name_chars``,
the characters the IMAP server accepts in a name (a name it would refuse
unasked never reaches it: Dovecot answers such a name with its failure delay
and raises the gateway's penalty, which no passdb setting can waive).
"""

from __future__ import annotations

import unicodedata

from saslimap.cache import Key
from saslimap.config import UsersConfig


class Refused(Exception):
    """A request answered NO by policy (``bad_request``), before the backend is asked."""

    def __init__(self, reason: str, user: str = "") -> None:
        super().__init__(reason)
        self.user = user  # the IMAP user name, when one could be formed


def _has_control(text: str) -> bool:
    # Cc covers NUL, CR, LF, TAB, DEL and the C1 controls: none belongs in a login or
    # password, and CR/LF are how a request would smuggle a second IMAP command.
    # isprintable() is False for every Cc character, so it is a fast path for the
    # common case (it is also False for some harmless ones, which the slow path allows).
    return not text.isprintable() and any(unicodedata.category(c) == "Cc" for c in text)


def _text(name: str, value: str | bytes, *, required: bool) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"{name} is not valid UTF-8") from None
    if required and not value:
        raise Refused(f"empty {name}")
    if _has_control(value):
        raise Refused(f"control character in {name}")
    return value


class Names:
    """The configured mapping from login and realm to the IMAP user, with its guards."""

    def __init__(self, users: UsersConfig) -> None:
        self.users = users
        self._allowed = frozenset(users.allowed_domains)
        self._name_chars = frozenset(users.name_chars)  # empty: any character

    def imap_user(self, login: str, realm: str) -> str:
        """The user name the IMAP server is asked about (login joined with the realm)."""
        user = login
        if realm and self.users.realm == "join":
            user = f"{login}@{realm}"
        return user.lower() if self.users.lowercase else user

    def domain_allowed(self, user: str) -> bool:
        """Whether the user's domain may authenticate here (any, without an allow-list)."""
        if not self._allowed:
            return True
        _, at, domain = user.rpartition("@")
        return bool(at) and domain.lower().rstrip(".") in self._allowed

    def check(
        self,
        login: str | bytes,
        password: str | bytes,
        service: str | bytes,
        realm: str | bytes,
    ) -> tuple[Key, str]:
        """The cache key (IMAP user, realm, service) and the password, or :class:`Refused`."""
        login_s = _text("login", login, required=True)
        password_s = _text("password", password, required=True)
        service_s = _text("service", service, required=False)
        realm_s = _text("realm", realm, required=False)
        user = self.imap_user(login_s, realm_s)
        if self._name_chars and not self._name_chars.issuperset(user):
            raise Refused("user name has a character the IMAP server refuses", user)
        if not self.domain_allowed(user):
            raise Refused("domain not allowed", user)
        return (user, realm_s, service_s), password_s
