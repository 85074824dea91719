"""Log output for the daemons: one line per check without one write(2) per line.

This module owns the handler the ``saslimap`` command installs.  The daemon
logs a line for every check, including cache hits answered in microseconds;
flushing each line costs more than answering it.  :class:`BufferedLineHandler`
writes lines to a buffered stream and flushes at once for warnings and errors,
otherwise when its buffer fills or when the daemon's event loop calls
:meth:`flush` (every ``FLUSH_INTERVAL`` seconds, and on exit), so a line is never
more than that late.

:func:`info_line` is the audit line's fast path: while the daemon's handler is
the only one, it writes the already formatted line straight to that handler's
stream, in the same format, without building a ``LogRecord`` (which costs more
than a cache hit).  Anywhere else (tests capturing logs, a library user's own
handlers) it is an ordinary ``logger.info``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
from typing import TextIO

FLUSH_INTERVAL = 0.25
_FORMAT = "%(asctime)s {prog}[{pid}]: %(levelname)s %(name)s: %(message)s"


class BufferedLineHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that flushes on WARNING and above, or when asked."""

    def __init__(self, stream: TextIO, flush_level: int = logging.WARNING) -> None:
        super().__init__(stream)
        self.flush_level = flush_level

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= self.flush_level:
                self.flush()
        except Exception:  # logging must never take the daemon down
            self.handleError(record)


class _Formatter(logging.Formatter):
    """The standard formatter, with the timestamp text cached per second."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        """``asctime`` for a time.time() value, as logging prints it (milliseconds truncated)."""
        second = int(created)
        if second != self._second:
            self._second, self._text = (
                second,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)),
            )
        return f"{self._text},{int((created - second) * 1000):03d}"


# The daemon's own handler and the text before each message's logger name, while
# setup() is in charge of the root logger; None otherwise (info_line falls back).
_direct: tuple[BufferedLineHandler, _Formatter, str] | None = None
_root = logging.getLogger()


def info_line(logger: logging.Logger, message: str) -> None:
    """Log ``message`` (already formatted, no % arguments) at INFO on ``logger``.

    Same output as ``logger.info(message)``; written directly by the daemon's
    handler when it is the only handler and nothing filters.
    """
    direct = _direct
    if (
        direct is None
        or len(_root.handlers) != 1
        or logger.handlers
        or logger.filters
        or not logger.isEnabledFor(logging.INFO)
    ):
        logger.info("%s", message)
        return
    handler, formatter, prefix = direct
    if _root.handlers[0] is not handler or handler.filters:
        logger.info("%s", message)
        return
    line = f"{formatter.stamp(time.time())} {prefix}INFO {logger.name}: {message}\n"
    handler.acquire()  # worker threads log too; keep lines whole
    try:
        handler.stream.write(line)
    except Exception:  # logging must never take the daemon down
        handler.handleError(logger.makeRecord(logger.name, logging.INFO, "", 0, message, (), None))
    finally:
        handler.release()


def setup(prog: str, level: str = "info") -> BufferedLineHandler:
    """Configure the root logger for a daemon writing to stderr (journald under systemd)."""
    # Skip record fields never printed: the caller lookup walks the stack, and
    # thread and process names cost something on every record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(os.dup(sys.stderr.fileno()), "w"), 64 * 1024),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=False,
    )
    global _direct
    handler = BufferedLineHandler(stream)
    formatter = _Formatter(_FORMAT.format(prog=prog, pid=os.getpid()))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, BufferedLineHandler):  # its stream is our own dup of stderr
            old.flush()
            old.stream.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    _direct = (handler, formatter, f"{prog}[{os.getpid()}]: ")
    return handler


class _Deferred:
    """Lines to write at the event loop's next turn, all in one callback."""

    def __init__(self) -> None:
        self.lines: list[tuple[logging.Logger, str]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, logger: logging.Logger, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            info_line(logger, message)
            return
        if self.lines and loop is not self.loop:
            self.write()  # left over from a loop that is gone
        if not self.lines:
            self.loop = loop
            loop.call_soon(self.write)
        self.lines.append((logger, message))

    def write(self) -> None:
        lines, self.lines = self.lines, []
        for logger, message in lines:
            info_line(logger, message)


_deferred = _Deferred()


def info_line_soon(logger: logging.Logger, message: str) -> None:
    """:func:`info_line` once the event loop has finished its current turn.

    For a cache hit answered in microseconds: its reply goes out before its line
    is formatted and written (at concurrency 1 the client waited for the line).
    Lines of one turn are written by one callback; without a running loop, now.
    """
    _deferred.add(logger, message)


def flush_all() -> None:
    """Write out every buffered log line now (on exit, and from :func:`keep_flushing`)."""
    _deferred.write()
    for handler in logging.getLogger().handlers:
        handler.flush()


def keep_flushing(loop: asyncio.AbstractEventLoop) -> None:
    """Flush buffered lines every FLUSH_INTERVAL seconds for as long as ``loop`` runs."""
    flush_all()
    loop.call_later(FLUSH_INTERVAL, keep_flushing, loop)
