"""What both daemons' command lines and composition roots share.

This module owns the ``serve`` command's common steps (config path default,
flags as overrides, exit 78 on a bad configuration, logging set up from the
config, exit 1 when the daemon cannot start) and the first half of a SIGHUP
reload (validate the new file, or keep the old configuration and say so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from saslimap import logs, sdnotify
from saslimap.confkit import ConfigError

EX_CONFIG = 78
C = TypeVar("C")
log = logging.getLogger(__name__)


def serve_command(
    prog: str,
    path: Path | None,
    default: Path,
    flags: Mapping[str, str | None],
    load: Callable[[Path | None, dict[str, str]], C],
    level: Callable[[C], str],
    serve: Callable[[C, Path | None, dict[str, str]], int],
) -> int:
    """Load the config (file, then flags), set up logging, run; the exit code."""
    if path is None and default.exists():
        path = default
    overrides = {key: value for key, value in flags.items() if value is not None}
    try:
        cfg = load(path, overrides)
    except ConfigError as err:
        logs.setup(prog)
        log.error("configuration error: %s", err)
        return EX_CONFIG
    logs.setup(prog, level(cfg))
    try:
        return serve(cfg, path, overrides)
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1


def reload_config(
    load: Callable[[Path | None, dict[str, str]], C], path: Path | None, overrides: dict[str, str]
) -> C | None:
    """SIGHUP's first step: the new, validated config, or None (old one kept, error logged)."""
    sdnotify.notify("RELOADING=1")
    try:
        return load(path, overrides)
    except ConfigError as err:
        log.error("reload failed, keeping the current configuration: %s", err)
        sdnotify.notify("READY=1")
        return None
