"""The credential cache's keyed hash: HMAC-SHA256, never the password."""

from __future__ import annotations

import hmac

import pytest

from saslimap.cache import CredentialCache, Hasher
from tests.clock import FakeClock
from tests.saslimap.helpers import PW, USER


def test_cache_keeps_no_password() -> None:
    """What the cache stores is an HMAC under a per-process key, not the password or its hash."""
    clock = FakeClock()
    cache = CredentialCache(Hasher(), clock)
    cache.store((USER, "", "smtp"), PW)
    stored = next(iter(cache._store.values()))
    assert PW.encode() not in stored.digest
    assert Hasher().digest(USER, PW) != stored.digest  # another process's key differs


@pytest.mark.parametrize("key", [b"k" * 32, b"k" * 64, b"k" * 65, b"\x00" * 32])
def test_hasher_is_hmac_sha256(key: bytes) -> None:
    """The hasher's digest is HMAC-SHA256 of user NUL password under its key."""
    assert hmac.digest(key, b"u@x\0p\xc3\xa4ss", "sha256") == Hasher(key).digest("u@x", "päss")
