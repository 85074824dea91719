"""Which socket systemd passed serves which of saslimap's two listeners.

This module owns the names saslimap answers to under socket activation
(``FileDescriptorName=`` in its socket units) and the checks on what it is
given: ``saslauthd`` is the mux socket (``systemd/saslimap.socket``),
``dovecot`` the Dovecot-protocol socket (``systemd/saslimap-dovecot.socket``).
A lone socket without a name is the mux socket, as units before names had it.
A passed socket's path, mode and group are its unit's: ``server.socket`` and
``dovecot.socket`` then only say whether a listener is wanted.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from mailgate import sdnotify
from mailgate.errors import ConfigError
from mailgate.sdnotify import PassedSocket
from saslimap.config import DovecotConfig

MUX = "saslauthd"
DOVECOT = "dovecot"
UNITS = {MUX: "saslimap.socket", DOVECOT: "saslimap-dovecot.socket"}


@dataclass(frozen=True)
class Adopted:
    """The listening sockets systemd passed, one per listener (None: bind it ourselves)."""

    mux: socket.socket | None = None
    dovecot: socket.socket | None = None

    def close(self) -> None:
        """Close both (a refused start)."""
        for sock in (self.mux, self.dovecot):
            if sock is not None:
                sock.close()


def adopt(passed: Sequence[PassedSocket], dovecot: DovecotConfig) -> Adopted:
    """Hand the passed sockets to the listeners by name; ConfigError when they cannot serve.

    A socket that is not a Unix stream socket is refused (``ListenStream=`` must
    name a path), and so is a ``dovecot`` socket while ``dovecot.socket`` is
    "" (the listener off): the two files disagree, and a socket systemd keeps
    open with nobody accepting would leave Postfix waiting on every login,
    where a refused start says what to fix at once.
    """
    by_name = sdnotify.adopt(passed, (MUX, DOVECOT), lone=MUX)
    adopted = Adopted(by_name.get(MUX), by_name.get(DOVECOT))
    try:
        for name, sock in by_name.items():
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ConfigError(
                    f"the socket named {name!r} that systemd passed ({UNITS[name]}) is "
                    f"{sock.family.name}/{sock.type.name} on {sdnotify.describe(sock)}, "
                    "not a Unix stream socket: its ListenStream= must be a path"
                )
        if adopted.dovecot is not None and dovecot.socket is None:
            raise ConfigError(
                f"dovecot.socket: systemd passed a socket named {DOVECOT!r} "
                f"({UNITS[DOVECOT]}, on {sdnotify.describe(adopted.dovecot)}) but the "
                'Dovecot-protocol listener is off (dovecot.socket = ""): set dovecot.socket '
                f"to turn it on, or disable {UNITS[DOVECOT]}"
            )
    except ConfigError:
        adopted.close()
        raise
    return adopted
