"""The daemon's log output: the audit line's fast path prints what logging would."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator

import pytest

from mailgate import logs


@pytest.fixture
def daemon_logging() -> Iterator[io.StringIO]:
    """logs.setup() as the daemon calls it, writing into a string instead of stderr."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    for h in saved[0]:  # setup() would flush and close handlers it recognises as its own
        root.removeHandler(h)
    handler = logs.setup("saslimap", "info")
    out = io.StringIO()
    dup_of_stderr = handler.setStream(out)
    assert dup_of_stderr is not None
    dup_of_stderr.close()
    yield out
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    logs._direct = None


def test_info_line_matches_logging_format(daemon_logging: io.StringIO) -> None:
    """A line written directly has the format of one written through logging."""
    log = logging.getLogger("saslimap.service")
    log.info("%s", 'auth user="a" result=ok')
    logs.info_line(log, 'auth user="a" result=ok')
    logs.flush_all()
    first, second = daemon_logging.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    pattern = stamp + r" saslimap\[\d+\]: INFO saslimap.service: auth user=\"a\" result=ok"
    assert re.fullmatch(pattern, first)
    assert re.fullmatch(pattern, second)


def test_info_line_respects_the_level(daemon_logging: io.StringIO) -> None:
    """At level warning the audit line is not written."""
    logging.getLogger().setLevel(logging.WARNING)
    logs.info_line(logging.getLogger("saslimap.service"), "hidden")
    logs.flush_all()
    assert "" == daemon_logging.getvalue()


def test_info_line_goes_through_logging_when_others_listen(
    daemon_logging: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    """With another handler installed (here pytest's), the line reaches it too."""
    with caplog.at_level(logging.INFO):
        logs.info_line(logging.getLogger("saslimap.service"), "seen by all")
    assert ["seen by all"] == [r.getMessage() for r in caplog.records]


async def test_info_line_soon_writes_after_the_turn_in_order(daemon_logging: io.StringIO) -> None:
    """Deferred lines are written, in order, once the event loop turns; flush_all forces them."""
    log = logging.getLogger("saslimap.service")
    logs.info_line_soon(log, "first")
    logs.info_line_soon(log, "second")
    logs.flush_all()
    assert ["first", "second"] == [
        line.rsplit(": ", 1)[1] for line in daemon_logging.getvalue().splitlines()
    ]
    logs.info_line_soon(log, "third")
    assert "third" not in daemon_logging.getvalue()  # held until the loop turns
    await asyncio.sleep(0)
    assert daemon_logging.getvalue().endswith("saslimap.service: third\n")


def test_info_line_soon_without_a_loop_writes_now(daemon_logging: io.StringIO) -> None:
    """Outside an event loop the line is written at once."""
    logs.info_line_soon(logging.getLogger("saslimap.service"), "now")
    logs.flush_all()
    assert daemon_logging.getvalue().endswith("saslimap.service: now\n")
