"""The learn mailbox against hostile IMAP servers: a run deadline and a size bound per answer."""

from __future__ import annotations

import itertools
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator

import pytest

from mailgate.bounds import Allowance, BoundExceeded, Deadline
from mailgate.config import parse_imap_url
from mailgate.imap import BackendUnavailable, ImapSettings
from mailgate.mailbox import Mailbox, open_mailbox
from tests.fakes import FolderImap, ScriptedImap

PASSWORD = "s3cret pässword"
MiB = 1024 * 1024

Misbehave = Callable[[bytes], bytes | Iterable[bytes] | None]


def on(command: bytes, answer: Callable[[], Iterable[bytes]]) -> Misbehave:
    """Misbehave (with ``answer()``) on the first line containing ``command``, else answer well."""

    def misbehave(line: bytes) -> Iterable[bytes] | None:
        return answer() if command in line.upper() else None

    return misbehave


def forever(chunk: bytes, first: bytes = b"") -> Iterator[bytes]:
    """``first``, then ``chunk`` again and again (the server closing ends it)."""
    yield first
    while True:
        yield chunk


def trickle(data: bytes, pause: float) -> Iterator[bytes]:
    """``data`` one byte at a time, ``pause`` seconds apart, then the same again for ever."""
    while True:
        for byte in data:
            time.sleep(pause)
            yield bytes([byte])


class Hostile:
    """Starts FolderImap servers that misbehave; closes them after the test."""

    def __init__(self) -> None:
        self.servers: list[ScriptedImap] = []
        self.mailboxes: list[Mailbox] = []

    def mailbox(
        self,
        misbehave: Misbehave,
        *,
        run_timeout: float = 10.0,
        max_response: int = MiB,
        response_timeout: float = 5.0,
    ) -> Mailbox:
        """A logged-in mailbox on a server with one spam message, bounded as given."""
        folders = {"spam": {1: b"Subject: one\r\n\r\nbody\r\n"}}
        server = ScriptedImap(FolderImap.GREETING, FolderImap(folders, misbehave))
        self.servers.append(server)
        target = parse_imap_url(f"imap+plaintext://127.0.0.1:{server.port}")
        settings = ImapSettings(target, None, 5.0, response_timeout)
        box = open_mailbox(
            settings, "admin", PASSWORD,
            deadline=Deadline(run_timeout, "learn.run_timeout"),
            allowance=Allowance(max_response, "learn.max_response"),
        )  # fmt: skip
        self.mailboxes.append(box)
        return box


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    """Hostile servers, closed after the test."""
    made = Hostile()
    yield made
    for box in made.mailboxes:
        box.logout()
    for server in made.servers:
        server.close()


def ends_with(kind: str, call: Callable[[], object]) -> tuple[BoundExceeded, float, int]:
    """Run ``call``, which must raise BoundExceeded of ``kind``: the error, seconds, peak bytes."""
    tracemalloc.start()
    begin = time.monotonic()
    try:
        with pytest.raises(BoundExceeded) as caught:
            call()
        seconds = time.monotonic() - begin
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert kind == caught.value.kind
    assert PASSWORD not in str(caught.value)
    return caught.value, seconds, peak


def test_answers_within_the_bounds_are_read_whole(hostile: Hostile) -> None:
    """A literal larger than one socket read, and lines split across packets, arrive intact."""
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * 4000  # over a megabyte in all

    def misbehave(line: bytes) -> Iterable[bytes] | None:
        if b"BODY.PEEK" not in line:
            return None
        head = b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(big)
        # Cut the head, the literal and the trailer at awkward places.
        return [head[:5], head[5:], big[:3], big[3:], b")", b"\r", b"\n{tag} OK ", b"done\r\n"]

    box = hostile.mailbox(misbehave, max_response=2 * MiB)
    box.select_folder("spam")
    assert {1: big} == {u: v[b"BODY[]"] for u, v in box.fetch([1], [b"BODY.PEEK[]"]).items()}
    assert [1] == box.search(["UID", "1:*"])


def test_gigantic_literal_is_refused_before_it_is_read(hostile: Hostile) -> None:
    """``{5000000000}`` is refused on its announced size: an error at once, nothing allocated."""
    head = b"* 1 FETCH (UID 1 BODY[] {5000000000}\r\n"
    box = hostile.mailbox(on(b"BODY.PEEK", lambda: forever(b"x" * 65536, head)))
    box.select_folder("spam")
    err, seconds, peak = ends_with("size", lambda: box.fetch([1], [b"BODY.PEEK[]"]))
    assert "a literal of 5000000000 bytes" in err.detail
    assert "learn.max_response (1048576 bytes)" in err.detail
    assert seconds < 1.0
    assert peak < MiB


@pytest.mark.parametrize(
    ("max_response", "detail"),
    [
        (256 * 1024, "a response line without end would take the server's answer past"),
        (2 * MiB, "a response line longer than 1000000 bytes"),  # imaplib's own limit
    ],
)
def test_endless_line_ends_at_the_size_bound(
    hostile: Hostile, max_response: int, detail: str
) -> None:
    """A response line that never ends is cut at the bound (or imaplib's line limit)."""
    box = hostile.mailbox(
        on(b"EXAMINE", lambda: forever(b"x" * 65536, b"* OK ")), max_response=max_response
    )
    err, seconds, peak = ends_with("size", lambda: box.select_folder("spam"))
    assert detail in err.detail
    assert seconds < 2.0
    assert peak < 3 * max_response


def test_endless_stream_of_responses_ends_at_the_size_bound(hostile: Hostile) -> None:
    """Small untagged responses without end count together: the answer to one command is bounded."""
    box = hostile.mailbox(
        on(b"EXAMINE", lambda: forever(b"* 1 EXISTS\r\n" * 4096)), max_response=128 * 1024
    )
    err, seconds, peak = ends_with("size", lambda: box.select_folder("spam"))
    assert "learn.max_response (131072 bytes)" in err.detail
    assert seconds < 2.0
    assert peak < 4 * MiB  # imaplib keeps each response it has read, as objects


def test_trickling_server_ends_at_the_run_deadline(hostile: Hostile) -> None:
    """A byte every 0.2 s, each well inside the response timeout, still ends at the deadline."""
    box = hostile.mailbox(on(b"EXAMINE", lambda: trickle(b"* 1 EXISTS\r\n", 0.2)), run_timeout=1.0)
    err, seconds, _ = ends_with("deadline", lambda: box.select_folder("spam"))
    assert "learn.run_timeout (1 s) passed while reading a response line" == err.detail
    assert seconds < 1.5


def test_trickled_literal_ends_at_the_run_deadline(hostile: Hostile) -> None:
    """A literal of fair size sent a byte at a time ends at the deadline too."""
    head = b"* 1 FETCH (UID 1 BODY[] {1000}\r\n"
    box = hostile.mailbox(
        on(b"BODY.PEEK", lambda: itertools.chain([head], trickle(b"x", 0.2))), run_timeout=1.0
    )
    box.select_folder("spam")
    err, seconds, _ = ends_with("deadline", lambda: box.fetch([1], [b"BODY.PEEK[]"]))
    assert "while reading a literal" in err.detail
    assert seconds < 1.5


def test_silence_past_the_deadline_is_the_deadline_not_a_timeout(hostile: Hostile) -> None:
    """With a longer response timeout, a silent server is stopped by the run deadline."""
    box = hostile.mailbox(on(b"EXAMINE", lambda: []), run_timeout=0.5, response_timeout=30)
    _, seconds, _ = ends_with("deadline", lambda: box.select_folder("spam"))
    assert seconds < 1.0


def test_response_timeout_still_applies_inside_the_deadline(hostile: Hostile) -> None:
    """A server silent for the response timeout is still a plain 'timeout', as before."""
    box = hostile.mailbox(on(b"EXAMINE", lambda: []), response_timeout=0.3)
    with pytest.raises(BackendUnavailable) as caught:
        box.select_folder("spam")
    assert "timeout" == caught.value.kind


def test_session_is_over_after_a_bound(hostile: Hostile) -> None:
    """After a bound, every call fails at once with the same error, and logout does not wait."""
    head = b"* 1 FETCH (UID 1 BODY[] {5000000000}\r\n"
    box = hostile.mailbox(on(b"BODY.PEEK", lambda: forever(b"x" * 65536, head)))
    box.select_folder("spam")
    with pytest.raises(BoundExceeded) as first:
        box.fetch([1], [b"BODY.PEEK[]"])
    begin = time.monotonic()
    with pytest.raises(BoundExceeded) as again:
        box.search(["UID", "1:*"])
    box.logout()
    assert first.value is again.value
    assert time.monotonic() - begin < 0.5


def test_login_exchange_is_bounded_too(hostile: Hostile) -> None:
    """A server trickling its answer to the login is stopped by the deadline, password unsaid."""
    _, seconds, _ = ends_with(
        "deadline",
        lambda: hostile.mailbox(
            on(b"AUTHENTICATE", lambda: trickle(b"* OK wait\r\n", 0.2)), run_timeout=1.0
        ),
    )
    assert seconds < 1.5
