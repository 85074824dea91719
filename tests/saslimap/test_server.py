"""The mux socket server over a real Unix socket, with a fake IMAP backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from saslimap import protocol
from saslimap.config import LimitsConfig, ServerConfig, UsersConfig
from saslimap.server import MuxServer, _Connection
from saslimap.service import Authenticator
from tests.fakes import FakeBackend


class Running:
    """A server under test and the fake behind it."""

    def __init__(self, server: MuxServer, backend: FakeBackend, path: Path) -> None:
        self.server = server
        self.backend = backend
        self.path = path

    async def exchange(self, data: bytes, *, eof: bool = False, limit: float = 5.0) -> bytes:
        """Send raw bytes, read until the server closes; returns all it sent."""
        reader, writer = await asyncio.open_unix_connection(str(self.path))
        writer.write(data)
        if eof:
            writer.write_eof()
        try:
            async with asyncio.timeout(limit):
                return await reader.read(-1)
        except ConnectionResetError:
            return b""  # closed while our request was unread: the same as a close for libsasl
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def ask(self, login: bytes, password: bytes, realm: bytes = b"") -> bytes | None:
        """One well-formed request; the reply text, or None if closed without one."""
        raw = await self.exchange(protocol.encode_request(login, password, b"smtp", realm))
        return protocol.parse_reply(raw)


async def start(sockdir: Path, **changes: object) -> Running:
    cfg = replace(ServerConfig(socket=sockdir / "mux", read_timeout=0.3), **changes)  # type: ignore[arg-type]
    backend = FakeBackend({"alice@example.com": "right pw"})
    auth = Authenticator(UsersConfig(), backend)
    server = MuxServer(cfg, auth)
    await server.start()
    return Running(server, backend, cfg.socket)


@pytest.fixture
async def srv(sockdir: Path) -> AsyncIterator[Running]:
    """A running server with default limits and a 0.3 s read deadline."""
    running = await start(sockdir)
    yield running
    await running.server.drain(1.0)


async def test_ok_and_no(srv: Running) -> None:
    """Right password answers OK, wrong answers NO."""
    assert b"OK" == await srv.ask(b"alice", b"right pw", b"example.com")
    reply = await srv.ask(b"alice", b"wrong", b"example.com")
    assert reply is not None
    assert reply.startswith(b"NO ")


async def test_fifth_field_is_accepted(srv: Running) -> None:
    """A request with the client-address field is answered like one without."""
    frame = protocol.encode_request(b"alice", b"right pw", b"smtp", b"example.com", b"192.0.2.7")
    assert b"OK" == protocol.parse_reply(await srv.exchange(frame))


async def test_reply_is_followed_by_half_close(srv: Running) -> None:
    """After the reply the server sends EOF, so the client's read ends at once."""
    raw = await srv.exchange(
        protocol.encode_request(b"alice", b"right pw", b"smtp", b"example.com")
    )
    assert b"\x00\x02OK" == raw


async def test_backend_outage_closes_without_reply(srv: Running) -> None:
    """By default an outage hangs up, so Postfix answers 454 rather than 535."""
    srv.backend.down = "connect"
    assert await srv.ask(b"alice", b"right pw", b"example.com") is None


async def test_backend_outage_can_answer_no(sockdir: Path) -> None:
    """on_backend_error = "no" answers NO instead, never OK."""
    running = await start(sockdir, on_backend_error="no")
    running.backend.down = "timeout"
    reply = await running.ask(b"alice", b"right pw", b"example.com")
    assert reply is not None
    assert reply.startswith(b"NO temporary failure")
    await running.server.drain(1.0)


async def test_oversized_field_gets_no(srv: Running) -> None:
    """A field over 256 bytes is refused by its length, without reading it."""
    reply = await srv.ask(b"a" * 257, b"pw")
    assert reply is not None
    assert reply.startswith(b"NO login too long")
    assert [] == srv.backend.calls


async def test_truncated_request_is_closed_without_reply(srv: Running) -> None:
    """A client that sends half a request and EOF gets nothing back."""
    assert b"" == await srv.exchange(b"\x00\x05ali", eof=True)


async def test_silent_client_is_closed_after_the_deadline(srv: Running) -> None:
    """A connection that never completes a request is closed at read_timeout."""
    loop = asyncio.get_running_loop()
    begin = loop.time()
    assert b"" == await srv.exchange(b"\x00", limit=3.0)
    assert loop.time() - begin < 2.0


async def test_slow_client_does_not_delay_others(srv: Running) -> None:
    """While one client dribbles bytes, another is answered at once."""
    _, writer = await asyncio.open_unix_connection(str(srv.path))
    writer.write(b"\x00")
    assert b"OK" == await srv.ask(b"alice", b"right pw", b"example.com")
    writer.close()
    await writer.wait_closed()


async def test_garbage_never_gets_ok(srv: Running) -> None:
    """Random bytes are answered NO or closed, and the server keeps serving."""
    rng = __import__("random").Random(7)
    for _ in range(200):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        raw = await srv.exchange(blob, eof=True)
        reply = protocol.parse_reply(raw)
        assert reply is None or not protocol.reply_is_ok(reply)
    assert b"OK" == await srv.ask(b"alice", b"right pw", b"example.com")


async def test_connection_cap(sockdir: Path) -> None:
    """Connections beyond max_connections are closed at once; others still work."""
    running = await start(sockdir, max_connections=3, read_timeout=2.0)
    held = [await asyncio.open_unix_connection(str(running.path)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert b"" == await running.exchange(protocol.encode_request(b"a", b"b", b"", b""))
    for _, writer in held:
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.05)
    assert b"OK" == await running.ask(b"alice", b"right pw", b"example.com")
    await running.server.drain(1.0)


async def test_drain_lets_checks_in_progress_finish(sockdir: Path) -> None:
    """On shutdown, a check already running is answered before the server exits."""
    running = await start(sockdir)
    running.backend.delay = 0.3
    pending = asyncio.create_task(running.ask(b"alice", b"right pw", b"example.com"))
    await asyncio.sleep(0.1)
    await running.server.drain(5.0)
    assert b"OK" == await pending
    assert not running.path.exists()


async def test_each_request_is_decided_once(
    sockdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the socket, with a failure delay: one log line and one count per request."""
    cfg = ServerConfig(socket=sockdir / "mux", read_timeout=0.3)
    auth = Authenticator(
        UsersConfig(),
        FakeBackend({"alice@example.com": "right pw"}),
        limits=LimitsConfig(failure_delay=0.01),
    )
    server = MuxServer(cfg, auth)
    await server.start()
    running = Running(server, FakeBackend(), cfg.socket)
    try:
        with caplog.at_level("INFO", logger="saslimap.service"):
            for password in (b"wrong", b"wrong", b"right pw"):
                await running.ask(b"alice@example.com", password)
            await asyncio.sleep(0)
    finally:
        await server.drain(1.0)
    assert 3 == len([r for r in caplog.records if r.getMessage().startswith("auth ")])
    sample = auth.metrics.registry.get_sample_value
    assert 2.0 == sample("saslimap_requests_total", {"result": "no"})
    assert 1.0 == sample("saslimap_requests_total", {"result": "ok"})
    assert 1.0 == sample("saslimap_cache_hits_total", {"kind": "negative"})
    assert 2.0 == sample("saslimap_cache_misses_total")


async def test_repeated_hits_answer_like_the_first(srv: Running) -> None:
    """Repeats of a cached request (the whole-request fast path) get the same OK and half-close,
    and the same request arriving in two pieces is still answered."""
    frame = protocol.encode_request(b"alice", b"right pw", b"smtp", b"example.com")
    for _ in range(5):
        assert b"\x00\x02OK" == await srv.exchange(frame)
    assert ["alice@example.com"] == srv.backend.calls
    reader, writer = await asyncio.open_unix_connection(str(srv.path))
    try:
        writer.write(frame[:7])
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(frame[7:])
        async with asyncio.timeout(5):
            assert b"\x00\x02OK" == await reader.read(-1)
    finally:
        writer.close()
    wrong = protocol.encode_request(b"alice", b"right pX", b"smtp", b"example.com")
    reply = protocol.parse_reply(await srv.exchange(wrong))
    assert reply is not None
    assert reply.startswith(b"NO ")


class _Transport:
    """Just enough of a transport for one _Connection driven by hand."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def test_a_check_finishes_with_the_authenticator_that_decided_it(sockdir: Path) -> None:
    """A reload between deciding a request and starting its IMAP check: the authenticator
    that decided it finishes it, so neither keeps a check counted in flight."""
    cfg = ServerConfig(socket=sockdir / "mux", read_timeout=2.0)
    old = Authenticator(UsersConfig(), FakeBackend({"alice@example.com": "right pw"}))
    new = Authenticator(UsersConfig(), FakeBackend({"alice@example.com": "right pw"}))
    server = MuxServer(cfg, old)
    transport = _Transport()
    conn = _Connection(server)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(protocol.encode_request(b"alice@example.com", b"right pw", b"smtp", b""))
    assert old.budget._in_flight  # decided, counted, its task not started yet
    server.checker = new  # SIGHUP in the same event-loop turn
    while server.tasks:
        await asyncio.gather(*server.tasks)
    assert b"\x00\x02OK" == transport.written
    assert {} == old.budget._in_flight
    assert {} == new.budget._in_flight
