"""Secrets against an IMAP server that echoes the login exchange back in its replies.

Some servers quote the command they refuse (``BAD Invalid request: <line>``), in a
tagged or untagged reply, a ``BYE`` or a new ``+`` challenge.  During a login that
line holds the AUTHENTICATE PLAIN token or LOGIN's quoted (or literal) password,
so no log record and no exception we raise may carry any form of it.
"""

from __future__ import annotations

import base64
import logging
import traceback
from collections.abc import Iterator

import pytest

from mailgate.config import parse_imap_url
from mailgate.imap import (
    BackendUnavailable,
    ImapSettings,
    LoginResult,
    check_login,
    open_session,
)
from tests.fakes import ScriptedImap

USER = "alice@example.com"
ASCII_SECRET = 'Pa"ss\\w0rd {3} %s'
UTF8_SECRET = 'pässwörd "q" \\ {5+} 密'

# How credentials reach the server: the capabilities that make the client choose it,
# and a password that takes that path (8-bit values go to LOGIN as literals).
MODES = {
    "sasl-ir": (b"IMAP4rev1 SASL-IR AUTH=PLAIN ID", ASCII_SECRET),
    "plain-continuation": (b"IMAP4rev1 AUTH=PLAIN ID", UTF8_SECRET),
    "login-quoted": (b"IMAP4rev1 ID", ASCII_SECRET),
    "login-literal": (b"IMAP4rev1 ID", UTF8_SECRET),
    "login-literal-plus": (b"IMAP4rev1 LITERAL+ ID", UTF8_SECRET),
}
# How the server answers the login, quoting what it received: (reply, verdict or None
# when the client must report the server unavailable).
REPLIES = {
    "tagged-bad": (b"{tag} BAD Invalid request: {echo}\r\n", None),
    "tagged-no": (b"{tag} NO Login refused for: {echo}\r\n", LoginResult.REJECTED),
    "no-unavailable": (b"{tag} NO [UNAVAILABLE] busy with {echo}\r\n", None),
    "untagged-then-no": (
        b"* BAD echo {echo}\r\n* NO {echo}\r\n{tag} NO [AUTHENTICATIONFAILED] x\r\n",
        LoginResult.REJECTED,
    ),
    "bye": (b"* BYE I do not like {echo}\r\n", None),
    "challenge": (b"+ {echo}\r\n", None),  # a new challenge; the client cancels with "*"
}


class EchoingServer:
    """An IMAP script that answers the login with ``reply``, quoting every line of it.

    Lines of one command are collected until it is complete (after a literal, or the
    continuation of AUTHENTICATE), as a careless server would log or echo them.  The
    ``challenge`` reply is followed, once the client cancels, by a BAD quoting it all.
    """

    def __init__(self, caps: bytes, reply: bytes) -> None:
        self.caps = caps
        self.reply = reply
        self.tag = b""
        self.lines: list[bytes] = []
        self.literal_pending = False
        self.challenged = False

    def __call__(self, line: bytes) -> bytes | None:
        if not self.tag:
            tag, _, rest = line.partition(b" ")
            command = rest.upper()
            if command == b"CAPABILITY":
                return b"* CAPABILITY " + self.caps + b"\r\n" + tag + b" OK done\r\n"
            if command.startswith(b"ID ") or command == b"LOGOUT":
                return tag + b" BAD no " + rest + b"\r\n"  # echoed too, before any secret
            self.tag, self.lines = tag, []
        self.lines.append(line)
        if line.endswith(b"+}"):
            return None  # LITERAL+: the data follows without a continuation
        if line.endswith(b"}") and not self.literal_pending:
            self.literal_pending = True
            return b"+ go ahead\r\n"
        self.literal_pending = False
        if line.upper().endswith(b" AUTHENTICATE PLAIN"):
            return b"+ \r\n"
        echo = b" ".join(self.lines)
        if self.reply.startswith(b"+") and not self.challenged:
            self.challenged = True
            return self.reply.replace(b"{echo}", echo)
        reply = b"{tag} BAD cancelled: {echo}\r\n" if self.challenged else self.reply
        self.tag = b""
        return reply.replace(b"{tag}", self.lines[0].split(b" ", 1)[0]).replace(b"{echo}", echo)


def secret_forms(user: str, password: str) -> set[str]:
    """Every spelling of the password a log line or error text could carry."""
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
    forms = {password, quoted, token}
    # Server text reaches exceptions as bytes reprs (\\ doubled, 8-bit bytes as \xNN)
    # or decoded as ASCII with 8-bit bytes replaced or dropped.
    for form in (password, quoted):
        raw = form.encode()
        forms |= {repr(raw)[2:-1], repr(form)[1:-1], raw.decode("latin-1")}
        forms |= {raw.decode("ascii", "replace"), raw.decode("ascii", "ignore")}
    return {f for f in forms if len(f) >= 6}


def leaks(text: str, forms: set[str]) -> list[str]:
    """The forms of the secret found in ``text``."""
    return sorted(f for f in forms if f in text)


def error_texts(err: BaseException) -> str:
    """What could reach a log or a reply: str, repr and the printed traceback."""
    return "\n".join([str(err), repr(err), *traceback.format_exception(err)])


def log_texts(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record, formatted, with its exception if one was attached."""
    out = [caplog.text]
    for record in caplog.records:
        out.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            out.append(error_texts(record.exc_info[1]))
    return "\n".join(out)


@pytest.fixture
def debug_everywhere(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, imapclient's own included (an administrator's worst case)."""
    imapclient_logger = logging.getLogger("imapclient")
    before = imapclient_logger.level
    with caplog.at_level(logging.DEBUG):
        imapclient_logger.setLevel(logging.DEBUG)
        try:
            yield caplog
        finally:
            imapclient_logger.setLevel(before)


def settings(port: int, *, forward: bool = False) -> ImapSettings:
    target = parse_imap_url(f"imap+plaintext://127.0.0.1:{port}")
    return ImapSettings(target, None, 0.5, 0.5, "auto", send_client_address=forward)


def cases() -> Iterator[tuple[str, str]]:
    for mode in MODES:
        for reply in REPLIES:
            if reply == "challenge" and mode != "plain-continuation":
                continue  # only AUTHENTICATE without SASL-IR has a continuation to answer
            yield mode, reply


@pytest.mark.parametrize(("mode", "reply"), list(cases()))
def test_echoed_login_never_reaches_logs_or_errors(
    debug_everywhere: pytest.LogCaptureFixture, mode: str, reply: str
) -> None:
    """Whatever the server quotes back, the verdict stands and no form of the secret is told."""
    caps, password = MODES[mode]
    template, verdict = REPLIES[reply]
    srv = ScriptedImap(b"* OK ready\r\n", EchoingServer(caps, template))
    try:
        outcome: LoginResult | BackendUnavailable
        try:
            outcome = check_login(settings(srv.port, forward=True), USER, password, "192.0.2.7")
        except BackendUnavailable as err:
            outcome = err
    finally:
        srv.close()
    forms = secret_forms(USER, password)
    sent = b"\n".join(srv.received).decode("utf-8", "replace")
    assert leaks(sent, forms), "the fake must have received the secret to echo it"
    if verdict is None:
        assert isinstance(outcome, BackendUnavailable), outcome
        assert [] == leaks(error_texts(outcome), forms)
    else:
        assert verdict == outcome
    assert [] == leaks(log_texts(debug_everywhere), forms)


@pytest.mark.parametrize("mode", list(MODES))
def test_mailbox_login_refused_with_echo_tells_no_secret(
    debug_everywhere: pytest.LogCaptureFixture, mode: str
) -> None:
    """A kept session (mail-filter learn) refused with an echo raises an error without it."""
    caps, password = MODES[mode]
    srv = ScriptedImap(b"* OK ready\r\n", EchoingServer(caps, REPLIES["tagged-no"][0]))
    try:
        s = settings(srv.port)
        session = open_session(s)
        try:
            with pytest.raises(BackendUnavailable) as caught:
                session.login(USER, password)
        finally:
            session.close()
    finally:
        srv.close()
    forms = secret_forms(USER, password)
    assert "auth" == caught.value.kind
    assert [] == leaks(error_texts(caught.value), forms)
    assert [] == leaks(log_texts(debug_everywhere), forms)
