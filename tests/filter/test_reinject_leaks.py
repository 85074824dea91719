"""The re-injection client never leaks a downstream connection, whatever goes wrong."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from filter.smtp_out import Reinjector


class Downstream:
    """A scripted SMTP server that counts the connections open on its side.

    ``fail`` names the step that goes wrong: a reply code for ``greeting``,
    ``ehlo``, ``mail``, ``rcpt``, ``data`` or ``final``, or ``drop:<step>`` (close
    the connection instead of answering) or ``mute:<step>`` (never answer).
    """

    def __init__(self) -> None:
        self.fail: dict[str, str] = {}
        self.open: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, step: str, normal: bytes
    ) -> bool:
        """Send the step's reply (or misbehave); False when the session must end."""
        how = self.fail.get(step, "")
        if how == "drop":
            return False
        if how == "mute":
            while await reader.read(4096):  # until the client gives up and closes
                pass
            return False
        if how == "slow":
            await asyncio.sleep(0.3)
            how = ""
        writer.write((how.encode() + b" scripted\r\n") if how else normal)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open.add(writer)
        try:
            if not await self._answer(reader, writer, "greeting", b"220 down.test ESMTP\r\n"):
                return
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    ok = await self._answer(
                        reader, writer, "ehlo", b"250-down.test\r\n250 PIPELINING\r\n"
                    )
                elif verb == b"MAIL":
                    ok = await self._answer(reader, writer, "mail", b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    ok = await self._answer(reader, writer, "rcpt", b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    ok = await self._answer(reader, writer, "data", b"354 go ahead\r\n")
                    if ok and not self.fail.get("data"):
                        while await reader.readline() not in (b".\r\n", b""):
                            pass
                        ok = await self._answer(
                            reader, writer, "final", b"250 2.0.0 Ok: queued\r\n"
                        )
                elif verb == b"RSET":
                    ok = await self._answer(reader, writer, "rset", b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 Bye\r\n")
                    ok = False
                else:
                    ok = await self._answer(reader, writer, "other", b"502 no\r\n")
                if not ok:
                    return
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.open.discard(writer)

    async def settle(self) -> int:
        """The connections still open once closes have had time to arrive."""
        for _ in range(50):
            await asyncio.sleep(0.01)
        return len(self.open)


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    """A fresh scripted server, closed afterwards."""
    down = Downstream()
    await down.start()
    yield down
    assert down.server is not None
    down.server.close()
    for writer in list(down.open):
        writer.close()


MESSAGE = b"Subject: x\r\n\r\n.dot line\r\nbody\r\n"
# Every step that can fail, and every way it can: a 4xx, a 5xx, the connection
# lost, no answer at all (the client's timeout).
FAILURES = [
    {step: how}
    for step in ("greeting", "ehlo", "mail", "rcpt", "data", "final")
    for how in ("451", "554", "drop", "mute")
] + [{"mail": "550", "rset": "drop"}, {"rcpt": "550", "rset": "mute"}]


@pytest.mark.parametrize("fail", FAILURES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
async def test_no_connection_is_left_open_outside_the_pool(
    downstream: Downstream, fail: dict[str, str]
) -> None:
    """After any failure, every connection open downstream is one the pool holds (at most)."""
    client = Reinjector("127.0.0.1", downstream.port, timeout=0.5, pool_size=2)
    if not fail.keys() & {"greeting", "ehlo"}:  # those need a fresh connection: none pooled
        ok = await client.send("a@x.test", ["b@y.test"], MESSAGE)
        assert ok.data is not None
        assert ok.data.ok
    downstream.fail = fail
    delivery = await client.send("a@x.test", ["b@y.test", "c@y.test"], MESSAGE)
    assert delivery.error or delivery.data is None or not delivery.data.ok
    assert client.pooled == await downstream.settle()
    downstream.fail = {}
    again = await client.send("a@x.test", ["b@y.test"], MESSAGE)  # the pool still works
    assert again.data is not None
    assert again.data.ok, again
    assert client.pooled == await downstream.settle() <= 2
    await client.close()
    assert 0 == await downstream.settle()


async def test_our_own_exception_closes_the_connection(downstream: Downstream) -> None:
    """An exception of ours mid-transaction (an address UTF-8 cannot encode) leaks nothing."""
    client = Reinjector("127.0.0.1", downstream.port, timeout=2)
    await client.send("a@x.test", ["b@y.test"], MESSAGE)
    with pytest.raises(UnicodeEncodeError):
        await client.send("a\udcff@x.test", ["b@y.test"], MESSAGE)
    assert client.pooled == await downstream.settle()


async def test_cancellation_mid_transaction_closes_the_connection(downstream: Downstream) -> None:
    """The message deadline cancelling a re-injection leaves nothing open but the pool."""
    client = Reinjector("127.0.0.1", downstream.port, timeout=60)
    await client.send("a@x.test", ["b@y.test"], MESSAGE)
    downstream.fail = {"final": "mute"}
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.send("a@x.test", ["b@y.test"], MESSAGE)
    assert 0 == client.pooled
    assert 0 == await downstream.settle()


async def test_a_connection_coming_back_after_close_is_closed(downstream: Downstream) -> None:
    """A reload closes the old pool while a message is in flight: its connection is not kept."""
    client = Reinjector("127.0.0.1", downstream.port, timeout=5)
    downstream.fail = {"final": "slow"}
    sending = asyncio.ensure_future(client.send("a@x.test", ["b@y.test"], MESSAGE))
    await asyncio.sleep(0.1)
    await client.close()
    done = await sending
    assert done.data is not None
    assert done.data.ok
    assert 0 == client.pooled
    downstream.fail = {}
    late = await client.send("a@x.test", ["b@y.test"], MESSAGE)
    assert late.data is not None
    assert late.data.ok
    assert 0 == client.pooled
    assert 0 == await downstream.settle()


async def test_xforward_bytes_that_were_not_utf8_are_sent_as_xtext() -> None:
    """A HELO name with a byte that was not UTF-8 is passed on escaped, never an exception."""
    from filter.smtp_out import xforward_lines

    [line] = xforward_lines({"HELO": "a\udcffb"}, "HELO")
    assert b"XFORWARD HELO=a+FFb\r\n" == line
