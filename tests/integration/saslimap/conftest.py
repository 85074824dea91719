"""Fixtures every shared-state module here needs alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.saslimap.sharedhosts import write_secret


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secret the module's hosts (and ``saslimap flush``) share, in a file of its own."""
    return write_secret(tmp_path_factory.mktemp("secret") / "state.key")
