"""The portal under test: a real directory store, fake saslimap and re-injection, a TestClient."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from filter.config import NoticesConfig, PortalConfig
from filter.portal.auth import Verdict
from filter.portal.sessions import Sessions
from filter.portal.web import Portal, build
from filter.qdir import DirectoryStore
from filter.quarantine import Entry, new_id
from tests.clock import FakeClock
from tests.filter.fakes import FakeForwarder

SECRET = bytes(range(32))
PASSWORDS = {
    "alice@example.com": "alice pw",
    "bob@example.com": "bob pw",
    "admin@example.com": "admin pw",
}


@dataclass
class FakeSaslimap:
    """Answers like saslimap from a table; ``down`` makes it say "try later"."""

    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))
    down: bool = False
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def check(self, login: str, password: str, client: str) -> Verdict:
        """The verdict saslimap would give (logins without case, as IMAP servers do)."""
        self.asked.append((login, client))
        if self.down:
            return Verdict.UNAVAILABLE
        ok = self.passwords.get(login.lower()) == password
        return Verdict.OK if ok else Verdict.WRONG


@dataclass
class World:
    """Everything a test needs to look at."""

    store: DirectoryStore
    sender: FakeForwarder
    saslimap: FakeSaslimap
    clock: FakeClock
    sessions: Sessions
    portal: Portal

    def client(self, base_url: str = "http://testserver") -> TestClient:
        """A browser of its own (its own cookie jar); redirects are not followed."""
        return TestClient(build(self.portal), base_url=base_url, follow_redirects=False)

    def hold(
        self,
        recipients: list[str],
        category: str = "spam",
        sender: str = "spammer@example.net",
        subject: str = "Cheap watches",
        body: bytes = b"Buy now.\r\n",
        at: float = 1_700_000_000.0,
        message: bytes | None = None,
    ) -> Entry:
        """Hold one message for ``recipients`` and return its entry."""
        raw = message or (
            b"From: " + sender.encode() + b"\r\nTo: " + ", ".join(recipients).encode()
            + b"\r\nSubject: " + subject.encode() + b"\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000"
            + b"\r\nMessage-ID: <m@example.net>\r\n\r\n" + body
        )  # fmt: skip
        entry = Entry(
            new_id(), category, "score 9.000" if category == "spam" else "Eicar-Test",
            sender, list(recipients), at, len(raw), score=9.0 if category == "spam" else None,
        )  # fmt: skip
        self.store.add(entry, raw)
        return entry


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A portal over an empty quarantine; admin@example.com is its administrator."""
    store = DirectoryStore(tmp_path / "quarantine")
    clock = FakeClock()
    cfg = PortalConfig(admins=("admin@example.com",), secret_file=None, page_size=5)
    sessions = Sessions(
        SECRET, idle=cfg.session_idle, max_age=cfg.session_max, max_sessions=100, clock=clock
    )
    sender = FakeForwarder()
    saslimap = FakeSaslimap()
    portal = Portal(
        cfg, NoticesConfig(admins=("postmaster@example.com",)), "gw.example.com",
        store, sender, saslimap, sessions, SECRET,
    )  # fmt: skip
    yield World(store, sender, saslimap, clock, sessions, portal)
    store.close()


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The first CSRF token in a page."""
    found = _CSRF.search(html)
    assert found is not None, html
    return found.group(1)


def login(client: TestClient, user: str, password: str | None = None, next_: str = "") -> str:
    """Log in through the form; returns the session's CSRF token (from the next page)."""
    page = client.get("/login")
    form = {"login": user, "password": password or PASSWORDS[user], "csrf": csrf_of(page.text)}
    if next_:
        form["next"] = next_
    done = client.post("/login", data=form)
    assert 303 == done.status_code, done.text
    return csrf_of(client.get("/messages").text)
