"""The shared-state core without a Redis: the secret's checks, the URL syntax, outages."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from mailgate.config import ConfigError, StateConfig, require_state, state_url
from mailgate.state import SharedState, escape_glob, load_secret


def _secret(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "state.key"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_a_random_secret_of_32_bytes_is_accepted(tmp_path: Path) -> None:
    """32 random bytes, mode 0600: loaded as they are (a trailing newline is not part)."""
    data = os.urandom(31) + b"!"  # a random last byte could be a newline, which is stripped
    assert data == load_secret(_secret(tmp_path, data + b"\n"))


def test_a_hex_secret_is_accepted(tmp_path: Path) -> None:
    """``openssl rand -hex 32`` output (64 hex digits) is strong enough."""
    assert 64 == len(load_secret(_secret(tmp_path, os.urandom(32).hex().encode() + b"\n")))


@pytest.mark.parametrize(
    ("data", "mode", "why"),
    [
        (os.urandom(32), 0o640, "owner only"),
        (os.urandom(32), 0o604, "owner only"),
        (os.urandom(31), 0o600, "at least 32"),
        (b"a" * 64, 0o600, "does not look random"),
        (b"abcabcabcabcabcabcabcabcabcabcabcabc", 0o600, "does not look random"),
    ],
)
def test_a_weak_or_readable_secret_is_refused(
    tmp_path: Path, data: bytes, mode: int, why: str
) -> None:
    """Readable by others, short, or a few characters repeated: the daemon refuses to start."""
    with pytest.raises(ConfigError, match=why):
        load_secret(_secret(tmp_path, data, mode))


def test_a_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    """An absent file names itself."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_secret(tmp_path / "absent")


@pytest.mark.parametrize(
    "url",
    ["", "redis://10.0.0.5", "redis://redis.example.com:6380/2", "rediss://r.example.com/0",
     "redis://saslimap@10.0.0.5:6379/1", "unix:///run/redis/redis-server.sock"],
)  # fmt: skip
def test_state_urls_that_are_accepted(url: str) -> None:
    """The forms conf/ documents."""
    assert url == state_url("state.url", url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://:secret@10.0.0.5", "password_file"),
        ("redis://user:secret@10.0.0.5", "password_file"),
        ("http://10.0.0.5", "must be redis://"),
        ("redis://", "names no host"),
        ("redis://10.0.0.5/x", "must be a number"),
        ("unix://relative/path", "absolute"),
        ("redis://10.0.0.5:99999", "not a valid URL"),
    ],
)
def test_state_urls_that_are_refused(url: str, why: str) -> None:
    """A password in the URL, another scheme, no host, a bad database or port."""
    with pytest.raises(ConfigError, match=why):
        state_url("state.url", url)


@pytest.mark.parametrize(
    "url",
    ["redis://:s3cret@10.0.0.5:99999", "http://user:s3cret@10.0.0.5", "redis://:s3cret@[::1/0",
     "redis://u:s3cret@/0", "ftp://:s3c@ret@10.0.0.5/x"],
)  # fmt: skip
def test_a_password_in_a_refused_url_is_never_quoted(url: str) -> None:
    """Whatever else is wrong with a URL holding a password, the message hides it."""
    with pytest.raises(ConfigError) as refused:
        state_url("state.url", url)
    assert "s3c" not in str(refused.value)
    assert "ret" not in str(refused.value).replace("redis://", "")


def test_a_shared_store_needs_a_secret(tmp_path: Path) -> None:
    """``[state] url`` without ``secret_file`` is a config error naming the key."""
    with pytest.raises(ConfigError, match=r"state\.secret_file"):
        require_state("state", StateConfig(url="redis://127.0.0.1"))
    require_state("state", StateConfig())  # nothing configured: nothing needed


def test_glob_characters_in_a_prefix_are_literal() -> None:
    """A key prefix with * ? [ ] \\ matches only itself in SCAN."""
    assert r"gw\*\?\[1\]\\:" == escape_glob("gw*?[1]\\:")


class _Broken:
    """A redis client whose every command fails as configured."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        if self.error is not None:
            raise self.error
        return True

    def register_script(self, _script: str) -> Callable[..., Awaitable[bool]]:
        """The probe's script: fails as ``ping`` does."""

        async def run(**_kwargs: object) -> bool:
            return await self.ping()

        return run

    async def aclose(self) -> None:
        return None


async def _up(state: SharedState) -> None:
    state.start()
    for _ in range(100):
        if state.up:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never up")


async def test_one_warning_per_outage_and_back_by_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Many failing operations in one outage: one warning, the gauge at 0, no operation
    tried while down; the probe brings the store back and says so once."""
    changes: list[bool] = []
    fake = _Broken(None)
    state = SharedState(
        StateConfig(url="redis://127.0.0.1", retry_interval=0.05), b"k" * 32,
        redis=fake, on_change=changes.append,  # type: ignore[arg-type]
    )  # fmt: skip
    await _up(state)
    calls = 0

    async def failing(_r: Any) -> int:
        nonlocal calls
        calls += 1
        raise ResponseError("OOM command not allowed")

    fake.error = RedisConnectionError("refused")
    with caplog.at_level(logging.INFO, logger="mailgate.state"):
        results = [await state.run(failing, "admit") for _ in range(50)]
        assert [None] * 50 == results
        assert 1 == calls  # the first failure marks it down: the rest do not wait
        fake.error = None
        for _ in range(100):
            if state.up:
                break
            await asyncio.sleep(0.01)
    assert state.up
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings)
    assert "OOM" in warnings[0].getMessage()
    assert [False, True, False, True] == changes
    await state.close()


async def test_an_operation_past_the_deadline_counts_as_no_answer() -> None:
    """A store slower than ``timeout`` gives None (the caller decides alone)."""
    state = SharedState(
        StateConfig(url="redis://127.0.0.1", timeout=0.01, retry_interval=60), b"k" * 32,
        redis=_Broken(None),  # type: ignore[arg-type]
    )  # fmt: skip
    await _up(state)

    async def slow(_r: Any) -> int:
        await asyncio.sleep(1)
        return 1

    assert None is await state.run(slow, "admit")
    assert not state.up
    await state.close()


async def test_one_request_shares_one_deadline_between_its_operations() -> None:
    """Inside ``request()`` a second operation gets only what is left of the deadline:
    cut short, it gives None without marking the store down (it answered in time)."""
    state = SharedState(
        StateConfig(url="redis://127.0.0.1", timeout=0.2, retry_interval=60), b"k" * 32,
        redis=_Broken(None),  # type: ignore[arg-type]
    )  # fmt: skip
    await _up(state)

    async def slowish(_r: Any) -> int:
        await asyncio.sleep(0.12)
        return 1

    with state.request():
        assert 1 == await state.run(slowish, "ip-admit")
        assert None is await state.run(slowish, "admit")
    assert state.up
    assert 1 == await state.run(slowish, "admit")  # a new request: the whole deadline
    await state.close()


async def test_work_left_for_later_runs_outside_the_requests_deadline() -> None:
    """What a request leaves for later (recording a verdict) gets a whole deadline of
    its own, and the request does not wait for it."""
    state = SharedState(
        StateConfig(url="redis://127.0.0.1", timeout=0.2, retry_interval=60), b"k" * 32,
        redis=_Broken(None),  # type: ignore[arg-type]
    )  # fmt: skip
    await _up(state)
    done: list[int | None] = []

    async def slowish(_r: Any) -> int:
        await asyncio.sleep(0.12)
        return 1

    async def record() -> None:
        done.append(await state.run(slowish, "settle"))

    with state.request():
        assert 1 == await state.run(slowish, "admit")
        state.later(record())
    assert [] == done
    await state.settled()
    assert [1] == done
    await state.close()
