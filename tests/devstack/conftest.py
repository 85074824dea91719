"""Fixtures the devstack launcher tests share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """A short, world-searchable directory of the module's own, removed afterwards.

    Short: AF_UNIX paths must fit in about 108 bytes.  World-searchable:
    daemons that drop privileges (Dovecot, spamd's debian-spamd children)
    must reach their sockets and files under it.
    """
    path = Path(tempfile.mkdtemp(prefix="ds", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
