"""The shared secret's file, when it is not a regular file: refused at once, never read."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mailgate.config import ConfigError
from mailgate.state import load_secret


def test_a_secret_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO (or a device such as /dev/urandom) as secret_file is a config error at
    once, not a read that blocks the daemon's start, check-config or SIGHUP for ever."""
    fifo = tmp_path / "state.key"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException | bytes] = []

    def load() -> None:
        try:
            outcome.append(load_secret(fifo))
        except BaseException as err:  # handed to the test's thread
            outcome.append(err)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(2.0)
    blocked = worker.is_alive()
    if blocked:  # unblock the reader so the thread ends
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(2.0)
    assert not blocked, "load_secret blocked reading a FIFO"
    assert 1 == len(outcome)
    assert isinstance(outcome[0], ConfigError)
    with pytest.raises(ConfigError, match="not a regular file"):
        raise outcome[0]
