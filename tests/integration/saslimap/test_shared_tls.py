"""saslimap's shared state over TLS (``rediss://``) to the session's real redis-server.

The certificate is verified against ``ca_file``: with the CA that signed it the
hosts share as over a socket; with another CA (or the system's) the store stays
down, one warning says why, and every check is answered from the host's own
memory and IMAP, as with no Redis at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.redis import Redis
from devstack.tls import make_tls
from mailgate.config import StateConfig
from saslimap.service import Verdict
from tests.fakes import FakeBackend
from tests.integration.saslimap.sharedhosts import (
    PW,
    USER,
    Host,
    close_hosts,
    make_hosts,
)

pytestmark = pytest.mark.integration

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the session Redis's certificate."""
    return make_tls(tmp_path_factory.mktemp("other-ca")).ca_cert


def _config(redis: Redis, secret: Path, ca_file: Path | None) -> StateConfig:
    return StateConfig(
        url=redis.tls_url, ca_file=ca_file, password_file=redis.password_file,
        secret_file=secret, key_prefix=f"tls{next(_prefixes)}:",
        timeout=0.5, retry_interval=0.05,
    )  # fmt: skip


@pytest.fixture
async def tls_hosts(
    redis_server: Redis, secret_file: Path
) -> AsyncIterator[tuple[Host, Host, FakeBackend]]:
    """Two hosts on rediss:// verified against the session CA."""
    backend = FakeBackend({USER: PW})
    made = await make_hosts(_config(redis_server, secret_file, redis_server.ca_file), backend)
    yield made[0], made[1], backend
    await close_hosts(made)


async def test_rediss_with_the_right_ca_shares(
    tls_hosts: tuple[Host, Host, FakeBackend], redis_server: Redis
) -> None:
    """Over verified TLS, a password verified through host A is a hit on host B, a wrong
    one is remembered, and the keys are in the session Redis."""
    a, b, imap = tls_hosts
    assert Verdict.OK == await a.check(PW)
    assert Verdict.OK == await b.check(PW)
    assert Verdict.NO == await b.check("wrong")
    assert Verdict.NO == await a.check("wrong")
    assert [USER, USER] == imap.calls
    assert redis_server.cli("KEYS", f"{a.state.prefix}sasl:u:*").splitlines()


@pytest.mark.parametrize("which", ["another CA", "the system CAs"])
async def test_a_certificate_not_signed_by_ca_file_is_refused(
    redis_server: Redis,
    secret_file: Path,
    other_ca: Path,
    which: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The certificate does not verify: the store never comes up however often it is
    probed, one warning says so (without the password), and checks are answered from
    local memory: right passwords OK (then cached), wrong ones NO, nothing crashes."""
    ca_file = other_ca if which == "another CA" else None
    imap = FakeBackend({USER: PW})
    with caplog.at_level(logging.INFO, logger="mailgate.state"):
        a, b = await make_hosts(_config(redis_server, secret_file, ca_file), imap, wait_up=False)
        try:
            await asyncio.sleep(0.5)  # ten probes each, at retry_interval 0.05
            assert not a.state.up
            assert not b.state.up
            assert Verdict.OK == await a.check(PW)
            assert Verdict.OK == await a.check(PW)  # this host's cache
            assert Verdict.OK == await b.check(PW)  # its own IMAP login: nothing shared
            assert Verdict.NO == await a.check("wrong")
            assert Verdict.NO == await b.check("wrong")
            assert [USER] * 4 == imap.calls
            await asyncio.sleep(0.2)
            assert not a.state.up
            assert not b.state.up
        finally:
            await close_hosts([a, b])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 2 == len(warnings), warnings  # one per host, not one per probe or check
    for text in warnings:
        assert "certificate verify failed" in text
        assert redis_server.tls_url in text
        assert str(redis_server.password) not in text
    assert not [r for r in caplog.records if "available: limits" in r.getMessage()]
