"""Socket activation: passed descriptors read with their names, and handed out by name."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailgate import sdnotify
from mailgate.sdnotify import PassedSocket

# Far above anything pytest holds open: the tests put listening sockets there.
FIRST_FD = 200


Take = Callable[[dict[str, str]], list[PassedSocket]]


@pytest.fixture
def take(sockdir: Path) -> Iterator[Take]:
    """Three listening Unix sockets at fds 200, 201 and 202, and passed_sockets() over them
    (everything it adopts is closed afterwards)."""
    made = []
    for i in range(3):
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(sockdir / f"s{i}"))
        sock.listen()
        os.dup2(sock.fileno(), FIRST_FD + i, inheritable=False)
        made.append(sock)
    adopted: list[PassedSocket] = []

    def run(env: dict[str, str]) -> list[PassedSocket]:
        adopted.extend(sdnotify.passed_sockets(env, first_fd=FIRST_FD))
        return adopted

    yield run
    for p in adopted:
        p.sock.close()
    for i in range(len(adopted), 3):
        os.close(FIRST_FD + i)
    for sock in made:
        sock.close()


def environ(count: int, names: str | None, pid: int | None = None) -> dict[str, str]:
    env = {"LISTEN_PID": str(pid or os.getpid()), "LISTEN_FDS": str(count)}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


def paths(passed: list[PassedSocket]) -> list[tuple[str, str]]:
    return [(p.name, Path(p.sock.getsockname()).name) for p in passed]


def test_names_come_from_listen_fdnames(take: Take) -> None:
    """Each descriptor from the first on gets its name from LISTEN_FDNAMES, in order."""
    env = environ(2, "saslauthd:dovecot")
    passed = take(env)
    assert [("saslauthd", "s0"), ("dovecot", "s1")] == paths(passed)
    assert {} == env, "LISTEN_* must not reach what the daemon starts"
    assert not os.get_inheritable(passed[0].sock.fileno())


def test_without_listen_fdnames_every_socket_is_unknown(take: Take) -> None:
    """No LISTEN_FDNAMES (systemd-socket-activate without --fdname): each is "unknown"."""
    passed = take(environ(2, None))
    assert [("unknown", "s0"), ("unknown", "s1")] == paths(passed)


def test_names_for_a_different_count_refuse_the_start(take: Take) -> None:
    """LISTEN_FDNAMES naming another number of sockets than LISTEN_FDS: no start (an OSError
    naming both), rather than a guess that leaves Postfix's socket unanswered."""
    with pytest.raises(OSError, match="LISTEN_FDNAMES names 1 sockets but LISTEN_FDS passes 2"):
        take(environ(2, "saslauthd"))


def test_more_fds_announced_than_passed_is_an_error_naming_them() -> None:
    """LISTEN_FDS counting an fd that is not open, or not a socket: an error naming the fd."""
    first = 150
    with open(os.devnull, "rb") as plain:
        os.dup2(plain.fileno(), first)
    try:
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a"}
        with pytest.raises(OSError, match=f"fd {first} .'a'., which is not a socket"):
            sdnotify.passed_sockets(env, first_fd=first)
    finally:
        os.close(first)
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a"}
    with pytest.raises(OSError, match=f"LISTEN_FDS passes 1 sockets from fd {first}"):
        sdnotify.passed_sockets(env, first_fd=first)


def test_sockets_for_another_pid_are_left_alone(take: Take) -> None:
    """LISTEN_PID of another process (our parent's, say): nothing is adopted or removed."""
    env = environ(2, "saslauthd:dovecot", pid=os.getpid() + 1)
    assert [] == take(env)
    assert "LISTEN_FDS" in env


def passed(*names: str) -> list[PassedSocket]:
    return [PassedSocket(name, socket.socket(socket.AF_UNIX)) for name in names]


WANTED = ("saslauthd", "dovecot")


@pytest.mark.parametrize("name", ["unknown", "saslimap.socket"])
def test_a_lone_unnamed_socket_is_the_default_listeners(name: str) -> None:
    """One socket without FileDescriptorName= ("unknown" or the unit's name) is ``lone``'s."""
    given = passed(name)
    assert {"saslauthd": given[0].sock} == sdnotify.adopt(given, WANTED, lone="saslauthd")
    given[0].sock.close()


def test_named_sockets_go_to_their_listeners() -> None:
    """Sockets named as wanted are handed out by name, whatever their order."""
    given = passed("dovecot", "saslauthd")
    adopted = sdnotify.adopt(given, WANTED, lone="saslauthd")
    assert {"dovecot": given[0].sock, "saslauthd": given[1].sock} == adopted
    for p in given:
        p.sock.close()


@pytest.mark.parametrize(
    ("names", "kept", "why"),
    [
        (["saslauthd", "portal"], ["saslauthd"], "the names served here are"),
        (["bogus"], [], "the names served here are"),
        (["saslauthd", "saslauthd"], ["saslauthd"], "another passed socket has that name"),
        (["unknown", "unknown"], [], "one of several passed sockets without FileDescriptorName="),
        (["dovecot", "saslimap.socket"], ["dovecot"], "one of several passed sockets"),
    ],
)
def test_sockets_nobody_serves_are_logged_once_and_closed(
    names: list[str], kept: list[str], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Unknown names, a name's second socket and unnamed ones among several: one line, closed."""
    caplog.set_level(logging.WARNING)
    given = passed(*names)
    adopted = sdnotify.adopt(given, WANTED, lone="saslauthd")
    assert kept == list(adopted)
    closed = [p for p in given if p.sock not in adopted.values()]
    assert all(p.sock.fileno() == -1 for p in closed)
    assert len(closed) == len(caplog.records)
    assert all(why in r.getMessage() for r in caplog.records)
    for sock in adopted.values():
        sock.close()
