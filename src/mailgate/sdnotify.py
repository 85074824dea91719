"""systemd integration without libsystemd: readiness notices and socket activation.

Owns the two tiny protocols of sd_notify(3) (a datagram to ``$NOTIFY_SOCKET``)
and sd_listen_fds(3) (inherited descriptors from fd 3 on, for our pid only).
Both are no-ops when systemd is not involved.
"""

from __future__ import annotations

import contextlib
import os
import socket

SD_LISTEN_FDS_START = 3


def notify(message: str) -> bool:
    """Send ``READY=1``, ``STOPPING=1``, ``RELOADING=1`` ... to systemd; False if not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.connect(address)
        sock.sendall(message.encode())
        return True
    return False


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_FDS``), if meant for us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not inherited by anything we start
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        out.append(sock)
    return out
