"""A small client of Dovecot's authentication protocol, as Postfix's smtpd speaks it.

What tests and benchmarks use to reach saslimap's Dovecot-protocol listener
directly, with a client address of their choosing (``rip=``), without a
Postfix in between: one AUTH PLAIN per connection, answered ``ok``, ``fail``
or ``closed`` (saslimap's "try later": Postfix answers 454 to a lost
connection).
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path

HANDSHAKE = b"VERSION\t1\t2\nCPID\t4242\n"


def dovecot_auth(
    path: Path | str, user: str, password: str, rip: str, timeout: float = 30.0
) -> str:
    """One AUTH PLAIN from client address ``rip``: "ok", "fail" or "closed"."""
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    request = f"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip={rip}\tresp={token}\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(HANDSHAKE + request.encode())
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return "closed"
            data += chunk
            for line in data.split(b"\n"):
                if line.startswith(b"OK\t1"):
                    return "ok"
                if line.startswith(b"FAIL\t1"):
                    return "fail"
