"""Real Postfix with smtpd_sasl_type = dovecot asking saslimap's second listener."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.postfix import Postfix
from devstack.tls import TlsFiles
from tests.integration.conftest import USERS, eventually

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    """Dovecot -> saslimap (Dovecot-protocol socket) -> Postfix."""

    dovecot: Dovecot
    saslimap: SaslimapDaemon
    postfix: Postfix


@pytest.fixture(scope="module")
def stack(workroot: Path, tls: TlsFiles) -> Iterator[Stack]:
    """A private stack (one test stops its Dovecot)."""
    root = workroot / "dv"
    dovecot = Dovecot(root / "dovecot", USERS, tls=tls)
    dovecot.start()
    auth_socket = root / "saslimap" / "run" / "auth"
    sasl = SaslimapDaemon(
        root / "saslimap",
        {
            "imap": {"url": dovecot.imap_url("imaps"), "ca_file": str(tls.ca_cert)},
            "dovecot": {"socket": str(auth_socket), "socket_mode": "0666"},
            "iplimits": {"budget": 3, "base_delay": 0.05, "max_delay": 0.2,
                         "exempt_after_success": 0.0},
        },
    )  # fmt: skip
    sasl.start()
    postfix = Postfix(root / "postfix", sasl_dovecot_path=auth_socket)
    postfix.start()
    yield Stack(dovecot, sasl, postfix)
    postfix.stop()
    assert 0 == sasl.stop()
    dovecot.stop()


def connect(stack: Stack, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP(
        "127.0.0.1", stack.postfix.smtpd_port, timeout=30, source_address=(source, 0)
    )
    smtp.ehlo("client.test")
    return smtp


def auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return smtp.docmd("AUTH", "PLAIN " + token)


def test_auth_plain_and_relay(stack: Stack) -> None:
    """AUTH PLAIN with the right password: 235, and the relayed message is accepted."""
    with connect(stack) as smtp:
        assert 235 == auth_plain(smtp, "alice@example.com", "alice pw")[0]
        smtp.mail("alice@example.com")
        assert 250 == smtp.rcpt("someone@remote.test")[0]
    eventually(stack.postfix.maillog_text, "sasl_username=alice@example.com")


def test_auth_login_two_steps(stack: Stack) -> None:
    """AUTH LOGIN's Username:/Password: steps go through CONT."""
    with connect(stack) as smtp:
        assert 334 == smtp.docmd("AUTH", "LOGIN")[0]
        assert 334 == smtp.docmd(base64.b64encode(b"bob@example.com").decode())[0]
        assert 235 == smtp.docmd(base64.b64encode(b"bob-secret").decode())[0]


def test_wrong_password_is_535(stack: Stack) -> None:
    """A wrong password is an ordinary authentication failure."""
    with connect(stack) as smtp:
        assert 535 == auth_plain(smtp, "alice@example.com", "nope")[0]


def test_per_ip_limits_hold_while_another_address_authenticates(stack: Stack) -> None:
    """After its budget of wrong passwords 127.0.0.2 is told "try later" (454, never a wrong
    password) even for the right password, while 127.0.0.1 keeps authenticating."""
    for n in range(3):
        with connect(stack, "127.0.0.2") as smtp:
            assert 535 == auth_plain(smtp, "quotes@example.com", f"guess {n}")[0]
    with connect(stack, "127.0.0.2") as smtp:
        assert 454 == auth_plain(smtp, "quotes@example.com", USERS["quotes@example.com"])[0]
    with connect(stack, "127.0.0.1") as smtp:
        assert 235 == auth_plain(smtp, "quotes@example.com", USERS["quotes@example.com"])[0]
    eventually(stack.saslimap.log_text, "rip=127.0.0.2 result=ratelimited")


def test_imap_outage_is_454(stack: Stack) -> None:
    """With Dovecot stopped, the listener answers FAIL temp and Postfix says 454."""
    stack.dovecot.stop()
    with connect(stack) as smtp:
        code, text = auth_plain(smtp, "percent@example.com", USERS["percent@example.com"])
    assert 454 == code, text
