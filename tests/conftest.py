"""Shared fixtures: short socket directories (AF_UNIX paths hold about 108 bytes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short, private directory under /tmp for Unix sockets."""
    path = Path(tempfile.mkdtemp(prefix="si", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
