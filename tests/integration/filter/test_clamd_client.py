"""The clamd client against a real clamd: descriptor passing, streaming, TCP, and fallback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devstack.clamd import (
    EICAR,
    EICAR_SIGNATURE_PREFIX,
    TEST_MARKER,
    TEST_MARKER_SIGNATURE,
    Clamd,
)
from devstack.ports import free_port
from filter.clamd import FD_FAILURES_BEFORE_INSTREAM, ClamdClient, Outcome
from filter.spool import Spool
from tests.devstack.test_devstack_filter import mail_with_attachment, zipped

pytestmark = pytest.mark.integration

PLAIN = b"From: a@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def clamd(workroot: Path) -> Iterator[Clamd]:
    """A clamd with the project's test signatures on a Unix socket and a TCP port."""
    with Clamd(workroot / "clamd-client", tcp_port=free_port()) as daemon:
        yield daemon


def _clients(clamd: Clamd) -> list[ClamdClient]:
    return [
        ClamdClient(clamd.address),  # FILDES with a memfd
        ClamdClient(clamd.address, pass_fd=False),  # INSTREAM on the Unix socket
        ClamdClient(f"127.0.0.1:{clamd.tcp_port}"),  # INSTREAM over TCP
    ]


async def test_every_way_of_asking_finds_the_same(clamd: Clamd) -> None:
    """Passed descriptor, Unix stream and TCP stream: EICAR in a zip attachment, our marker
    in a 100 KB text, and a clean message get the same verdicts."""
    big = PLAIN + b"x" * 100_000 + b"\r\n" + TEST_MARKER + b"\r\n"
    infected = mail_with_attachment(zipped("readme.com", EICAR), "docs.zip")
    clients = _clients(clamd)
    for client in clients:
        assert Outcome.CLEAN == (await client.scan(PLAIN)).outcome
        found = await client.scan(infected)
        assert Outcome.VIRUS == found.outcome
        assert found.name.startswith(EICAR_SIGNATURE_PREFIX)
        assert TEST_MARKER_SIGNATURE == (await client.scan(big)).name
    assert clients[0].pass_fd  # three descriptor scans, none fell back to the stream


async def test_a_spooled_message_is_scanned_from_its_file_every_way(clamd: Clamd) -> None:
    """A spooled 3 MB message: its file's descriptor, and its chunks streamed on the Unix
    socket and over TCP, find a marker in the last chunk; a clean one is clean."""
    body = (b"y" * 76 + b"\r\n") * 40_000
    infected, clean = Spool(), Spool()
    try:
        infected.write(PLAIN + body + TEST_MARKER + b"\r\n")
        clean.write(PLAIN + body)
        clients = _clients(clamd)
        for client in clients:
            assert TEST_MARKER_SIGNATURE == (await client.scan(infected)).name
            assert Outcome.CLEAN == (await client.scan(clean)).outcome
        assert clients[0].pass_fd  # the descriptor was read, no fallback
    finally:
        infected.close()
        clean.close()


class FakeClamd:
    """A Unix-socket clamd stand-in: ``fildes`` and ``instream`` are its answers to each."""

    def __init__(self, path: Path, fildes: bytes, instream: bytes) -> None:
        self.path = path
        self.answers = {b"zFILDES\0": fildes, b"zINSTREAM\0": instream}
        self.asked: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = await reader.readuntil(b"\0")
        self.asked.append(command)
        if command == b"zINSTREAM\0":
            while True:  # read the chunks up to the zero-length one
                size = int.from_bytes(await reader.readexactly(4), "big")
                if not size:
                    break
                await reader.readexactly(size)
        writer.write(self.answers.get(command, b"UNKNOWN COMMAND\0"))
        await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeClamd]:
        server = await asyncio.start_unix_server(self._serve, str(self.path))
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


async def test_a_clamd_that_cannot_read_descriptors_gets_streams(sockdir: Path) -> None:
    """FILDES answered ERROR: each message is streamed instead and judged by that answer;
    after a few such answers the client streams straight away."""
    fake = FakeClamd(sockdir / "fake", b"fd[9]: lstat() failed: Permission denied. ERROR\0",
                     b"stream: OK\0")  # fmt: skip
    async with fake.running():
        client = ClamdClient(f"unix:{fake.path}")
        for _ in range(FD_FAILURES_BEFORE_INSTREAM):
            assert Outcome.CLEAN == (await client.scan(PLAIN)).outcome
        assert not client.pass_fd
        assert Outcome.CLEAN == (await client.scan(PLAIN)).outcome
    assert [b"zFILDES\0", b"zINSTREAM\0"] * FD_FAILURES_BEFORE_INSTREAM + [
        b"zINSTREAM\0"
    ] == fake.asked


async def test_errors_both_ways_are_not_scanned(sockdir: Path) -> None:
    """ERROR to the descriptor and to the stream: not scanned, and descriptors stay in use."""
    fake = FakeClamd(sockdir / "fake", b"fd[9]: Can't allocate memory ERROR\0",
                     b"stream: Can't allocate memory ERROR\0")  # fmt: skip
    async with fake.running():
        client = ClamdClient(f"unix:{fake.path}")
        for _ in range(FD_FAILURES_BEFORE_INSTREAM + 1):
            assert Outcome.ERROR == (await client.scan(PLAIN)).outcome
        assert client.pass_fd


async def test_a_virus_found_by_the_stream_after_a_descriptor_error_is_a_virus(
    sockdir: Path,
) -> None:
    """The fallback's FOUND is the verdict."""
    fake = FakeClamd(sockdir / "fake", b"fd[9]: lstat() failed ERROR\0",
                     b"stream: Eicar-Test-Signature FOUND\0")  # fmt: skip
    async with fake.running():
        result = await ClamdClient(f"unix:{fake.path}").scan(PLAIN)
    assert Outcome.VIRUS == result.outcome
    assert "Eicar-Test-Signature" == result.name
