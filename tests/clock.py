"""A hand-driven clock for expiry and rate-limit tests (no sleeping)."""

from __future__ import annotations


class FakeClock:
    """Starts at 1000 s; ``advance`` moves it forward."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let time pass."""
        self.now += seconds
