"""The core IMAP wrapper against scripted servers: timeouts, refusals, STARTTLS, secrecy."""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from mailgate.config import parse_imap_url
from mailgate.imap import (
    BackendUnavailable,
    ImapSettings,
    LoginResult,
    _quoted_or_literal,
    check_login,
)
from tests.fakes import ScriptedImap

CAPS = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+] ready\r\n"
SECRET = 'Sup3r "secret" \\ {3} ünï'


def answering(
    auth_reply: bytes, caps: bytes = b"IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+"
) -> Callable[[bytes], bytes]:
    """A script that answers CAPABILITY properly and everything else with ``auth_reply``."""

    def answer(line: bytes) -> bytes:
        if line.upper().endswith(b" CAPABILITY"):
            return b"* CAPABILITY " + caps + b"\r\n{tag} OK done\r\n"
        return auth_reply

    return answer


def settings(port: int, scheme: str = "imap+plaintext", timeout: float = 0.5) -> ImapSettings:
    target = parse_imap_url(f"{scheme}://127.0.0.1:{port}")
    return ImapSettings(target, None, timeout, timeout)


@pytest.fixture
def scripted() -> Iterator[list[ScriptedImap]]:
    """Collects scripted servers and closes them after the test."""
    servers: list[ScriptedImap] = []
    yield servers
    for s in servers:
        s.close()


def test_quoted_string_escapes_quotes_and_backslashes() -> None:
    """ASCII values become quoted strings with RFC 3501 escapes."""
    assert b'"a\\"b\\\\c {3}"' == _quoted_or_literal('a"b\\c {3}')


def test_non_ascii_goes_as_raw_bytes_for_a_literal() -> None:
    """8-bit values are left unquoted for imapclient to send as a literal."""
    assert "ünï".encode() == _quoted_or_literal("ünï")


def test_server_that_never_greets_times_out(scripted: list[ScriptedImap]) -> None:
    """A server that accepts and stays silent gives 'timeout' within the deadline."""
    srv = ScriptedImap(greeting=None)
    scripted.append(srv)
    begin = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        check_login(settings(srv.port), "alice", "pw")
    assert "timeout" == info.value.kind
    assert time.monotonic() - begin < 2.0


def test_refused_connection_is_connect_error() -> None:
    """Nothing listening gives 'connect'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailable) as info:
        check_login(settings(port), "alice", "pw")
    assert "connect" == info.value.kind


def test_preauth_greeting_is_never_success(scripted: list[ScriptedImap]) -> None:
    """A server that logs us in without a password proves nothing."""
    srv = ScriptedImap(b"* PREAUTH [CAPABILITY IMAP4rev1] welcome\r\n", answering(b""))
    scripted.append(srv)
    with pytest.raises(BackendUnavailable) as info:
        check_login(settings(srv.port), "alice", "pw")
    assert "protocol" == info.value.kind


def test_missing_starttls_sends_no_credentials(scripted: list[ScriptedImap]) -> None:
    """imap:// requires STARTTLS; without it nothing secret goes on the wire."""
    srv = ScriptedImap(
        b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n", answering(b"", b"IMAP4rev1 AUTH=PLAIN")
    )
    scripted.append(srv)
    with pytest.raises(BackendUnavailable) as info:
        check_login(settings(srv.port, scheme="imap"), "alice", "pw")
    assert "starttls" == info.value.kind
    assert all(b"AUTHENTICATE" not in line and b"LOGIN " not in line for line in srv.received)


def test_tagged_no_is_rejection(scripted: list[ScriptedImap]) -> None:
    """NO [AUTHENTICATIONFAILED] means wrong credentials."""
    srv = ScriptedImap(
        CAPS, answering(b"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    )
    scripted.append(srv)
    assert LoginResult.REJECTED == check_login(settings(srv.port), "alice", "pw")


def test_no_unavailable_is_an_outage(scripted: list[ScriptedImap]) -> None:
    """NO [UNAVAILABLE] (RFC 5530) is the server's trouble, not a wrong password."""
    srv = ScriptedImap(CAPS, answering(b"{tag} NO [UNAVAILABLE] Temporary failure\r\n"))
    scripted.append(srv)
    with pytest.raises(BackendUnavailable):
        check_login(settings(srv.port), "alice", "pw")


@pytest.mark.parametrize(
    "reply",
    [b"{tag} BAD what?\r\n", b"* BYE going away\r\n", b"garbage without tag\r\n"],
)
def test_unexpected_replies_are_outages(scripted: list[ScriptedImap], reply: bytes) -> None:
    """BAD, BYE or nonsense never count as a verdict."""
    srv = ScriptedImap(CAPS, answering(reply))
    scripted.append(srv)
    with pytest.raises(BackendUnavailable):
        check_login(settings(srv.port), "alice", "pw")


def test_sasl_ir_sends_one_line(scripted: list[ScriptedImap]) -> None:
    """With SASL-IR the whole AUTHENTICATE PLAIN fits in one command line."""
    srv = ScriptedImap(CAPS, answering(b"{tag} OK Logged in\r\n"))
    scripted.append(srv)
    assert LoginResult.ACCEPTED == check_login(settings(srv.port), "alice", SECRET)
    auth = [line for line in srv.received if b" AUTHENTICATE " in line]
    assert 1 == len(auth)
    assert [b"AUTHENTICATE", b"PLAIN"] == auth[0].split(b" ")[1:3]
    assert 4 == len(auth[0].split(b" "))


def test_password_never_logged_even_at_debug(
    scripted: list[ScriptedImap], caplog: pytest.LogCaptureFixture
) -> None:
    """With every logger at DEBUG, neither the password nor its base64 reaches a log."""
    import base64

    srv = ScriptedImap(CAPS, answering(b"{tag} NO nope\r\n"))
    scripted.append(srv)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("imapclient").setLevel(logging.DEBUG)
        try:
            check_login(settings(srv.port), "alice", SECRET)
            s2 = settings(srv.port)
            check_login(ImapSettings(s2.target, None, 0.5, 0.5, "login"), "alice", SECRET)
        finally:
            logging.getLogger("imapclient").setLevel(logging.WARNING)
    token = base64.b64encode(b"\0alice\0" + SECRET.encode()).decode()
    assert SECRET not in caplog.text
    assert token not in caplog.text
    assert "secret" not in caplog.text.lower()


def test_client_address_is_forwarded_with_id(scripted: list[ScriptedImap]) -> None:
    """With send_client_address, an ID command with x-originating-ip precedes the login."""
    caps = b"IMAP4rev1 SASL-IR AUTH=PLAIN ID"
    srv = ScriptedImap(CAPS, answering(b"{tag} OK done\r\n", caps))
    scripted.append(srv)
    s = settings(srv.port)
    forwarding = ImapSettings(s.target, None, 0.5, 0.5, "auto", send_client_address=True)
    assert LoginResult.ACCEPTED == check_login(forwarding, "alice", "pw", "192.0.2.7")
    ids = [line for line in srv.received if b" ID " in line]
    assert [b'("x-originating-ip" "192.0.2.7")'] == [line.split(b" ", 2)[2] for line in ids]


def test_no_id_without_the_option_or_with_garbage(scripted: list[ScriptedImap]) -> None:
    """The address is not sent unless asked, and never when it is not an address."""
    caps = b"IMAP4rev1 SASL-IR AUTH=PLAIN ID"
    srv = ScriptedImap(CAPS, answering(b"{tag} OK done\r\n", caps))
    scripted.append(srv)
    s = settings(srv.port)
    check_login(s, "alice", "pw", "192.0.2.7")
    forwarding = ImapSettings(s.target, None, 0.5, 0.5, "auto", send_client_address=True)
    check_login(forwarding, "alice", "pw", '1.2.3.4" "x')
    assert not [line for line in srv.received if b" ID " in line]


def test_plain_without_sasl_ir_answers_the_continuation(scripted: list[ScriptedImap]) -> None:
    """Without SASL-IR the token goes after the server's "+", and the login succeeds."""
    tags: list[bytes] = []

    def answer(line: bytes) -> bytes | None:
        if line.upper().endswith(b" CAPABILITY"):
            return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n"
        if b" AUTHENTICATE PLAIN" in line:
            tags.append(line.split(b" ", 1)[0])
            return b"+ \r\n"
        if tags and line == base64.b64encode(b"\0alice\0" + SECRET.encode()):
            return tags[-1] + b" OK Logged in\r\n"
        return None

    srv = ScriptedImap(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n", answer)
    scripted.append(srv)
    assert LoginResult.ACCEPTED == check_login(settings(srv.port), "alice", SECRET)


def test_server_echoing_the_login_never_puts_it_in_an_error(
    scripted: list[ScriptedImap], caplog: pytest.LogCaptureFixture
) -> None:
    """A BAD that echoes AUTHENTICATE or LOGIN leaves neither token nor password in the error."""
    password = 'pa"ss\\word'
    token = base64.b64encode(b"\0alice\0" + password.encode()).decode()
    for caps in (b"IMAP4rev1 SASL-IR AUTH=PLAIN", b"IMAP4rev1 LITERAL+"):  # AUTHENTICATE, LOGIN

        def echoing(line: bytes, caps: bytes = caps) -> bytes:
            if line.upper().endswith(b" CAPABILITY"):
                return b"* CAPABILITY " + caps + b"\r\n{tag} OK done\r\n"
            return b"{tag} BAD Invalid request: " + line + b"\r\n"

        srv = ScriptedImap(b"* OK ready\r\n", echoing)
        scripted.append(srv)
        with caplog.at_level(logging.DEBUG), pytest.raises(BackendUnavailable) as caught:
            check_login(settings(srv.port), "alice", password)
        assert "during login" in str(caught.value)
        for secret in (token, password, 'pa\\"ss\\\\word'):
            assert secret not in str(caught.value)
            assert secret not in caplog.text
