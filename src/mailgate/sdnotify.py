"""systemd integration without libsystemd: readiness notices and socket activation.

Owns the two tiny protocols of sd_notify(3) (a datagram to ``$NOTIFY_SOCKET``)
and sd_listen_fds_with_names(3) (inherited descriptors from fd 3 on, for our
pid only, named by ``$LISTEN_FDNAMES``), and the rule for handing passed
sockets to listeners by name.  All are no-ops when systemd is not involved.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Collection, MutableMapping, Sequence
from typing import NamedTuple

SD_LISTEN_FDS_START = 3
# sd_listen_fds_with_names(3): the name of every socket when LISTEN_FDNAMES is
# unset (systemd-socket-activate without --fdname, systemd before 227).
UNNAMED = "unknown"

log = logging.getLogger(__name__)


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


class PassedSocket(NamedTuple):
    """One socket systemd passed, with the name its unit gave it (``FileDescriptorName=``)."""

    name: str
    sock: socket.socket


def passed_sockets(
    environ: MutableMapping[str, str] | None = None, first_fd: int = SD_LISTEN_FDS_START
) -> list[PassedSocket]:
    """Sockets passed by socket activation (``LISTEN_FDS``), if meant for us, with their names.

    The ``LISTEN_*`` variables are removed, so nothing we start inherits them.
    Names come from ``LISTEN_FDNAMES`` (colon-separated, one per socket);
    without it every socket is ``unknown``, as sd_listen_fds_with_names(3) has
    it, and so is every socket when it names a different number of them.
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    raw_names = env.get("LISTEN_FDNAMES")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)  # not inherited by anything we start
    names = raw_names.split(":") if raw_names is not None else [UNNAMED] * count
    if len(names) != count:
        # Not what systemd hands over: guessing which socket is which could leave the
        # one Postfix connects to unanswered, so do not start (systemd says why).
        raise OSError(
            f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS passes {count}:"
            " not starting on sockets that cannot be told apart"
        )
    out = []
    for fd, name in zip(range(first_fd, first_fd + count), names, strict=True):
        try:
            mode = os.fstat(fd).st_mode
        except OSError as err:
            raise OSError(
                f"LISTEN_FDS passes {count} sockets from fd {first_fd}, but fd {fd}"
                f" ({name!r}) is not open ({err.strerror})"
            ) from err
        if not stat.S_ISSOCK(mode):
            raise OSError(f"LISTEN_FDS passes fd {fd} ({name!r}), which is not a socket")
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        out.append(PassedSocket(name, sock))
    return out


def listen_sockets() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (``LISTEN_FDS``), if meant for us."""
    return [passed.sock for passed in passed_sockets()]


def is_unnamed(name: str) -> bool:
    """Whether systemd gave a socket no name of its own: ``unknown``, or its unit's name
    (``FileDescriptorName=`` defaults to the socket unit's name, e.g. ``saslimap.socket``)."""
    return name == UNNAMED or name.endswith(".socket")


def describe(sock: socket.socket) -> str:
    """Where a socket listens, for a log line."""
    try:
        address = sock.getsockname()
    except OSError:
        return f"fd {sock.fileno()}"
    if isinstance(address, bytes):  # abstract or unnamed Unix socket
        address = address.decode(errors="replace")
    if isinstance(address, tuple):
        return ":".join(str(part) for part in address[:2])
    return str(address) or "an unnamed socket"


def adopt(
    passed: Sequence[PassedSocket], wanted: Collection[str], lone: str
) -> dict[str, socket.socket]:
    """The passed sockets named in ``wanted``, by name.

    A single socket passed without a name of its own is ``lone``'s: that is
    what a socket unit without ``FileDescriptorName=`` passes.  Every other
    socket (a name not in ``wanted``, the second of one name, one of several
    unnamed) is logged once and closed: nothing here would ever accept on it.
    """
    out: dict[str, socket.socket] = {}
    for name, sock in passed:
        key = lone if len(passed) == 1 and is_unnamed(name) else name
        if key in wanted and key not in out:
            out[key] = sock
            continue
        if key in out:
            why = "another passed socket has that name"
        elif is_unnamed(name):
            why = "one of several passed sockets without FileDescriptorName="
        else:
            why = "the names served here are " + ", ".join(repr(w) for w in sorted(wanted))
        log.warning(
            "closing the socket systemd passed on %s, named %r (%s): nothing here serves it",
            describe(sock), name, why,
        )  # fmt: skip
        sock.close()
    return out
