"""Small pieces every benchmark script uses: progress output, signal handling, ratios,
argument types and the work directory."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType


def say(text: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(text, file=sys.stderr, flush=True)


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C so every started daemon is stopped."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Let cleanup finish even if Ctrl-C is pressed again."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ratio(a: float | None, b: float | None) -> float:
    """a / b, or NaN when either is missing, NaN or b is zero."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def run_main(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse arguments and run, turning SIGTERM and Ctrl-C into a clean unwind."""
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def seconds_arg(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type``: a number of seconds between ``low`` and ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def work_root(prefix: str) -> Path:
    """A fresh work directory for one run's daemons, mode 0755.

    Short and in /tmp: Unix socket paths are limited to 107 bytes.  Traversable:
    unprivileged Dovecot and spamd processes must reach their sockets under it.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    return root
