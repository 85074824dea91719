"""Sockets systemd passes: "saslauthd" is the mux, "dovecot" the Dovecot listener, or a
refused start naming what to fix."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.errors import ConfigError
from mailgate.sdnotify import PassedSocket
from saslimap import activation
from saslimap.config import DovecotConfig

ON = DovecotConfig(socket=Path("/var/spool/postfix/private/saslimap-auth"))
OFF = DovecotConfig()


@pytest.fixture
def unix() -> Iterator[list[socket.socket]]:
    """Two Unix stream sockets, closed afterwards."""
    made = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    yield made
    for sock in made:
        sock.close()


def test_both_listeners_by_name(unix: list[socket.socket]) -> None:
    """Sockets named "dovecot" and "saslauthd" go to their listeners, in either order."""
    adopted = activation.adopt(
        [PassedSocket("dovecot", unix[0]), PassedSocket("saslauthd", unix[1])], ON
    )
    assert (unix[1], unix[0]) == (adopted.mux, adopted.dovecot)


def test_a_lone_unnamed_socket_is_the_mux(unix: list[socket.socket]) -> None:
    """The one socket a unit without FileDescriptorName= passes is still the mux socket."""
    adopted = activation.adopt([PassedSocket("saslimap.socket", unix[0])], OFF)
    assert (unix[0], None) == (adopted.mux, adopted.dovecot)


def test_only_the_dovecot_socket_leaves_the_mux_to_bind(unix: list[socket.socket]) -> None:
    """With only "dovecot" passed, the mux socket is saslimap's own to bind (server.socket)."""
    adopted = activation.adopt([PassedSocket("dovecot", unix[0])], ON)
    assert (None, unix[0]) == (adopted.mux, adopted.dovecot)


def test_a_dovecot_socket_with_the_listener_off_is_refused(unix: list[socket.socket]) -> None:
    """A "dovecot" socket while dovecot.socket = "" is a config error naming both fixes."""
    with pytest.raises(ConfigError, match=r"^dovecot\.socket: .*saslimap-dovecot\.socket"):
        activation.adopt(
            [PassedSocket("saslauthd", unix[0]), PassedSocket("dovecot", unix[1])], OFF
        )
    assert [-1, -1] == [s.fileno() for s in unix], "a refused start keeps no socket"


@pytest.mark.parametrize(
    ("family", "kind"),
    [(socket.AF_INET, socket.SOCK_STREAM), (socket.AF_UNIX, socket.SOCK_DGRAM)],
    ids=["tcp", "unix-datagram"],
)
def test_a_socket_that_is_not_unix_stream_is_refused(
    family: socket.AddressFamily, kind: socket.SocketKind
) -> None:
    """A passed TCP or datagram socket is refused before any listener uses it."""
    with socket.socket(family, kind) as sock:
        with pytest.raises(ConfigError, match=r"'saslauthd'.*not a Unix stream socket"):
            activation.adopt([PassedSocket("saslauthd", sock)], ON)
        assert -1 == sock.fileno()
