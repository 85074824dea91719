"""``saslimap flush`` as an administrator runs it: ``python -m saslimap.cli flush --config
FILE`` against the session's real, password-protected redis-server.

Two hosts' authenticators (in this process) fill the store first; each run then
checks which keys are gone and which stay, its exit code (0, 69 when Redis cannot
be reached, 78 for a configuration it refuses) and that nothing it prints holds
the Redis password.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.redis import Redis
from mailgate.config import StateConfig
from saslimap.service import Verdict
from saslimap.shared import user_id
from tests.fakes import FakeBackend
from tests.integration.saslimap.sharedhosts import (
    PW,
    USER,
    Host,
    close_hosts,
    make_hosts,
    run_flush,
    write_config,
)

pytestmark = pytest.mark.integration

BOB, BOB_PW = "bob@example.com", "bob pw"
_prefixes = itertools.count()


class Store:
    """Two hosts that filled one key prefix, and the config file that names it."""

    def __init__(self, hosts: list[Host], redis: Redis, config: Path) -> None:
        self.hosts, self.redis, self.config = hosts, redis, config
        self.prefix = hosts[0].state.prefix

    def keys(self, below: str = "") -> set[str]:
        return set(self.redis.cli("KEYS", f"{self.prefix}{below}*").splitlines()) - {""}

    def user_keys(self, name: str) -> set[str]:
        return self.keys(f"sasl:u:{user_id(self.hosts[0].state, name)}")

    def flush(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_flush(self.config, *args, password=self.redis.password)


@pytest.fixture
async def store(redis_server: Redis, secret_file: Path, tmp_path: Path) -> AsyncIterator[Store]:
    """alice and bob each verified, with wrong guesses, through both hosts; failures and
    an exemption from three client addresses (two IPv4, one IPv6); a mail-filter key and
    another gateway group's key beside them."""
    prefix = f"fl{next(_prefixes)}:"
    state = {
        "url": redis_server.url, "password_file": str(redis_server.password_file),
        "secret_file": str(secret_file), "key_prefix": prefix,
    }  # fmt: skip
    cfg = StateConfig(
        url=redis_server.unix_url, password_file=redis_server.password_file,
        secret_file=secret_file, key_prefix=prefix, timeout=0.5,
    )  # fmt: skip
    hosts = await make_hosts(cfg, FakeBackend({USER: PW, BOB: BOB_PW}))
    a, b = hosts
    for user, pw in ((USER, PW), (BOB, BOB_PW)):
        assert Verdict.OK == await a.check(pw, user)
        assert Verdict.OK == await b.check(pw, user)
        assert Verdict.NO == await b.check("wrong", user)
    for host, address in ((a, "192.0.2.7"), (b, "192.0.2.8"), (a, "2001:db8::1")):
        assert Verdict.NO == await host.check_client(BOB, "wrong", address)
    assert Verdict.OK == await b.check_client(USER, PW, "192.0.2.9")
    redis_server.cli("SET", f"{prefix}filter:notice", "kept")
    redis_server.cli("SET", f"other{prefix}sasl:u:x", "kept")
    try:
        yield Store(hosts, redis_server, write_config(tmp_path / "cfg", state))
    finally:
        await close_hosts(hosts)


def test_flush_removes_every_shared_key_of_saslimap(store: Store) -> None:
    """No option: every saslimap key under the prefix goes; the filter's keys under the
    same prefix and another gateway group's keys stay."""
    before = store.keys("sasl:")
    assert before
    others = store.keys() - before  # the filter's key, the hosts' probe key
    assert f"{store.prefix}filter:notice" in others
    done = store.flush()
    assert 0 == done.returncode, done.stderr
    assert f"saslimap flush: {len(before)} shared keys removed (every user and address)\n" == (
        done.stdout
    )
    assert set() == store.keys("sasl:")
    assert others == store.keys()
    assert "kept" == store.redis.cli("GET", f"other{store.prefix}sasl:u:x")


def test_flush_user_removes_only_that_users_keys_case_folded(store: Store) -> None:
    """--user ALICE@EXAMPLE.COM (Dovecot's %Lu folds it): alice's keys go, in every realm
    and service; bob's and the per-IP keys stay."""
    alice, bob = store.user_keys(USER), store.user_keys(BOB)
    others = store.keys() - alice
    assert alice
    assert bob
    done = store.flush("--user", USER.upper())
    assert 0 == done.returncode, done.stderr
    assert f"{len(alice)} shared keys removed (user 'ALICE@EXAMPLE.COM')" in done.stdout
    assert set() == store.user_keys(USER)
    assert others == store.keys()


def test_flush_address_removes_only_that_networks_per_ip_keys(store: Store) -> None:
    """--address: that address's per-IP keys go; other addresses' and every user's stay.
    An IPv6 address names its /64, as the limit counts it."""
    ip = store.keys("sasl:ip:")
    assert {k for k in ip if ":192.0.2.7:" in k}
    others = store.keys() - {k for k in ip if ":192.0.2.7:" in k}
    done = store.flush("--address", "192.0.2.7")
    assert 0 == done.returncode, done.stderr
    assert "(address 192.0.2.7)" in done.stdout
    assert others == store.keys()

    v6 = {k for k in ip if "2001:db8::/64" in k}
    assert v6
    done = store.flush("--address", "2001:db8::abcd")  # another address in the same /64
    assert 0 == done.returncode, done.stderr
    assert others - v6 == store.keys()


def test_flush_of_no_matching_key_is_zero_and_success(store: Store) -> None:
    """A user or address with nothing stored: 0 keys removed, exit 0, nothing else gone."""
    before = store.keys()
    for args in (("--user", "nobody@example.com"), ("--address", "198.51.100.1")):
        done = store.flush(*args)
        assert 0 == done.returncode, done.stderr
        assert "saslimap flush: 0 shared keys removed" in done.stdout
    assert before == store.keys()


def test_redis_down_is_exit_69_with_a_clear_message(
    tmp_path: Path, secret_file: Path, redis_server: Redis
) -> None:
    """Nothing listens where [state] points: exit 69 (EX_UNAVAILABLE) at once, naming the
    store and the reason on stderr, nothing on stdout."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    config = write_config(tmp_path, {
        "url": url, "password_file": str(redis_server.password_file),
        "secret_file": str(secret_file),
    })  # fmt: skip
    began = time.monotonic()
    done = run_flush(config, password=redis_server.password)
    assert 69 == done.returncode
    assert time.monotonic() - began < 10
    assert "" == done.stdout
    assert f"saslimap flush: shared state {url}: " in done.stderr
    assert "Error 111 connecting to" in done.stderr  # ECONNREFUSED
    assert "Traceback" not in done.stderr


def test_a_wrong_password_is_exit_69_without_either_password(
    tmp_path: Path, secret_file: Path, redis_server: Redis
) -> None:
    """Redis refuses the password in password_file: the command says so, and prints
    neither the password it sent nor the right one."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-session-password-42")
    config = write_config(tmp_path, {
        "url": redis_server.url, "password_file": str(wrong), "secret_file": str(secret_file),
    })  # fmt: skip
    done = run_flush(config, password=redis_server.password)
    assert 69 == done.returncode
    assert "not-the-session-password-42" not in done.stdout + done.stderr
    assert "invalid username-password pair" in done.stderr


def test_no_state_configured_is_exit_78(tmp_path: Path) -> None:
    """Without [state] there is nothing shared to flush: a configuration error."""
    done = run_flush(write_config(tmp_path, None), password=None)
    assert 78 == done.returncode
    assert "no shared state is configured" in done.stderr


@pytest.mark.parametrize(
    ("content", "mode", "why"),
    [
        (b"0123456789abcdef0123456789abcdef"[:31], 0o600, "at least 32"),
        (b"ab" * 32, 0o600, "does not look random"),
        (b"0123456789abcdef" * 4, 0o644, "chmod 600"),
    ],
    ids=["short", "repetitive", "readable-by-others"],
)
def test_a_weak_secret_is_exit_78(
    tmp_path: Path, redis_server: Redis, content: bytes, mode: int, why: str
) -> None:
    """The shared secret file is weak or readable by others: refused before Redis is asked."""
    secret = tmp_path / "weak.key"
    secret.write_bytes(content)
    secret.chmod(mode)
    config = write_config(tmp_path, {
        "url": redis_server.url, "password_file": str(redis_server.password_file),
        "secret_file": str(secret),
    })  # fmt: skip
    done = run_flush(config, password=redis_server.password)
    assert 78 == done.returncode
    assert why in done.stderr


@pytest.mark.parametrize(
    "url",
    ["redis://:{pw}@127.0.0.1:6379/0", "redis://:{pw}@127.0.0.1:99999/0",
     "http://:{pw}@127.0.0.1/", "redis://:{pw}@/0"],
    ids=["valid", "bad-port", "bad-scheme", "no-host"],
)  # fmt: skip
def test_a_password_written_into_the_url_is_exit_78_and_never_echoed(
    tmp_path: Path, secret_file: Path, redis_server: Redis, url: str
) -> None:
    """A password put in state.url, however else the URL is wrong, is refused without
    the message quoting it (stderr ends up in journals and tickets)."""
    password = str(redis_server.password)
    config = write_config(
        tmp_path, {"url": url.format(pw=password), "secret_file": str(secret_file)}
    )
    done = run_flush(config, password=password)
    assert 78 == done.returncode
    assert "state.url" in done.stderr


def test_a_redis_refusing_the_deletes_is_exit_69_not_a_traceback(
    tmp_path: Path, secret_file: Path
) -> None:
    """[state] points at a Redis that answers but refuses writes (a read-only replica, as
    a master is after a failover): exit 69 naming the store and Redis's reason."""
    with Redis(tmp_path / "replica", password="replica-pw") as replica:
        replica.cli("SET", "ro:sasl:u:x", "1")
        replica.cli("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers
        config = write_config(tmp_path, {
            "url": replica.url, "password_file": str(replica.password_file),
            "secret_file": str(secret_file), "key_prefix": "ro:",
        })  # fmt: skip
        done = run_flush(config, password=replica.password)
        assert "1" == replica.cli("EXISTS", "ro:sasl:u:x")
    assert 69 == done.returncode, done.stderr
    assert "Traceback" not in done.stderr
    assert f"saslimap flush: shared state {replica.url}: " in done.stderr
    assert "read only replica" in done.stderr
