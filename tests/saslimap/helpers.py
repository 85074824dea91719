"""The authenticator as the policy tests build and drive it: fake clock, fake IMAP backend."""

from __future__ import annotations

import asyncio

from saslimap.config import CacheConfig, LimitsConfig, UsersConfig
from saslimap.protocol import encode_request, parse_request, reply_ok
from saslimap.service import Authenticator, Verdict
from tests.clock import FakeClock
from tests.fakes import FakeBackend

USER = "alice@example.com"
PW = "right pw"


def make(
    cache: CacheConfig | None = None, limits: LimitsConfig | None = None
) -> tuple[Authenticator, FakeBackend, FakeClock]:
    clock = FakeClock()
    backend = FakeBackend({USER: PW})
    auth = Authenticator(UsersConfig(), backend, clock, cache=cache, limits=limits)
    return auth, backend, clock


async def check(auth: Authenticator, password: str, user: str = USER) -> Verdict:
    return (await auth.verify(user, password, "smtp")).verdict


async def settle(auth: Authenticator) -> None:
    """Let background refreshes finish."""
    while auth.background:
        await asyncio.gather(*auth.background)


async def wire(auth: Authenticator, password: bytes, login: bytes = USER.encode()) -> Verdict:
    return (await auth.verify(login, password, b"smtp", b"")).verdict


OK_REPLY = reply_ok()


def frame_of(password: bytes, login: bytes = USER.encode(), addr: bytes | None = None) -> bytes:
    return encode_request(login, password, b"smtp", b"", addr)


async def hit_by_frame(auth: Authenticator, frame: bytes) -> Verdict:
    """What the mux server does with one read: repeat(), else parse and decide."""
    reply = auth.repeat(frame)
    if reply is not None:
        return Verdict.OK if reply == OK_REPLY else Verdict.NO
    parsed = parse_request(frame)
    assert parsed is not None
    req = parsed.request
    whole = frame if parsed.consumed == len(frame) else b""
    decided = auth.decide(req.login, req.password, req.service, req.realm, "", whole)
    return (await auth.finish(decided)).verdict
