"""The ``serve`` command's common steps, for both daemons' command lines.

This module owns: the config path default, flags as overrides, exit 78
(EX_CONFIG, sysexits.h) on a bad configuration (found loading it, or when the
daemon starts with it), logging set up from the
config, and exit 1 when the daemon cannot start; and ``check-config``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from mailgate import logs
from mailgate.config import LoggingConfig
from mailgate.errors import ConfigError


class _Logged(Protocol):
    """A whole daemon configuration: it has the shared ``[logging]`` table."""

    @property
    def logging(self) -> LoggingConfig: ...


EX_CONFIG = 78
C = TypeVar("C")
L = TypeVar("L", bound=_Logged)
log = logging.getLogger(__name__)


def serve_command(
    prog: str,
    path: Path | None,
    default: Path,
    flags: Mapping[str, str | None],
    load: Callable[[Path | None, dict[str, str]], L],
    serve: Callable[[L, Path | None, dict[str, str]], int],
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
    logs.setup(prog, cfg.logging.level)
    try:
        return serve(cfg, path, overrides)
    except ConfigError as err:  # found at start: e.g. sockets systemd passed that do not fit
        log.error("configuration error: %s", err)
        return EX_CONFIG
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1


def check_config_command(
    prog: str,
    path: Path,
    load: Callable[[Path | None, dict[str, str]], C],
    describe: Callable[[C], str],
) -> int:
    """``check-config FILE``: OK and a one-line summary, or the error and exit 78."""
    try:
        cfg = load(path, {})
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return EX_CONFIG
    print(f"{path}: OK ({describe(cfg)})")
    return 0
