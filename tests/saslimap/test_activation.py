"""Sockets systemd passes: "saslauthd" is the mux, "dovecot" the Dovecot listener, or a
refused start naming what to fix."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.errors import ConfigError
from mailgate.sdnotify import PassedSocket
from saslimap import activation
from saslimap.config import DovecotConfig, load

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


ROOT = Path(__file__).resolve().parents[2]


def unit_settings(name: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a shipped unit, values in order."""
    out: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def main_cf(key: str) -> str:
    """A parameter conf/postfix/main.cf sets (not a commented alternative)."""
    text = (ROOT / "conf/postfix/main.cf").read_text()
    found: list[str] = re.findall(rf"^{key} = (.*)$", text, re.M)
    assert 1 == len(found), key
    return found[0]


def test_the_shipped_units_pass_the_names_saslimap_adopts() -> None:
    """Each socket unit names its socket as saslimap expects, and hands it to saslimap.service."""
    mux = unit_settings(activation.UNITS[activation.MUX])
    dovecot = unit_settings(activation.UNITS[activation.DOVECOT])
    service = unit_settings("saslimap.service")
    assert [activation.MUX] == mux["FileDescriptorName"]
    assert [activation.DOVECOT] == dovecot["FileDescriptorName"]
    assert ["saslimap.service"] == dovecot["Service"]
    assert 1 == len(mux["ListenStream"]) == len(dovecot["ListenStream"])
    for unit in activation.UNITS.values():
        assert unit in service["After"][0].split()
        assert unit in service["Also"][0].split()
    assert (["0660"], ["postfix"]) == (dovecot["SocketMode"], dovecot["SocketGroup"])


def test_the_shipped_files_agree_on_both_socket_paths() -> None:
    """Units, saslimap.toml, main.cf (Dovecot wiring, the recommended one) and sasl/smtpd.conf
    name the same two sockets, Postfix's paths being relative to its chroot."""
    cfg = load(ROOT / "conf/saslimap.toml")
    mux = unit_settings(activation.UNITS[activation.MUX])["ListenStream"][0]
    dovecot = unit_settings(activation.UNITS[activation.DOVECOT])["ListenStream"][0]
    chroot = "/var/spool/postfix/"
    assert "dovecot" == main_cf("smtpd_sasl_type")
    assert dovecot == chroot + main_cf("smtpd_sasl_path")
    assert Path(dovecot) == cfg.dovecot.socket
    assert Path(mux) == cfg.server.socket
    smtpd_conf = (ROOT / "conf/postfix/sasl/smtpd.conf").read_text()
    assert f"saslauthd_path: /{mux.removeprefix(chroot)}\n" in smtpd_conf
