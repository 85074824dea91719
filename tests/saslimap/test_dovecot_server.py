"""The Dovecot-protocol listener carries out what the authenticator decided (no socket)."""

from __future__ import annotations

import asyncio
import base64

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
