"""Dovecot's per-address auth penalty against the gateway, with and without conf/dovecot/.

Every check saslimap makes comes from the gateway's one address.  With Dovecot's
defaults (auth_failure_delay = 2 s, the anvil penalty of 2 s doubling to 15 s per
address) one attacker's failures delay every other user's next uncached check.
Here a real Dovecot with those defaults runs the shipped snippet
(conf/dovecot/conf.d/99-mailgate-gateway.conf, the gateway being 127.0.0.1), and
the real daemon is asked through both listeners: the Dovecot-protocol one with a
client address (``rip=``, forwarded with IMAP ID), and the saslauthd mux without.
A second Dovecot without the snippet is the control.
"""

from __future__ import annotations

import base64
import imaplib
import os
import socket
import ssl
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot, gateway_snippet
from devstack.tls import TlsFiles
from saslimap import saslauthd_client

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_SASLIMAP = ROOT / "conf" / "saslimap.toml"

USERS = {f"{name}@example.com": f"{name} pw" for name in ("alice", "bob", "carol", "dave", "erin")}
ATTACKER = "192.0.2.66"
CLIENT = "192.0.2.10"
# An uncached check that answers within this is not delayed: Dovecot's smallest
# penalty is 2 s, and an undelayed check takes tens of milliseconds here.
FAST = 1.5
# Made-up names, a wrong password for a real user, and names Dovecot refuses before
# any passdb is asked (auth_username_chars), last: each of those raises the sender's
# penalty, which delays whatever the sender tries next.
GUESSES = [
    ("nobody@example.com", "guess 1"),
    ("zz9-admin@example.com", "guess 2"),
    ("alice@example.com", "guess 3"),
    ("jürgen@example.com", "guess 4"),
    ("用户@example.com", "guess 5"),
]
ASCII_GUESSES = [(user, pw) for user, pw in GUESSES if user.isascii()]


@dataclass
class Stack:
    """One Dovecot and the saslimap daemon in front of it."""

    dovecot: Dovecot
    saslimap: SaslimapDaemon

    @property
    def auth_socket(self) -> Path:
        return self.saslimap.socket_path.with_name("auth")


def gateway_config(directory: Path, gateway: str) -> str:
    """The shipped snippet for a gateway at ``gateway``; its address list goes in ``directory``."""
    return gateway_snippet(directory, gateway)


def start_stack(root: Path, tls: TlsFiles, extra_config: str, name_chars: str = "") -> Stack:
    """Dovecot with its default delays plus ``extra_config``, and saslimap forwarding addresses
    (refusing names outside ``name_chars`` itself, when given)."""
    dovecot = Dovecot(
        root / "dovecot", USERS, tls=tls, fast_failures=False, extra_config=extra_config
    )
    dovecot.start()
    daemon = SaslimapDaemon(
        root / "saslimap",
        {
            "imap": {"url": dovecot.imap_url("imaps"), "ca_file": str(tls.ca_cert),
                     "send_client_address": True},
            "dovecot": {"socket": str(root / "saslimap" / "run" / "auth"), "socket_mode": "0666"},
            # saslimap's own delay per address is not what is measured here.
            "iplimits": {"base_delay": 0.0, "max_delay": 0.0},
            "users": {"name_chars": name_chars},
        },
    )  # fmt: skip
    try:
        daemon.start()
    except BaseException:
        dovecot.stop()
        raise
    return Stack(dovecot, daemon)


def stop_stack(stack: Stack) -> None:
    assert 0 == stack.saslimap.stop()
    stack.dovecot.stop()


def _private_dir(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o755)  # Dovecot's unprivileged processes must reach below it
    return path


@pytest.fixture(scope="module")
def gateway(workroot: Path, tls: TlsFiles) -> Iterator[Stack]:
    """Dovecot's defaults plus the shipped gateway snippet (the gateway is 127.0.0.1)."""
    root = _private_dir(workroot / "pen-gw")
    shipped = tomllib.loads(SHIPPED_SASLIMAP.read_text())["users"]["name_chars"]
    stack = start_stack(root, tls, gateway_config(root, "127.0.0.1"), shipped)
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def defaults(workroot: Path, tls: TlsFiles) -> Iterator[Stack]:
    """The control: Dovecot's defaults alone (saslimap still sends ID, which is ignored)."""
    stack = start_stack(_private_dir(workroot / "pen-ctl"), tls, "")
    yield stack
    stop_stack(stack)


def ask_dovecot_listener(stack: Stack, user: str, password: str, rip: str) -> tuple[str, float]:
    """One AUTH PLAIN as Postfix sends it for an SMTP client at ``rip``.

    Returns the reply's first word (``OK``, ``FAIL``, or ``closed`` when saslimap hangs
    up: no verdict from IMAP, Postfix's 454) and the seconds it took.
    """
    resp = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(stack.auth_socket))
        sock.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
        reader = sock.makefile("rb")
        while (line := reader.readline()) and line != b"DONE\n":
            pass
        started = time.monotonic()
        sock.sendall(
            f"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip={rip}\tsecured"
            f"\tresp={resp}\n".encode()
        )
        line = reader.readline()
    word = line.split(b"\t", 1)[0].decode() if line else "closed"
    return word, time.monotonic() - started


def ask_mux(stack: Stack, user: str, password: str) -> tuple[str, float]:
    """One check on the saslauthd socket, which carries no client address (as libsasl sends)."""
    started = time.monotonic()
    try:
        reply = saslauthd_client.query(
            stack.saslimap.socket_path, user.encode(), password.encode(), b"smtp"
        )
    except saslauthd_client.NoReply:
        return "closed", time.monotonic() - started
    return reply.split(b" ", 1)[0].decode(), time.monotonic() - started


def fast(outcome: tuple[str, float]) -> tuple[str, bool]:
    """The reply's word, and whether it came within FAST seconds."""
    word, seconds = outcome
    return word, seconds < FAST


class _ImapFrom(imaplib.IMAP4_SSL):
    """An IMAPS client connecting from a chosen loopback address (not the gateway's)."""

    def __init__(self, source: str, port: int, context: ssl.SSLContext) -> None:
        self.source = source
        self.context = context
        super().__init__("127.0.0.1", port, ssl_context=context, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout, (self.source, 0))
        return self.context.wrap_socket(raw, server_hostname=self.host)


# -- with conf/dovecot/ ------------------------------------------------------------


def test_dovecot_listener_attack_delays_only_the_attacker(gateway: Stack) -> None:
    """Guesses from one client address leave another's uncached check fast (its own penalty)."""
    for user, password in GUESSES:
        assert "OK" != ask_dovecot_listener(gateway, user, password, ATTACKER)[0], user
    assert ("OK", True) == fast(ask_dovecot_listener(gateway, "bob@example.com", "bob pw", CLIENT))
    penalties = gateway.dovecot.penalties()
    assert 0 == penalties.get("127.0.0.1", 0)
    # Names Dovecot would refuse before any passdb (auth_username_chars), which would
    # raise a penalty, are refused by saslimap itself (users.name_chars) unasked.
    assert 0 == penalties.get(ATTACKER, 0)
    # Dovecot believed the ID: its log names the SMTP clients, not the gateway.
    log = gateway.dovecot.log_path.read_text(errors="replace")
    assert f"user=<bob@example.com>, method=PLAIN, rip={CLIENT}," in log
    assert f"rip={ATTACKER}," in log


def test_mux_attack_does_not_delay_other_users(gateway: Stack) -> None:
    """On the mux, made-up names and wrong passwords are refused at once; other users stay fast."""
    for user, password in ASCII_GUESSES:
        word, seconds = ask_mux(gateway, user, password + " mux")
        assert ("NO", True) == (word, seconds < FAST), user
    assert ("OK", True) == fast(ask_mux(gateway, "carol@example.com", "carol pw"))
    assert 0 == gateway.dovecot.penalties().get("127.0.0.1", 0)


def test_other_clients_keep_dovecots_delays(gateway: Stack) -> None:
    """Clients other than the gateway keep Dovecot's failure delay and penalty."""
    port, context = gateway.dovecot.imaps_port or 0, gateway.dovecot.client_context()
    started = time.monotonic()
    with _ImapFrom("127.0.0.2", port, context) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login("dave@example.com", "wrong")
    assert time.monotonic() - started >= FAST
    assert 1 <= gateway.dovecot.penalties()["127.0.0.2"]


# -- the control: Dovecot's defaults alone ------------------------------------------


@pytest.mark.parametrize("listener", ["dovecot", "mux"])
def test_without_the_snippet_one_failure_delays_everyone(defaults: Stack, listener: str) -> None:
    """Control: with Dovecot's defaults one wrong password delays the next user's check."""
    victim = {"dovecot": "erin@example.com", "mux": "dave@example.com"}[listener]
    if listener == "dovecot":
        word, _ = ask_dovecot_listener(defaults, "alice@example.com", "guess", ATTACKER)
        assert "FAIL" == word
        word, seconds = ask_dovecot_listener(defaults, victim, USERS[victim], CLIENT)
    else:
        # (Another password than above: saslimap answers a repeated one from its cache.)
        assert "NO" == ask_mux(defaults, "alice@example.com", "guess mux")[0]
        word, seconds = ask_mux(defaults, victim, USERS[victim])
    assert "OK" == word  # the success resets the gateway's penalty for the next test
    assert seconds >= FAST
    # The gateway's address took the penalty (no 192.0.2.66: its ID was not believed).
    assert {"127.0.0.1": 0} == defaults.dovecot.penalties()


# -- the gap left for saslimap ------------------------------------------------------


def test_mux_names_dovecot_refuses_do_not_delay_other_users(gateway: Stack) -> None:
    """A non-ASCII made-up name on the saslauthd socket leaves other users' checks fast."""
    assert "NO" == ask_mux(gateway, "jürgen@example.com", "guess mux")[0]
    assert ("OK", True) == fast(ask_mux(gateway, "erin@example.com", "erin pw"))
