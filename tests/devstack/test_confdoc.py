"""docs/configuration.md is generated from conf/*.toml and must be up to date."""

from __future__ import annotations

from devstack import confdoc


def test_configuration_reference_is_current() -> None:
    """Regenerate with `python -m devstack.confdoc` when this fails."""
    assert confdoc.render() == confdoc.TARGET.read_text()
