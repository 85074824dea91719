"""A blocking saslauthd-protocol client: what libsasl does, for tools and tests.

It owns one exchange on the mux socket (connect, send the framed request, read
the framed reply); ``saslimap test``, the test suite and the benchmark use it.
"""

from __future__ import annotations

import socket
from pathlib import Path

from saslimap import protocol


class NoReply(ConnectionError):
    """The daemon closed the connection without answering (libsasl: "generic failure")."""


def query(
    path: str | Path,
    login: bytes,
    password: bytes,
    service: bytes = b"",
    realm: bytes = b"",
    *,
    timeout: float = 30.0,
    client_addr: bytes | None = None,
) -> bytes:
    """Send one request and return the reply text (``b"OK"`` or ``b"NO ..."``).

    Raises :class:`NoReply` when the daemon hangs up without a reply, and
    ``OSError`` when the socket cannot be reached.
    """
    frame = protocol.encode_request(login, password, service, realm, client_addr)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(frame)
        buf = b""
        while (reply := protocol.parse_reply(buf)) is None:
            chunk = sock.recv(2048)
            if not chunk:
                raise NoReply("connection closed without a reply")
            buf += chunk
        return reply
