"""How long a run may take and how much a server may send: the arithmetic, and its error.

This module owns two bounds and the error they raise, and does no I/O: a
:class:`Deadline` for a whole run (how long the next wait may be) and an
:class:`Allowance` of bytes for one answer (how much more may be read).  The
code that does the reading (:mod:`mailgate.mailbox` for IMAP) asks them before
every wait and every allocation, so a server that trickles, streams without end
or announces a gigantic literal is stopped by the numbers here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mailgate.errors import BackendError


class BoundExceeded(BackendError):
    """A run's deadline passed, or a server's answer grew past its size bound.

    ``kind`` is ``deadline`` or ``size``; the text names the setting to raise.
    The connection it happened on is over: the answer was abandoned halfway, so
    nothing more can be read from it in step.
    """

    KINDS = ("deadline", "size")


class Deadline:
    """The end of a run, ``seconds`` after it was made; ``name`` is the setting, for errors.

    ``clock`` is injectable so tests need not sleep.
    """

    def __init__(
        self, seconds: float, name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.name = name
        self._clock = clock
        self._end = clock() + seconds

    def left(self) -> float:
        """Seconds until the deadline (0 once it has passed)."""
        return max(0.0, self._end - self._clock())

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.left() <= 0.0

    def cap(self, timeout: float) -> float:
        """``timeout``, or the time left if that is shorter (0 once the deadline has passed)."""
        return min(timeout, self.left())

    def error(self, doing: str) -> BoundExceeded:
        """The error for a wait cut short by this deadline, while ``doing`` something."""
        return BoundExceeded("deadline", f"{self.name} ({self.seconds:g} s) passed {doing}")


class Allowance:
    """Bytes one answer may still bring; :meth:`renew` for each new request.

    ``name`` is the setting, for errors.  :meth:`take` refuses before the bytes
    are read, so an announced size is checked before anything is allocated.
    """

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.name = name
        self.left = limit

    def renew(self) -> None:
        """A new request was sent: its answer may bring ``limit`` bytes again."""
        self.left = self.limit

    def take(self, size: int, what: str) -> None:
        """Count ``size`` more bytes (``what`` they are, for the error) or refuse them."""
        if size > self.left:
            raise BoundExceeded(
                "size",
                f"{what} would take the server's answer past {self.name} ({self.limit} bytes)",
            )
        self.left -= size
