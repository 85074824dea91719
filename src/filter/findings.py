"""What inspecting a message finds, and the bounds it works within.

This module owns the small types shared by the MIME walk (:mod:`filter.banned`)
and the archive listing (:mod:`filter.archives`): :class:`Item` (a MIME part or
an archive member), :class:`Gap` (something that could not be inspected),
:class:`Limits`, and the per-message :class:`WalkState` that spends them.  It
imports nothing from the rest of the filter, so every inspection module can
import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """How far inspection goes; past any of these the message is unchecked."""

    max_depth: int = 4
    """Archives inside archives (a zip in a zip is depth 2); gzip/bzip2/xz count as a level."""
    max_mime_depth: int = 30
    """Multiparts and attached messages inside each other."""
    max_parts: int = 5000
    """MIME parts in one message, every reading of an ambiguous structure counted."""
    max_members: int = 1000
    """Archive members listed in one message, all archives together."""
    max_unpacked: int = 50 * 1024 * 1024
    """Bytes unpacked from archives in one message, all together."""
    max_seconds: float = 20.0
    """Time for the whole inspection (checked between parts, members and blocks)."""


@dataclass(frozen=True)
class Item:
    """One thing found in a message: a MIME part or an archive member."""

    names: tuple[str, ...]  # every name it goes by (raw and decoded, every field)
    declared: tuple[str, ...]
    detected: str
    where: str  # e.g. "part 3" or "part 3 > inner.zip > x.exe"

    @property
    def name(self) -> str:
        """The first name it goes by, or ""."""
        return self.names[0] if self.names else ""


@dataclass(frozen=True)
class Gap:
    """Something that could not be inspected, and why (it makes the message unchecked)."""

    reason: str


class WalkState:
    """Budgets shared by every part and archive of one message."""

    def __init__(self, limits: Limits, clock: Callable[[], float], open_archives: bool) -> None:
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.max_seconds
        self.members = 0
        self.unpacked = limits.max_unpacked
        self.open_archives = open_archives

    def late(self) -> bool:
        return self.clock() > self.deadline


class OutOfTime(Exception):
    """The inspection's time is up: nothing further is looked at."""
