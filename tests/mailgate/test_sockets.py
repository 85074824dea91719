"""Unix-socket listeners: mode and group set before the path appears; live sockets kept."""

from __future__ import annotations

import grp
import os
import socket
import stat
from pathlib import Path

import pytest

from mailgate.sockets import SocketInUse, bind_unix_socket, unlink_if_ours


def test_socket_mode_is_applied(sockdir: Path) -> None:
    """The socket gets the configured mode before clients can see it."""
    sock = bind_unix_socket(sockdir / "sub" / "mux", mode=0o600)
    try:
        st = os.stat(sockdir / "sub" / "mux")
        assert stat.S_ISSOCK(st.st_mode)
        assert 0o600 == stat.S_IMODE(st.st_mode)
    finally:
        sock.close()


def test_stale_socket_is_replaced(sockdir: Path) -> None:
    """A socket file nobody listens on (left by a crash) is replaced."""
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(sockdir / "mux"))
    old.close()
    bind_unix_socket(sockdir / "mux").close()


def test_live_socket_is_not_stolen(sockdir: Path) -> None:
    """A socket another daemon answers on is refused, not replaced."""
    live = bind_unix_socket(sockdir / "mux")
    try:
        with pytest.raises(SocketInUse):
            bind_unix_socket(sockdir / "mux")
    finally:
        live.close()


def test_regular_file_is_not_replaced(sockdir: Path) -> None:
    """A file that is not a socket is never deleted."""
    (sockdir / "mux").write_text("precious")
    with pytest.raises(SocketInUse):
        bind_unix_socket(sockdir / "mux")
    assert "precious" == (sockdir / "mux").read_text()


def test_socket_group_is_applied(sockdir: Path) -> None:
    """socket_group sets the socket's group (Debian uses "sasl" for postfix)."""
    # A group other than the one a new file gets anyway, or the test proves nothing.
    others = [1] if os.geteuid() == 0 else [g for g in os.getgroups() if g != os.getegid()]
    if not others:
        pytest.skip("no second group to give the socket")
    group = grp.getgrgid(others[0])
    sock = bind_unix_socket(sockdir / "mux", group=group.gr_name)
    try:
        assert group.gr_gid == os.stat(sockdir / "mux").st_gid
    finally:
        sock.close()


def test_unlink_only_while_the_socket_is_ours(sockdir: Path) -> None:
    """A successor's socket at the same path is left alone on our exit."""
    sock = bind_unix_socket(sockdir / "mux")
    ours = os.stat(sockdir / "mux").st_ino
    sock.close()
    # Moved aside, not removed, so the successor cannot be given the same inode number.
    (sockdir / "mux").rename(sockdir / "old")
    successor = bind_unix_socket(sockdir / "mux")
    try:
        unlink_if_ours(sockdir / "mux", ours)
        assert (sockdir / "mux").exists()
        unlink_if_ours(sockdir / "mux", os.stat(sockdir / "mux").st_ino)
        assert not (sockdir / "mux").exists()
    finally:
        successor.close()
