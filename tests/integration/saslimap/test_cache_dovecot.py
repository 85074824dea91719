"""Caches, limits, warm connections and metrics against a real Dovecot and the real daemon."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.tls import TlsFiles
from saslimap import protocol, saslauthd_client
from saslimap.config import CacheConfig, ImapConfig, UsersConfig
from saslimap.imap import ImapBackend
from saslimap.service import Authenticator, Verdict
from tests.clock import FakeClock
from tests.integration.conftest import USERS

pytestmark = pytest.mark.integration


@pytest.fixture
def own_dovecot(workroot: Path, tls: TlsFiles, request: pytest.FixtureRequest) -> Iterator[Dovecot]:
    """A Dovecot this test may change or stop."""
    server = Dovecot(workroot / f"dv-{request.node.name[:20]}", USERS, tls=tls)
    server.start()
    yield server
    server.stop()


def authenticator(
    dovecot: Dovecot, tls: TlsFiles, clock: FakeClock, **imap: object
) -> Authenticator:
    cfg = ImapConfig(url=dovecot.imap_url("imaps"), ca_file=tls.ca_cert, **imap)  # type: ignore[arg-type]
    backend = ImapBackend.from_config(cfg)
    return Authenticator(UsersConfig(), backend, clock, cache=CacheConfig())


async def test_refresh_drops_password_changed_in_dovecot(
    own_dovecot: Dovecot, tls: TlsFiles
) -> None:
    """A password changed in Dovecot's passwd-file stops working after refresh_after + one use."""
    clock = FakeClock()
    auth = authenticator(own_dovecot, tls, clock)
    user = "alice@example.com"
    try:
        assert Verdict.OK == (await auth.verify(user, "alice pw", "smtp")).verdict
        own_dovecot.set_password(user, "alice new pw")
        clock.advance(301)
        assert Verdict.OK == (await auth.verify(user, "alice pw", "smtp")).verdict
        await asyncio.gather(*auth.background)
        assert Verdict.NO == (await auth.verify(user, "alice pw", "smtp")).verdict
        assert Verdict.OK == (await auth.verify(user, "alice new pw", "smtp")).verdict
    finally:
        auth.close()
        auth.backend.close()  # type: ignore[attr-defined]


async def test_stale_if_error_with_dovecot_stopped(own_dovecot: Dovecot, tls: TlsFiles) -> None:
    """With Dovecot down and the entry past its TTL, the cached password still gets OK."""
    clock = FakeClock()
    auth = authenticator(own_dovecot, tls, clock, connect_timeout=1.0, response_timeout=1.0)
    try:
        assert Verdict.OK == (await auth.verify("bob@example.com", "bob-secret", "smtp")).verdict
        own_dovecot.stop()
        clock.advance(3600 + 60)
        result = await auth.verify("bob@example.com", "bob-secret", "smtp")
        assert (Verdict.OK, "stale-cache") == (result.verdict, result.source)
        other = await auth.verify("alice@example.com", "alice pw", "smtp")
        assert Verdict.TEMPFAIL == other.verdict
    finally:
        auth.close()
        auth.backend.close()  # type: ignore[attr-defined]


async def test_warm_connections_survive_a_dovecot_restart(
    own_dovecot: Dovecot, tls: TlsFiles
) -> None:
    """Pooled connections the server dropped are replaced transparently, not reported as outages."""
    clock = FakeClock()
    auth = authenticator(own_dovecot, tls, clock, warm_connections=2)
    backend = auth.backend
    assert isinstance(backend, ImapBackend)
    backend.start()
    try:
        await asyncio.sleep(0.3)
        assert backend.pool is not None
        assert 2 == len(backend.pool)
        assert Verdict.OK == (await auth.verify("alice@example.com", "alice pw", "smtp")).verdict
        own_dovecot.stop()
        own_dovecot.start()
        result = await auth.verify("bob@example.com", "bob-secret", "smtp")
        assert Verdict.OK == result.verdict, result.detail
    finally:
        auth.close()
        backend.close()


def scrape(daemon: SaslimapDaemon) -> tuple[dict[str, float], str]:
    """The metrics endpoint over HTTP: samples by ``name{labels}``, and the raw text."""
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out, text


def test_dictionary_attack_reaches_imap_at_most_budget_times(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """2,000 distinct wrong passwords for one user reach Dovecot at most 10 times (and one
    trickle slot), the cached password keeps working, and the metrics say what happened
    without naming anyone."""
    d = SaslimapDaemon(
        workroot / "attack",
        {"imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
         "limits": {"trickle_interval": 600.0}},  # one trickle slot at most, below
    )  # fmt: skip
    d.start()
    victim = "alice@example.com"
    mux = d.socket_path
    try:
        assert b"OK" == saslauthd_client.query(mux, victim.encode(), b"alice pw", b"smtp")
        before = dovecot.auth_attempts()

        def guess(n: int) -> bytes:
            try:
                return saslauthd_client.query(
                    mux, victim.encode(), f"guess-{n:05d}".encode(), b"smtp"
                )
            except saslauthd_client.NoReply:  # "try later": the budget is full of checks in flight
                return b""

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(guess, range(2000)))
        assert not any(protocol.reply_is_ok(r) for r in replies)
        assert b"OK" == saslauthd_client.query(mux, victim.encode(), b"alice pw", b"smtp")
        time.sleep(0.2)  # Dovecot writes its log line just after answering
        reached = dovecot.auth_attempts() - before
        assert reached <= 11  # the budget, and the one trickle slot over it
        metrics, text = scrape(d)
        assert metrics["saslimap_requests_total{result=ratelimited}"] >= 1989
        assert metrics["saslimap_requests_total{result=ok}"] >= 2
        assert metrics["saslimap_cache_entries{cache=positive}"] >= 1
        assert "alice" not in text
        assert "guess-" not in text
        assert "alice pw" not in d.log_text()
        assert "guess-00001" not in d.log_text()
    finally:
        assert 0 == d.stop()


def test_sighup_flushes_caches(workroot: Path, dovecot: Dovecot, tls: TlsFiles) -> None:
    """After SIGHUP the cache is empty (a reload is also how an admin forces re-verification)."""
    d = SaslimapDaemon(
        workroot / "flush",
        {"imap": {"url": dovecot.imap_url("imaps"), "ca_file": str(tls.ca_cert)}},
    )
    d.start()
    try:
        assert b"OK" == saslauthd_client.query(
            d.socket_path, b"bob@example.com", b"bob-secret", b"smtp"
        )
        assert 1.0 == scrape(d)[0]["saslimap_cache_entries{cache=positive}"]
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "caches flushed" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.0 == scrape(d)[0]["saslimap_cache_entries{cache=positive}"]
    finally:
        assert 0 == d.stop()
