"""The Dovecot-protocol listener carries out what the authenticator decided (no socket)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket

from saslimap.dovecot_server import DovecotAuthServer, _Connection
from saslimap.metrics import Metrics
from saslimap.service import Result, Verdict


class Decided:
    """A checker that answers what it is told to and records what it was asked."""

    def __init__(self, result: Result, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.asked: list[tuple[str, str, str, str]] = []

    async def verify_client(
        self, login: str, password: str, service: str, client_addr: str
    ) -> tuple[Result, float]:
        """Record the request; give the preset answer."""
        self.asked.append((login, password, service, client_addr))
        return self.result, self.delay


class _Transport:
    """Just enough of a transport for one connection driven by hand."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def exchange(checker: Decided) -> tuple[bytes, bool]:
    """One AUTH PLAIN from 2001:db8::7; what the listener wrote after its handshake, and
    whether it hung up."""
    server = DovecotAuthServer(checker, Metrics())
    conn = _Connection(server)
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    transport.written = b""
    resp = base64.b64encode(b"\0alice@example.com\0p w").decode()
    line = f"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=2001:db8::7\tresp={resp}\n"
    conn.data_received(line.encode())
    while server.tracker.tasks:
        await asyncio.gather(*server.tracker.tasks)
    return transport.written, transport.closed


async def test_the_client_address_goes_to_the_authenticator() -> None:
    """Credentials, service and the client's address (rip=) are passed on as they came."""
    checker = Decided(Result(Verdict.OK, "authenticated", "alice@example.com"))
    written, closed = await exchange(checker)
    assert [("alice@example.com", "p w", "smtp", "2001:db8::7")] == checker.asked
    assert (b"OK\t1\tuser=alice@example.com\n", False) == (written, closed)


async def test_a_refusal_waits_the_delay_the_authenticator_set() -> None:
    """A NO is written as FAIL only after the delay the authenticator decided."""
    checker = Decided(Result(Verdict.NO, "authentication failed", kind="ratelimited"), 0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    written, closed = await exchange(checker)
    assert 0.04 <= loop.time() - started  # (the loop may wake a hair early)
    assert (b"FAIL\t1\treason=authentication failed\tuser=alice@example.com\n", False) == (
        written,
        closed,
    )


async def test_an_outage_hangs_up() -> None:
    """TEMPFAIL closes the connection without an answer (Postfix then says 454)."""
    written, closed = await exchange(Decided(Result(Verdict.TEMPFAIL, "IMAP down")))
    assert (b"", True) == (written, closed)


# -- deadlines, on a real Unix socket --------------------------------------------------------


class Slow(Decided):
    """A checker that takes ``seconds`` to answer."""

    def __init__(self, result: Result, seconds: float) -> None:
        super().__init__(result)
        self.seconds = seconds

    async def verify_client(
        self, login: str, password: str, service: str, client_addr: str
    ) -> tuple[Result, float]:
        """Answer after a while."""
        await asyncio.sleep(self.seconds)
        return await super().verify_client(login, password, service, client_addr)


async def serving(checker: Decided, path: str) -> DovecotAuthServer:
    """A listener on ``path`` with short deadlines: 0.2 s to read, 0.5 s idle."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    server = DovecotAuthServer(checker, Metrics(), read_timeout=0.2, idle_timeout=0.5)
    await server.start(sock)
    return server


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the listener hangs up (reading and dropping whatever it sends)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    # (A write of ours that met the hang-up first ends the read with its error.)
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(5):
            while await reader.read(4096):
                pass
    return loop.time() - started


HANDSHAKE = b"VERSION\t1\t2\nCPID\t4242\n"


async def test_a_silent_client_is_closed_at_the_read_deadline(tmp_path: object) -> None:
    """No handshake within read_timeout: the connection is closed."""
    path = f"{tmp_path}/auth"
    server = await serving(Decided(Result(Verdict.OK, "ok", "a")), path)
    reader, writer = await asyncio.open_unix_connection(path)
    assert 0.15 <= await closed_after(reader) < 1.0
    writer.close()
    await server.drain(1.0)


async def test_a_half_sent_line_is_closed_at_the_read_deadline(tmp_path: object) -> None:
    """A handshake, then a request line that never ends: closed after read_timeout."""
    path = f"{tmp_path}/auth"
    server = await serving(Decided(Result(Verdict.OK, "ok", "a")), path)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(HANDSHAKE + b"AUTH\t1\tPLAIN\tservice=smtp")
    assert await closed_after(reader) < 0.45  # read_timeout, not idle_timeout
    writer.close()
    await server.drain(1.0)


async def test_an_idle_client_gets_the_idle_timeout_and_a_slow_check_none(
    tmp_path: object,
) -> None:
    """Between requests a connection may idle for idle_timeout; a check slower than both
    deadlines is answered, and another client is served meanwhile."""
    path = f"{tmp_path}/auth"
    server = await serving(Slow(Result(Verdict.OK, "ok", "alice"), 0.7), path)
    reader, writer = await asyncio.open_unix_connection(path)
    resp = base64.b64encode(b"\0alice\0pw").decode()
    writer.write(HANDSHAKE + f"AUTH\t1\tPLAIN\tservice=smtp\tresp={resp}\n".encode())
    other_reader, other_writer = await asyncio.open_unix_connection(path)
    other_writer.write(HANDSHAKE + f"AUTH\t7\tPLAIN\tservice=smtp\tresp={resp}\n".encode())
    async with asyncio.timeout(5):
        while b"OK\t1\t" not in (line := await reader.readline()):
            assert line, "closed before the answer"
        while b"OK\t7\t" not in (line := await other_reader.readline()):
            assert line, "closed before the answer"
    assert 0.4 <= await closed_after(reader) < 1.5  # idle_timeout after the answer
    for w in (writer, other_writer):
        w.close()
    await server.drain(1.0)


async def test_a_byte_now_and_then_does_not_extend_the_read_deadline(tmp_path: object) -> None:
    """An unfinished handshake trickled one byte every 0.1 s is closed at read_timeout from
    its start, not kept open by each byte."""
    path = f"{tmp_path}/auth"
    server = await serving(Decided(Result(Verdict.OK, "ok", "a")), path)
    reader, writer = await asyncio.open_unix_connection(path)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):  # the listener hangs up meanwhile
            for byte in b"VERSION\t1\t2\nCPID\t4":
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)

    sender = asyncio.ensure_future(trickle())
    assert await closed_after(reader) < 0.45
    sender.cancel()
    writer.close()
    await server.drain(1.0)
