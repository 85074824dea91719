"""saslimap's asyncio IMAP backend: its deadline and its queue bound."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.config import parse_imap_url
from saslimap.imap import BackendUnavailable, ImapBackend, ImapSettings, LoginResult
from tests.fakes import ScriptedImap


async def test_backend_deadline_bounds_the_wait() -> None:
    """The async wrapper answers 'timeout' even when every thread is stuck."""
    srv = ScriptedImap(greeting=None)
    target = parse_imap_url(f"imap+plaintext://127.0.0.1:{srv.port}")
    backend = ImapBackend(ImapSettings(target, None, 0.2, 0.2), max_concurrency=2)
    try:
        results = await asyncio.gather(
            *(backend.login("alice", "pw") for _ in range(4)), return_exceptions=True
        )
    finally:
        backend.close()
        srv.close()
    assert all(isinstance(r, BackendUnavailable) for r in results)


def _blocking_settings() -> ImapSettings:
    return ImapSettings(parse_imap_url("imap+plaintext://127.0.0.1:9"), None, 1.0, 1.0)


async def test_full_queue_is_busy_at_once() -> None:
    """Beyond max_concurrency plus max_queue, a check is refused immediately as busy."""
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(_s: ImapSettings, _u: str, _p: str, _c: str) -> LoginResult:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return LoginResult.ACCEPTED

    backend = ImapBackend(_blocking_settings(), 1, max_queue=1, check=slow)
    first = asyncio.create_task(backend.login("a", "p"))
    second = asyncio.create_task(backend.login("b", "p"))
    await asyncio.sleep(0.05)
    with pytest.raises(BackendUnavailable) as info:
        await backend.login("c", "p")
    assert "busy" == info.value.kind
    release.set()
    assert [LoginResult.ACCEPTED] * 2 == list(await asyncio.gather(first, second))
    backend.close()
