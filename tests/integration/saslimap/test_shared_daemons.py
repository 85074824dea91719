"""Two real saslimap daemons, one real Dovecot, one real redis-server: one state (issue 16)."""

from __future__ import annotations

import itertools
import os
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.dovecot_auth import dovecot_auth
from devstack.redis import Redis
from devstack.tls import TlsFiles
from saslimap import protocol, saslauthd_client
from tests.integration.conftest import USERS

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@example.com", "bob@example.com"
_groups = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A password-protected redis-server of this module's own (one test stops it)."""
    r = Redis(tmp_path_factory.mktemp("redis"), unix_socket=True, password="gateway-group-pw")
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secret both hosts share."""
    path = tmp_path_factory.mktemp("secret") / "state.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def _pair(
    workdir: Path, dovecot: Dovecot, tls: TlsFiles, redis: Redis, secret: Path, **extra: object
) -> tuple[SaslimapDaemon, SaslimapDaemon]:
    """Two gateway hosts' saslimap, each with a saslauthd socket and a Dovecot listener."""
    group = f"g{next(_groups)}:"
    made = []
    for name in ("a", "b"):
        settings: dict[str, dict[str, object]] = {
            "imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
            "dovecot": {"socket": str(workdir / name / "run" / "auth"), "socket_mode": "0666"},
            "iplimits": {"base_delay": 0.0, "max_delay": 0.0},
            "state": {
                "url": redis.unix_url, "password_file": str(redis.password_file),
                "secret_file": str(secret), "key_prefix": group,
                # Generous for a loaded test machine: a missed deadline would let each host
                # decide alone, which is what the fault test checks, not these.
                "timeout": 0.5, "retry_interval": 0.2,
            },
        }  # fmt: skip
        for section, values in extra.items():
            assert isinstance(values, dict)
            settings.setdefault(section, {}).update(values)
        made.append(SaslimapDaemon(workdir / name, settings))
    return made[0], made[1]


def _check(d: SaslimapDaemon, user: str, password: str, timeout: float = 30.0) -> str:
    """ "ok", "no", or "later" (no reply: Postfix's 454) from the saslauthd socket."""
    try:
        reply = saslauthd_client.query(
            d.socket_path, user.encode(), password.encode(), b"smtp", timeout=timeout
        )
    except saslauthd_client.NoReply:
        return "later"
    return "ok" if protocol.reply_is_ok(reply) else "no"


def _state_up(d: SaslimapDaemon) -> bool:
    url = f"http://127.0.0.1:{d.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        return "saslimap_state_up 1.0" in page.read().decode()


def _until(what: str, condition: object, seconds: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def _recorded() -> None:
    """Give a host the moment it takes to record a verdict in Redis (after answering)."""
    time.sleep(0.2)


def _attempts_settle(dovecot: Dovecot) -> int:
    time.sleep(0.3)  # Dovecot's log process writes just after answering
    return dovecot.auth_attempts()


def test_a_password_verified_through_one_host_needs_no_imap_login_on_the_other(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles, redis: Redis, secret_file: Path
) -> None:
    """alice logs in through host A; host B answers her with no login at Dovecot."""
    a, b = _pair(workroot / "shared-hit", dovecot, tls, redis, secret_file)
    with a, b:
        _until("both hosts share", lambda: _state_up(a) and _state_up(b))
        assert "ok" == _check(a, ALICE, USERS[ALICE])
        _recorded()
        before = _attempts_settle(dovecot)
        assert "ok" == _check(b, ALICE, USERS[ALICE])
        assert "no" == _check(b, ALICE, "not alice's")  # asked Dovecot: one attempt
        assert before + 1 == _attempts_settle(dovecot)


def test_guesses_alternating_between_hosts_reach_dovecot_at_most_the_budget(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles, redis: Redis, secret_file: Path
) -> None:
    """300 distinct wrong passwords for bob, alternating between the two hosts' saslauthd
    sockets: at most the budget (10) reach Dovecot, never an OK, and bob's cached password
    still works on both."""
    a, b = _pair(
        workroot / "shared-budget", dovecot, tls, redis, secret_file,
        limits={"trickle_interval": 0.0},  # the budget exactly (the trickle is tested alone)
    )  # fmt: skip
    with a, b:
        _until("both hosts share", lambda: _state_up(a) and _state_up(b))
        assert "ok" == _check(a, BOB, USERS[BOB])
        _recorded()
        before = _attempts_settle(dovecot)
        answers = [_check((a, b)[n % 2], BOB, f"guess {n}") for n in range(300)]
        assert "ok" not in answers
        assert _attempts_settle(dovecot) - before <= 10
        assert "ok" == _check(a, BOB, USERS[BOB])
        assert "ok" == _check(b, BOB, USERS[BOB])
        assert before + 10 == _attempts_settle(dovecot)


def test_the_per_ip_budget_is_shared_by_both_dovecot_listeners(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles, redis: Redis, secret_file: Path
) -> None:
    """One address spraying wrong passwords over many names through both hosts' Dovecot
    listeners: the address's budget (30) is reached once, not once per host."""
    a, b = _pair(workroot / "shared-ip", dovecot, tls, redis, secret_file)
    with a, b:
        _until("both hosts share", lambda: _state_up(a) and _state_up(b))
        sockets = [d.workdir / "run" / "auth" for d in (a, b)]
        before = _attempts_settle(dovecot)
        outcomes = [
            dovecot_auth(sockets[n % 2], f"user{n}@example.com", "spray", "192.0.2.44")
            for n in range(80)
        ]
        assert "ok" not in outcomes
        assert _attempts_settle(dovecot) - before <= 30


def test_redis_stopped_under_load_then_started_again(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles, redis: Redis, secret_file: Path
) -> None:
    """Redis stopped while both hosts answer a mix of checks: no wrong OK, cached users keep
    getting OK, every check is answered within the IMAP deadline; Redis started again
    (empty): the hosts share again by themselves."""
    a, b = _pair(workroot / "shared-fault", dovecot, tls, redis, secret_file,
                 state={"timeout": 0.05})  # fmt: skip
    with a, b:
        _until("both hosts share", lambda: _state_up(a) and _state_up(b))
        assert "ok" == _check(a, ALICE, USERS[ALICE])
        assert "ok" == _check(b, ALICE, USERS[ALICE])

        def one(n: int) -> tuple[str, str]:
            host = (a, b)[n % 2]
            # The reply must come within the IMAP deadline (STARTTLS + login, 5 s steps).
            if n % 3 == 0:
                return "hit", _check(host, ALICE, USERS[ALICE], timeout=25.0)
            if n % 3 == 1:
                return "wrong", _check(host, f"user{n % 7}@example.com", f"w{n}", timeout=25.0)
            return "new", _check(host, BOB, USERS[BOB], timeout=25.0)

        with ThreadPoolExecutor(6) as pool:
            first = pool.map(one, range(60))
            redis.stop()
            second = pool.map(one, range(60, 180))
            results = list(first) + list(second)
        assert all(answer != "ok" for kind, answer in results if kind == "wrong")
        assert all(answer == "ok" for kind, answer in results if kind == "hit")
        assert all(answer in ("ok", "later") for kind, answer in results if kind == "new")
        _until("the hosts see the outage", lambda: not (_state_up(a) or _state_up(b)))
        assert 1 == a.log_text().count("using this host's memory until it is back")

        redis.start()
        _until("both hosts share again", lambda: _state_up(a) and _state_up(b))
        before = _attempts_settle(dovecot)
        assert "ok" == _check(a, "spaces@example.com", USERS["spaces@example.com"])
        _recorded()
        assert "ok" == _check(b, "spaces@example.com", USERS["spaces@example.com"])
        assert before + 1 == _attempts_settle(dovecot)
