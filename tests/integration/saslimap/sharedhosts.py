"""Gateway hosts for the shared-state tests: each an Authenticator on its own connection;
and ``saslimap flush`` run as a command against a config file written for it.

Not a test module: the tests of Sentinel, TLS, Redis errors, flush and hostile
names build their hosts here, as test_shared_state.py does with a Unix socket.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from devstack.daemons import SaslimapDaemon
from mailgate.config import StateConfig
from mailgate.state import SharedState, load_secret
from saslimap.config import CacheConfig, IpLimitsConfig, LimitsConfig, UsersConfig
from saslimap.service import Authenticator, Verdict
from saslimap.shared import SharedChecks
from tests.fakes import FakeBackend

USER = "alice@example.com"
PW = "alice's right password"


def write_secret(path: Path) -> Path:
    """A strong shared secret, mode 0600: 64 hex digits (a random byte could be a
    trailing newline, which load_secret does not count)."""
    path.write_text(os.urandom(32).hex())
    path.chmod(0o600)
    return path


class Host:
    """One gateway host: its authenticator, on its own connection to the shared store."""

    def __init__(self, auth: Authenticator, state: SharedState) -> None:
        self.auth, self.state = auth, state

    async def check(self, password: str, user: str = USER) -> Verdict:
        """One check, and what it teaches the store recorded before the next one."""
        verdict = (await self.auth.verify(user, password, "smtp")).verdict
        await self.state.settled()
        return verdict

    async def check_client(self, user: str, password: str, address: str) -> Verdict:
        """One check through the Dovecot listener's path (per-IP limits), recorded."""
        result, _delay = await self.auth.verify_client(user, password, "smtp", address)
        await self.state.settled()
        return result.verdict


async def until(what: str, condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait (without blocking the loop) until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


async def make_hosts(
    cfg: StateConfig,
    backend: FakeBackend,
    count: int = 2,
    *,
    limits: LimitsConfig | None = None,
    wait_up: bool = True,
) -> list[Host]:
    """``count`` hosts sharing ``cfg``'s store (started; up, unless ``wait_up`` is False)."""
    assert cfg.secret_file is not None
    limits = limits or LimitsConfig(trickle_interval=0)
    made = []
    for _ in range(count):
        state = SharedState(cfg, load_secret(cfg.secret_file))
        state.start()
        shared = SharedChecks(state, CacheConfig(), limits, IpLimitsConfig(base_delay=0), 10.0)
        auth = Authenticator(UsersConfig(), backend, limits=limits, shared=shared)
        made.append(Host(auth, state))
    if wait_up:
        await until("every host shares", lambda: all(h.state.up for h in made))
    return made


async def close_hosts(hosts: list[Host]) -> None:
    """Stop each host's background work and close its connections."""
    for host in hosts:
        host.auth.close()
        await host.state.close()


def write_config(workdir: Path, state: Mapping[str, object] | None) -> Path:
    """A saslimap.toml as on a gateway host, with this [state] (written by devstack's
    daemon launcher, never started); the IMAP URL is a placeholder flush never uses."""
    settings: dict[str, Mapping[str, object]] = {"imap": {"url": "imaps://127.0.0.1"}}
    if state is not None:
        settings["state"] = state
    daemon = SaslimapDaemon(workdir, settings)
    daemon.write_config()
    return daemon.config_path


def run_flush(config: Path, *args: str, password: str | None) -> subprocess.CompletedProcess[str]:
    """``python -m saslimap.cli flush --config FILE ARGS``; asserts that nothing it prints
    holds the Redis ``password``."""
    done = subprocess.run(
        [sys.executable, "-m", "saslimap.cli", "flush", "--config", str(config), *args],
        capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if password is not None:
        assert password not in done.stdout + done.stderr
    return done
