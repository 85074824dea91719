"""saslimap's asyncio IMAP backend against a scripted server that never answers."""

from __future__ import annotations

import asyncio

from mailgate.config import parse_imap_url
from saslimap.imap import BackendUnavailable, ImapBackend, ImapSettings
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
