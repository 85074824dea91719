"""Small hand-written fakes shared by unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable

from mailgate.imap import BackendUnavailable, LoginResult


class FakeBackend:
    """An IMAP stand-in: a dict of user -> password, an outage switch, a call log."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self.users = dict(users or {})
        self.down: str | None = None
        self.calls: list[str] = []
        self.delay = 0.0

    async def login(self, user: str, password: str, client_addr: str = "") -> LoginResult:
        """Answer like an IMAP server would."""
        self.calls.append(user)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise BackendUnavailable(self.down, "fake outage")
        if self.users.get(user) == password:
            return LoginResult.ACCEPTED
        return LoginResult.REJECTED


class ScriptedImap:
    """A tiny threaded TCP server on 127.0.0.1 that plays an IMAP server badly or well.

    ``greeting`` is sent on connect (``None``: never greet); each received line is
    recorded and passed to ``answer``, which returns bytes to send (with the tag
    substituted for ``{tag}``), ``None`` for silence, or an iterable of chunks sent
    one after the other (a generator may sleep between them, or never end: it
    stops when the client hangs up or the server is closed).
    """

    def __init__(
        self,
        greeting: bytes | None,
        answer: Callable[[bytes], bytes | Iterable[bytes] | None] = lambda _line: None,
    ) -> None:
        self.greeting = greeting
        self.answer = answer
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.1)
            if self.greeting is not None:
                conn.sendall(self.greeting)
            buf = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    self.received.append(line)
                    reply = self.answer(line)
                    if reply is None:
                        continue
                    tag = line.split(b" ", 1)[0]
                    for chunk in [reply] if isinstance(reply, bytes) else reply:
                        if not self._send(conn, chunk.replace(b"{tag}", tag)):
                            return  # the client hung up first, or the server is closing

    def _send(self, conn: socket.socket, data: bytes) -> bool:
        """Send all of ``data`` (waiting while the client reads slowly) unless stopped."""
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                view = view[conn.send(view) :]
            except TimeoutError:
                continue
            except OSError:
                return False
        return not view

    def close(self) -> None:
        """Stop accepting and end every connection."""
        self._stop.set()
        self.listener.close()
        self._accepter.join(2)
        for t in self._threads:
            t.join(2)


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of a real server; chosen connections stall.

    ``stall(n)`` decides for the n-th accepted connection (from 0): True means
    accept it and never send or forward a byte (a hung server); False means pipe
    both ways to ``127.0.0.1:target_port``.
    """

    def __init__(self, target_port: int, stall: Callable[[int], bool], delay: float = 0.0) -> None:
        self.target_port = target_port
        self.stall = stall
        self.delay = delay  # seconds before a piped connection is forwarded
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        n = 0
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.stall(n):
                self._held.append(conn)
            else:
                threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()
            n += 1

    def _pipe(self, conn: socket.socket) -> None:
        if self.delay:
            time.sleep(self.delay)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            conn.close()
            return

        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        t = threading.Thread(target=copy, args=(upstream, conn), daemon=True)
        t.start()
        copy(conn, upstream)
        t.join(5)
        conn.close()
        upstream.close()

    def close(self) -> None:
        """Stop accepting and drop every held connection."""
        self._stop.set()
        self.listener.close()
        self._thread.join(2)
        for s in self._held:
            s.close()


class FolderImap:
    """The answers of an IMAP server holding ``folders`` (name -> UID -> message), for ScriptedImap.

    Knows what a mailbox session of ``mail-filter learn`` sends: CAPABILITY,
    AUTHENTICATE PLAIN (any credentials), EXAMINE or SELECT, UID SEARCH, UID FETCH
    of RFC822.SIZE or BODY.PEEK[], LOGOUT; anything else is answered BAD.
    ``misbehave(line)`` is asked first: an answer other than ``None`` replaces the
    proper one (a hostile server).
    """

    CAPS = b"IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+"
    GREETING = b"* OK [CAPABILITY " + CAPS + b"] ready\r\n"

    def __init__(
        self,
        folders: dict[str, dict[int, bytes]],
        misbehave: Callable[[bytes], bytes | Iterable[bytes] | None] = lambda _line: None,
    ) -> None:
        self.folders = folders
        self.misbehave = misbehave
        self.selected: dict[int, bytes] = {}

    def __call__(self, line: bytes) -> bytes | Iterable[bytes] | None:
        """The answer to one command line."""
        hostile = self.misbehave(line)
        if hostile is not None:
            return hostile
        words = line.split(b" ")
        command = b" ".join(words[1:3]).upper() if words[1:2] == [b"UID"] else words[1].upper()
        if command == b"CAPABILITY":
            return b"* CAPABILITY " + self.CAPS + b"\r\n{tag} OK done\r\n"
        if command == b"AUTHENTICATE":
            return b"{tag} OK logged in\r\n"
        if command in (b"EXAMINE", b"SELECT"):
            self.selected = self.folders.get(words[2].strip(b'"').decode(), {})
            return b"* %d EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n{tag} OK done\r\n" % len(
                self.selected
            )
        if command == b"UID SEARCH":  # UID n:*, which includes the highest UID (RFC 3501 6.4.8)
            low = int(words[4].split(b":")[0])
            found = [u for u in sorted(self.selected) if u >= low] or sorted(self.selected)[-1:]
            return b"* SEARCH " + b" ".join(b"%d" % u for u in found) + b"\r\n{tag} OK done\r\n"
        if command == b"UID FETCH":
            return b"".join(self._fetch(words[3], b" ".join(words[4:]))) + b"{tag} OK done\r\n"
        if command == b"LOGOUT":
            return b"* BYE bye\r\n{tag} OK done\r\n"
        return b"{tag} BAD unknown command\r\n"

    def _fetch(self, uids: bytes, items: bytes) -> Iterable[bytes]:
        for uid in sorted(int(u) for u in uids.split(b",")):
            message = self.selected.get(uid)
            if message is None:
                continue
            if b"RFC822.SIZE" in items:
                yield b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (uid, uid, len(message))
            else:
                yield b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (
                    uid, uid, len(message), message
                )  # fmt: skip
