"""Shared fixtures: short socket directories (AF_UNIX paths hold about 108 bytes).

Also the hypothesis profiles: by default the property-based tests draw the same
examples on every run, so the README's test command (and CI) gives the same
answer twice; ``pytest --hypothesis-profile=explore`` draws new, more examples
to hunt for bugs (a failure found there is kept in .hypothesis/ and replayed).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile("default")


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short, private directory under /tmp for Unix sockets."""
    path = Path(tempfile.mkdtemp(prefix="si", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
