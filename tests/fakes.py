"""Small hand-written fakes shared by unit tests."""

from __future__ import annotations

import asyncio

from saslimap.imap import BackendUnavailable, LoginResult


class FakeBackend:
    """An IMAP stand-in: a dict of user -> password, an outage switch, a call log."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = dict(users or {})
        self.down: str | None = None
        self.calls: list[str] = []
        self.delay = 0.0

    async def login(self, user: str, password: str) -> LoginResult:
        """Answer like an IMAP server would."""
        self.calls.append(user)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise BackendUnavailable(self.down, "fake outage")
        if self.users.get(user) == password:
            return LoginResult.ACCEPTED
        return LoginResult.REJECTED
