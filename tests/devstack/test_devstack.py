"""The devstack launchers against the real Debian daemons: Dovecot, Postfix, saslauthd.

Each daemon is started once per module (they start in well under a second)
and the tests talk to them exactly as the gateway will: imaplib over IMAPS
and STARTTLS, smtplib for SMTP AUTH, the saslauthd socket protocol.
"""

from __future__ import annotations

import base64
import imaplib
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.dovecot import Dovecot, ssha512
from devstack.ports import free_port, wait_for_greeting
from devstack.postfix import Postfix
from devstack.saslauthd import RimapSaslauthd, saslauthd_check
from devstack.tls import TlsFiles, make_tls

_DAEMONS = ("dovecot", "doveadm", "postfix", "saslauthd", "testsaslauthd", "openssl")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or any(shutil.which(d) is None for d in _DAEMONS),
        reason="needs root and Debian's dovecot-imapd, postfix, sasl2-bin, openssl",
    ),
]

HARD = 'p@ss "q" \\ %s {3} ünï'
LONG = ('ab "c" \\ %d {9} ü ' * 20)[:200]
USERS = {
    "alice@example.com": "alice pw",
    "hard@example.com": HARD,
    "long@example.com": LONG,
    "carol@example.com": "carol-1",
}

# Dovecot's reply to every failed login, whatever the reason.
AUTH_FAILED = "[AUTHENTICATIONFAILED] Authentication failed."


def plain(user: str, password: str) -> Callable[[bytes], bytes]:
    """An imaplib authobject for AUTHENTICATE PLAIN (RFC 4616): no IMAP quoting involved."""
    return lambda _challenge: b"\0" + user.encode() + b"\0" + password.encode()


def imaps_login(dovecot: Dovecot, user: str, password: str) -> imaplib.IMAP4_SSL:
    """Log in over implicit TLS, verifying the server against the devstack CA."""
    assert dovecot.imaps_port is not None
    client = imaplib.IMAP4_SSL(
        dovecot.host, dovecot.imaps_port, ssl_context=dovecot.client_context(), timeout=10
    )
    try:
        client.authenticate("PLAIN", plain(user, password))
    except BaseException:
        client.shutdown()
        raise
    return client


def login_result(dovecot: Dovecot, user: str, password: str) -> str:
    """ "OK", or the error text of a refused IMAPS login."""
    try:
        imaps_login(dovecot, user, password).logout()
    except imaplib.IMAP4.error as err:
        return str(err)
    return "OK"


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; log files are written asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(root: Path) -> TlsFiles:
    """The devstack CA and server certificate."""
    return make_tls(root / "tls")


@pytest.fixture(scope="module")
def dovecot(root: Path, tls: TlsFiles) -> Iterator[Dovecot]:
    """A Dovecot with TLS and fast failures, shared by the module."""
    with Dovecot(root / "dv", USERS, tls=tls) as server:
        yield server


@pytest.fixture(scope="module")
def saslauthd(root: Path, dovecot: Dovecot) -> Iterator[RimapSaslauthd]:
    """Debian's saslauthd -a rimap against the module's Dovecot."""
    with RimapSaslauthd(root / "sa", dovecot.host, dovecot.imap_port) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def postfix_nothing_listening(root: Path) -> Iterator[Postfix]:
    """Postfix whose saslauthd socket path has no server behind it."""
    with Postfix(root / "pf0", sasl_saslauthd_path=root / "none" / "mux") as mta:
        yield mta


@pytest.fixture(scope="module")
def postfix_rimap(root: Path, saslauthd: RimapSaslauthd) -> Iterator[Postfix]:
    """Postfix authenticating through the rimap saslauthd, i.e. the setup we replace."""
    with Postfix(root / "pf1", sasl_saslauthd_path=saslauthd.mux_path) as mta:
        yield mta


# -- TLS material -------------------------------------------------------------


def test_make_tls_reuses_existing_files(tls: TlsFiles) -> None:
    """A second make_tls call returns the same files without regenerating them."""
    before = tls.cert.read_bytes(), tls.key.read_bytes(), tls.ca_cert.read_bytes()
    again = make_tls(tls.cert.parent)
    assert tls == again
    assert before == (again.cert.read_bytes(), again.key.read_bytes(), again.ca_cert.read_bytes())


def test_ssha512_hash_is_accepted_by_doveadm(dovecot: Dovecot) -> None:
    """Dovecot's own `doveadm pw -t` verifies the hash computed in Python."""
    result = subprocess.run(
        ["doveadm", "-c", str(dovecot.config_path), "pw", "-t", ssha512(HARD), "-p", HARD],
        capture_output=True,
        check=False,
    )
    assert b"(verified)" in result.stdout + result.stderr


# -- Dovecot ----------------------------------------------------------------------


def test_dovecot_greets_on_both_ports_with_verified_tls(dovecot: Dovecot) -> None:
    """Plain and implicit-TLS ports greet; the IMAPS certificate verifies against ca_file."""
    assert dovecot.ca_file is not None
    assert dovecot.imaps_port is not None
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    wait_for_greeting(dovecot.host, dovecot.imap_port, b"* OK", 2.0)
    wait_for_greeting(dovecot.host, dovecot.imaps_port, b"* OK", 2.0, context)
    assert f"imaps://127.0.0.1:{dovecot.imaps_port}" == dovecot.imap_url("imaps")
    assert f"imap://127.0.0.1:{dovecot.imap_port}" == dovecot.imap_url("imap")
    assert f"imap+plaintext://127.0.0.1:{dovecot.imap_port}" == dovecot.imap_url("imap+plaintext")


def test_imaps_certificate_is_not_trusted_without_the_ca(dovecot: Dovecot) -> None:
    """Verification is real: the system trust store rejects the devstack certificate."""
    assert dovecot.imaps_port is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        wait_for_greeting(
            dovecot.host, dovecot.imaps_port, b"* OK", 2.0, ssl.create_default_context()
        )


def test_starttls_is_offered_and_verifies(dovecot: Dovecot) -> None:
    """The plain port offers STARTTLS and upgrades with a verified certificate."""
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    assert "STARTTLS" in client.capabilities
    client.starttls(ssl_context=dovecot.client_context())
    client.authenticate("PLAIN", plain("alice@example.com", "alice pw"))
    client.logout()


@pytest.mark.parametrize("user", ["hard@example.com", "long@example.com"])
def test_hard_passwords_log_in_over_imaps(dovecot: Dovecot, user: str) -> None:
    """Quotes, backslashes, %, {3}, non-ASCII and 200 characters survive AUTHENTICATE PLAIN."""
    client = imaps_login(dovecot, user, USERS[user])
    assert "AUTH" == client.state
    client.logout()


def test_plaintext_login_allowed_on_loopback(dovecot: Dovecot) -> None:
    """With disable_plaintext_auth at its default, LOGIN works in clear on 127.0.0.1."""
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    assert "LOGINDISABLED" not in client.capabilities
    client.login("alice@example.com", "alice pw")
    client.logout()


def test_wrong_passwords_fail_fast_without_penalty(dovecot: Dovecot) -> None:
    """Failures answer at once and do not delay the next login from the same IP."""
    began = time.monotonic()
    assert AUTH_FAILED == login_result(dovecot, "alice@example.com", "wrong 1")
    assert AUTH_FAILED == login_result(dovecot, "alice@example.com", "wrong 2")
    assert AUTH_FAILED == login_result(dovecot, "nobody@example.com", "unknown user")
    imaps_login(dovecot, "alice@example.com", "alice pw").logout()
    # Dovecot's defaults would take >= 0.5 s per failure, then 4 s, 8 s penalties.
    assert time.monotonic() - began < 1.0


def test_set_password_takes_effect_without_restart(dovecot: Dovecot) -> None:
    """A changed password and a new user work as soon as set_password returns."""
    imaps_login(dovecot, "carol@example.com", "carol-1").logout()
    began = time.monotonic()
    dovecot.set_password("carol@example.com", "carol-2")
    assert time.monotonic() - began < 1.1
    imaps_login(dovecot, "carol@example.com", "carol-2").logout()
    dovecot.set_passwords({"carol@example.com": "carol-3", "dave@example.com": HARD})
    assert AUTH_FAILED == login_result(dovecot, "carol@example.com", "carol-2")
    imaps_login(dovecot, "carol@example.com", "carol-3").logout()
    imaps_login(dovecot, "dave@example.com", HARD).logout()


def test_auth_attempts_counts_successes_and_failures(dovecot: Dovecot) -> None:
    """One success and one failure add exactly two attempts."""
    assert wait_until(lambda: dovecot.auth_attempts() > 0)
    time.sleep(0.05)  # let earlier tests' lines reach the log
    before = dovecot.auth_attempts()
    imaps_login(dovecot, "alice@example.com", "alice pw").logout()
    assert AUTH_FAILED == login_result(dovecot, "alice@example.com", "nope")
    assert wait_until(lambda: dovecot.auth_attempts() >= before + 2)
    time.sleep(0.05)
    assert before + 2 == dovecot.auth_attempts()


def test_append_message_creates_folder(dovecot: Dovecot) -> None:
    """append_message creates a missing folder, and IMAP sees the stored messages."""
    message = b"From: a@example.org\r\nSubject: learn me\r\n\r\nbody\r\n"
    dovecot.append_message("alice@example.com", "learn-spam", message)
    dovecot.append_message("alice@example.com", "learn-spam", message)
    client = imaps_login(dovecot, "alice@example.com", "alice pw")
    status, data = client.select("learn-spam", readonly=True)
    client.logout()
    assert ("OK", [b"2"]) == (status, data)


def test_fast_failures_off_keeps_dovecot_defaults(root: Path) -> None:
    """fast_failures=False writes neither the zero delay nor the nodelay passdb."""
    config = Dovecot(root / "defaults", USERS, fast_failures=False).config_text()
    assert "auth_failure_delay" not in config
    assert "nodelay" not in config
    assert 1 == config.count("passdb {")


def test_dovecot_without_tls_stops_twice(root: Path) -> None:
    """Without TLS only the plain port exists; stop() ends the master and is idempotent."""
    server = Dovecot(root / "dv-plain", {"bob@example.com": "bob"})
    server.start()
    assert server.imaps_port is None
    assert server.ca_file is None
    with pytest.raises(ValueError, match="imaps"):
        server.imap_url("imaps")
    assert server.pid is not None
    server.stop()
    server.stop()
    assert server.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.imap_port), timeout=2).close()


# -- saslauthd (reference implementation) ---------------------------------------------


def test_testsaslauthd_ok_through_rimap(saslauthd: RimapSaslauthd) -> None:
    """Debian's testsaslauthd gets OK from saslauthd -a rimap checking against Dovecot."""
    result = subprocess.run(
        [
            *("testsaslauthd", "-f", str(saslauthd.mux_path)),
            *("-u", "alice@example.com", "-p", "alice pw", "-s", "smtp"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert '0: OK "Success."' == result.stdout.strip()


def test_saslauthd_protocol_client(saslauthd: RimapSaslauthd) -> None:
    """saslauthd_check speaks the mux protocol: OK for the hard password, NO for a wrong one."""
    assert saslauthd_check(saslauthd.mux_path, "hard@example.com", HARD).startswith("OK")
    assert saslauthd_check(saslauthd.mux_path, "hard@example.com", "x").startswith("NO")


# -- Postfix -----------------------------------------------------------------------


def test_postfix_auth_without_saslauthd_is_454(postfix_nothing_listening: Postfix) -> None:
    """With no saslauthd behind the socket path, AUTH PLAIN is a temporary failure."""
    with smtplib.SMTP(postfix_nothing_listening.host, postfix_nothing_listening.smtpd_port) as s:
        s.ehlo()
        # mech_list from sasl/smtpd.conf is honoured: proof the file is read.
        assert "PLAIN LOGIN" == s.esmtp_features["auth"].strip()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            s.auth("PLAIN", lambda challenge=None: "\0alice@example.com\0alice pw")
    assert 454 == failure.value.smtp_code
    error = failure.value.smtp_error
    text = error.decode() if isinstance(error, bytes) else error
    assert text.startswith("4.7.0 Temporary authentication failure")
    assert wait_until(
        lambda: "cannot connect to saslauthd server" in postfix_nothing_listening.maillog_text()
    )


def test_postfix_refuses_unauthenticated_relay(postfix_nothing_listening: Postfix) -> None:
    """127.0.0.1 is not in mynetworks: relaying without AUTH is refused."""
    mta = postfix_nothing_listening
    with (
        smtplib.SMTP(mta.host, mta.smtpd_port) as s,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        s.sendmail("a@example.org", ["x@remote.test"], b"Subject: x\r\n\r\nx\r\n")
    assert 554 == refused.value.recipients["x@remote.test"][0]


def test_postfix_auth_through_rimap(postfix_rimap: Postfix) -> None:
    """The full reference chain: 235 for the right password, 535 for a wrong one, mail discarded."""
    with smtplib.SMTP(postfix_rimap.host, postfix_rimap.smtpd_port) as s:
        s.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            s.auth("PLAIN", lambda challenge=None: "\0alice@example.com\0wrong")
        assert 535 == failure.value.smtp_code
        assert 235 == s.auth("PLAIN", lambda challenge=None: "\0alice@example.com\0alice pw")[0]
        assert {} == s.sendmail("alice@example.com", ["x@remote.test"], b"Subject: x\r\n\r\nx\r\n")
    assert wait_until(lambda: "relay=none" in postfix_rimap.maillog_text())
    assert "sasl_username=alice@example.com" in postfix_rimap.maillog_text()


def test_postfix_reload_applies_main_cf(postfix_rimap: Postfix) -> None:
    """update_main_cf + reload changes what new connections see, without a restart."""
    pid = postfix_rimap.pid
    postfix_rimap.update_main_cf({"smtpd_banner": "$myhostname ESMTP reloaded"})
    postfix_rimap.reload()
    with smtplib.SMTP() as s:
        code, banner = s.connect(postfix_rimap.host, postfix_rimap.smtpd_port)
    assert (220, b"gateway.test ESMTP reloaded") == (code, banner)
    assert pid == postfix_rimap.pid


def test_postfix_binds_only_its_own_port(root: Path) -> None:
    """master.cf has no stock 'smtp inet' line, and stop() is idempotent."""
    port = free_port()
    mta = Postfix(root / "pf2", smtpd_port=port)
    mta.start()
    try:
        services = (mta.config_dir / "master.cf").read_text()
        inet = [line.split()[0] for line in services.splitlines() if " inet " in line]
        assert [f"127.0.0.1:{port}"] == inet
    finally:
        mta.stop()
        mta.stop()
    assert mta.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((mta.host, port), timeout=2).close()


def test_postfix_auth_through_dovecot_sasl(root: Path) -> None:
    """sasl_dovecot_path wires smtpd to a Dovecot auth listener added with extra_config."""
    socket_path = root / "dv-sasl" / "auth-postfix"
    listener = f"""
service auth {{
  unix_listener {socket_path} {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
"""
    with (
        Dovecot(root / "dv-sasl", {"erin@example.com": HARD}, extra_config=listener),
        Postfix(root / "pf3", sasl_dovecot_path=socket_path) as mta,
        smtplib.SMTP(mta.host, mta.smtpd_port) as s,
    ):
        s.ehlo()
        # smtplib.auth() encodes as ASCII; send the UTF-8 PLAIN response directly.
        response = base64.b64encode(f"\0erin@example.com\0{HARD}".encode()).decode()
        assert 235 == s.docmd("AUTH", f"PLAIN {response}")[0]
