"""Unix-socket listeners both daemons bind: permissions set before the path appears.

This module owns creating a listening Unix socket safely (bound under a
temporary name, given its mode and group, then renamed into place), refusing
to replace a live one, and removing it on exit only while it is still ours.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def unlink_if_ours(path: Path, inode: int) -> None:
    """Remove a socket file we bound, unless a successor has replaced it meanwhile."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == inode:
            path.unlink()


class SocketInUse(OSError):
    """Another process is already answering on the socket path."""


def bind_unix_socket(
    path: Path, mode: int = 0o660, group: str = "", create_directory: bool = True
) -> socket.socket:
    """A listening Unix socket at ``path`` with the given mode and group.

    The socket is bound under a temporary name, given its mode and group, and
    only then renamed into place, so no client ever sees it with the wrong
    permissions.  An existing file at ``path`` is replaced only if it is a
    socket nobody answers on (stale, left by a crash); a live socket or any
    other kind of file is refused.
    """
    if create_directory:
        # 0755: the postfix user must be able to reach the socket inside.
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _refuse_live(path)
    gid = grp.getgrnam(group).gr_gid if group else -1
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temp))
        os.chmod(temp, mode)
        if gid != -1:
            os.chown(temp, -1, gid)
        sock.listen(1024)
        os.replace(temp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    sock.setblocking(False)
    return sock


def _refuse_live(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale socket %s", path)
        return
    except OSError as err:
        raise SocketInUse(err.errno or errno.EADDRINUSE, f"{path}: cannot probe ({err})") from err
    finally:
        probe.close()
    raise SocketInUse(errno.EADDRINUSE, f"{path} is in use by another running daemon")
