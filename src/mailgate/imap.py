"""The one imapclient wrapper: connect, secure, log in, and (for learning) read folders.

imapclient (and the standard library's imaplib beneath it) is blocking and
untyped, so it is wrapped here once, behind typed, blocking calls meant for a
worker thread: :func:`open_session` (connect, check the greeting, STARTTLS),
:func:`check_login` (one password check) and :meth:`Session.login` (a session
kept for mailbox work, :mod:`mailgate.mailbox`).  Callers see only
:class:`LoginResult` and :class:`BackendUnavailable`, never a library
exception: every one is replaced by ours, its text scrubbed of the password.

Why not ``IMAPClient.login()``: it calls imaplib's ``login``, which puts the user
name on the wire unquoted and quotes the password with only ``\\`` and ``"``
escaped.  Instead we send ``AUTHENTICATE PLAIN`` (RFC 4616: base64, no quoting,
UTF-8 safe), in one round trip when the server offers SASL-IR (RFC 4959), and
fall back to ``LOGIN`` with properly quoted strings, or literals for 8-bit values
(RFC 3501 section 4.3, RFC 9051 section 4.3).

Secrets: imapclient turns on imaplib's protocol trace and logs sent commands at
DEBUG level, which would include the password.  The trace is switched off on
every connection and imapclient's loggers are capped at WARNING.  A server may
also quote the command it refuses (the AUTHENTICATE token, LOGIN's quoted or
literal password) in a BAD, NO, BYE or new challenge, so server text from the
login exchange is never logged and never put in an error (:func:`unavailable`).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import imaplib
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailgate.config import ImapTarget, parse_imap_url
from mailgate.errors import BackendError

log = logging.getLogger(__name__)


def _no_protocol_trace(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


# imapclient logs every command it sends (LOGIN with its password included) at DEBUG.
# Cap the level, and filter DEBUG records out on the loggers it actually uses, so
# that even an administrator who turns imapclient's logger up never sees a password.
logging.getLogger("imapclient").setLevel(logging.WARNING)
for _name in ("imapclient.imapclient", "imapclient.imaplib", "imapclient.tls", "imapclient.imap4"):
    logging.getLogger(_name).addFilter(_no_protocol_trace)

# Response codes (RFC 5530) on a tagged NO that mean "try later", not "wrong password".
_TEMPORARY_CODES = frozenset({b"UNAVAILABLE", b"SERVERBUG", b"LIMIT", b"INUSE", b"PRIVACYREQUIRED"})


class LoginResult(enum.Enum):
    """The IMAP server's verdict on a user name and password."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class BackendUnavailable(BackendError):
    """The IMAP server gave no verdict: unreachable, slow, TLS failure, or an unexpected reply.

    ``kind`` is one of a small fixed set (``connect``, ``timeout``, ``tls``,
    ``starttls``, ``protocol``, ``closed``, ``busy``) so it can label a metric;
    :meth:`Session.login` (a mailbox session, never a password check) adds
    ``auth`` for refused credentials.  The message never contains the password.
    """

    KINDS = ("connect", "timeout", "tls", "starttls", "protocol", "closed", "busy")


@dataclass(frozen=True)
class ImapSettings:
    """Everything one check needs to reach the server."""

    target: ImapTarget
    ssl_context: ssl.SSLContext | None
    connect_timeout: float = 5.0
    response_timeout: float = 5.0
    mechanism: str = "auto"
    send_client_address: bool = False

    @classmethod
    def from_url(
        cls,
        url: str,
        ca_file: Path | None = None,
        *,
        key: str = "imap.url",
        connect_timeout: float = 5.0,
        response_timeout: float = 5.0,
        mechanism: str = "auto",
        send_client_address: bool = False,
    ) -> ImapSettings:
        """Settings for an ``imaps://``, ``imap://`` or ``imap+plaintext://`` URL.

        The TLS context verifies the server (``ca_file`` replaces the system's
        CAs); clear text gets none.  A bad URL raises ConfigError naming ``key``.
        """
        target = parse_imap_url(url, key)
        context = None if target.scheme == "imap+plaintext" else make_ssl_context(ca_file)
        return cls(
            target, context, connect_timeout, response_timeout, mechanism, send_client_address
        )


def make_ssl_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name.

    ``ca_file`` replaces the system trust store (an internal CA); without it
    the system's CAs are used.
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _quoted_or_literal(value: str) -> bytes:
    """An IMAP ``astring`` for LOGIN: a quoted string, or raw UTF-8 that goes as a literal.

    imapclient's raw command writer sends any argument with 8-bit bytes as a
    literal (``{n}`` or ``{n+}`` with LITERAL+), which is what RFC 3501 needs
    for non-ASCII values.  Control characters never get here (the service
    refuses them), so a quoted string can carry every ASCII value.
    """
    raw = value.encode("utf-8")
    if any(b > 0x7F for b in raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _classify_no(text: bytes) -> LoginResult:
    """A tagged NO is a wrong password unless its response code says the server is in trouble."""
    if text.startswith(b"["):
        code = text[1:].split(b"]", 1)[0].split(b" ", 1)[0].upper()
        if code in _TEMPORARY_CODES:
            raise BackendUnavailable(
                "protocol", f"server answered NO [{code.decode('ascii', 'replace')}]"
            )
    return LoginResult.REJECTED


class Session:
    """One connected, TLS-protected, not yet authenticated IMAP connection."""

    def __init__(self, settings: ImapSettings) -> None:
        target = settings.target
        self.client = IMAPClient(
            target.host,
            port=target.port,
            ssl=target.scheme == "imaps",
            ssl_context=settings.ssl_context,
            timeout=settings.connect_timeout,
        )
        self.imap: Any = self.client._imap  # the imaplib.IMAP4 underneath
        self.imap.debug = 0  # imapclient enables imaplib's trace, which would log the password
        self.client.socket().settimeout(settings.response_timeout)
        self.capabilities: frozenset[str] = frozenset()

    def secure(self, settings: ImapSettings) -> None:
        """Check the greeting and negotiate STARTTLS where the URL asks for it."""
        target = settings.target
        if self.imap.state != "NONAUTH":
            # PREAUTH: the server let us in without a password; that proves nothing.
            raise BackendUnavailable("protocol", f"server greeted in state {self.imap.state}")
        if target.scheme == "imap":
            if "STARTTLS" not in self.imap.capabilities:
                raise BackendUnavailable(
                    "starttls", "server does not offer STARTTLS; credentials were not sent"
                )
            # imaplib re-reads the capabilities after the handshake (RFC 3501 6.2.1).
            self.client.starttls(settings.ssl_context)
        self.capabilities = frozenset(str(c).upper() for c in self.imap.capabilities)

    def authenticate(
        self, user: str, password: str, mechanism: str, client_addr: str = ""
    ) -> LoginResult:
        """Try the credentials once; the session is unusable afterwards.

        With ``client_addr``, an IMAP ``ID`` command first tells the server the SMTP
        client's address (``x-originating-ip``), so its own per-IP protections
        (Dovecot honours it from ``login_trusted_networks``) see the real client.
        """
        if client_addr and "ID" in self.capabilities:
            self._send_id(client_addr)
        use_plain = mechanism == "plain" or (
            mechanism == "auto" and "AUTH=PLAIN" in self.capabilities
        )
        if use_plain:
            return self._plain(user, password)
        if "LOGINDISABLED" in self.capabilities:
            raise BackendUnavailable("protocol", "server disables LOGIN and offers no AUTH=PLAIN")
        return self._login(user, password)

    def _send_id(self, client_addr: str) -> None:
        try:
            address = str(ipaddress.ip_address(client_addr.strip("[]")))
        except ValueError:
            return  # not an address: nothing safe to forward
        try:
            self.imap._simple_command("ID", f'("x-originating-ip" "{address}")')
        except imaplib.IMAP4.error as err:
            # Not its text: the login exchange has begun, and server text is never logged.
            log.debug("IMAP server refused ID (%s); logging in without it", type(err).__name__)

    def _plain(self, user: str, password: str) -> LoginResult:
        # RFC 4616: authzid NUL authcid NUL passwd, UTF-8, then base64 (RFC 3501 6.2.2).
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        if "SASL-IR" in self.capabilities:
            typ, data = self.imap._simple_command("AUTHENTICATE", "PLAIN", token.decode("ascii"))
        else:
            self.imap.literal = _Continuation(token).answer
            typ, data = self.imap._simple_command("AUTHENTICATE", "PLAIN")
        return self._verdict(typ, data)

    def _login(self, user: str, password: str) -> LoginResult:
        typ, data = self.client._raw_command(
            b"LOGIN", [_quoted_or_literal(user), _quoted_or_literal(password)], uid=False
        )
        return self._verdict(typ, data)

    @staticmethod
    def _verdict(typ: str, data: list[Any]) -> LoginResult:
        if typ == "OK":
            return LoginResult.ACCEPTED
        text = data[-1] if data and isinstance(data[-1], bytes) else b""
        if typ == "NO":
            return _classify_no(text)
        raise BackendUnavailable("protocol", f"unexpected {typ} reply")

    def login(self, user: str, password: str, mechanism: str = "auto") -> None:
        """Log in and keep the session (for mailbox work); a wrong password is an error.

        Raises :class:`BackendUnavailable` (kind ``auth`` for refused
        credentials); its text never carries the password.
        """
        try:
            verdict = self.authenticate(user, password, mechanism)
        except BackendUnavailable:
            raise
        except Exception as err:
            raise unavailable(err, password) from None
        if verdict is LoginResult.REJECTED:
            raise BackendUnavailable("auth", f"the server refused the login of {user!r}")
        # We sent AUTHENTICATE/LOGIN ourselves, so imaplib did not move to its
        # authenticated state (RFC 3501 3.2), which its folder commands require.
        self.imap.state = "AUTH"

    def close(self) -> None:
        """Say LOGOUT without waiting for the BYE, then close (saves a round trip)."""
        with contextlib.suppress(OSError):
            self.imap.send(b"Z LOGOUT\r\n")
        with contextlib.suppress(OSError):
            self.imap.shutdown()


class _Continuation:
    """The answer to AUTHENTICATE's ``+`` without SASL-IR: the token once, then cancel.

    imaplib calls ``literal`` back for each continuation only when it is a bound
    method (anything else it sends as a literal of its ``len()``), hence a class.
    A second ``+`` gets ``*``, which cancels the exchange (RFC 3501 6.2.2).
    """

    def __init__(self, token: bytes) -> None:
        self._token = token

    def answer(self, _challenge: bytes) -> bytes:
        token, self._token = self._token, b"*"
        return token


def open_session(settings: ImapSettings) -> Session:
    """Connect, check the greeting and negotiate TLS: a session ready for one login.

    Raises :class:`BackendUnavailable` (never a library exception).
    """
    session: Session | None = None
    try:
        session = Session(settings)
        session.secure(settings)
        return session
    except Exception as err:
        if session is not None:
            session.close()
        if isinstance(err, BackendUnavailable):
            raise
        raise unavailable(err, "") from None


def authenticate_on(
    session: Session, settings: ImapSettings, user: str, password: str, client_addr: str = ""
) -> LoginResult:
    """Try the credentials on an open session, then close it (one login per connection).

    Exceptions raised here never carry the password: every library exception is
    replaced by one of ours built from its type and the server's reply, with the
    original chain suppressed.
    """
    try:
        forwarded = client_addr if settings.send_client_address else ""
        return session.authenticate(user, password, settings.mechanism, forwarded)
    except BackendUnavailable:
        raise
    except Exception as err:  # every library failure means "no verdict"
        raise unavailable(err, password) from None
    finally:
        session.close()


def check_login(
    settings: ImapSettings, user: str, password: str, client_addr: str = ""
) -> LoginResult:
    """Log in to the IMAP server once on a new connection and report the verdict (blocking).

    Raises :class:`BackendUnavailable` for anything that is not a clear answer
    about these credentials.
    """
    return authenticate_on(open_session(settings), settings, user, password, client_addr)


def unavailable(err: BaseException, password: str) -> BackendUnavailable:
    """Our error for a library one; during a login (``password`` given) without server text.

    imaplib puts the server's reply in its exceptions, and a server may echo the
    command it refuses: the AUTHENTICATE token or the LOGIN arguments, in forms
    no scrubbing can list.  So while credentials are on the wire, only the
    exception's type says what happened.
    """
    if isinstance(err, TimeoutError | socket.timeout):
        kind = "timeout"
    elif isinstance(err, ssl.SSLError | ssl.CertificateError):
        kind = "tls"
    elif isinstance(err, imaplib.IMAP4.abort):
        kind = "closed"
    elif isinstance(err, IMAPClientError):
        kind = "protocol"
    elif isinstance(err, OSError):
        kind = "connect"
    else:
        kind = "protocol"
    if password and not isinstance(err, OSError):
        # Only the OS and the TLS library write OSError texts; anything else may
        # quote the server (imaplib's errors, imapclient's, a decoding error).
        return BackendUnavailable(kind, f"{type(err).__name__} during login (server text withheld)")
    return BackendUnavailable(kind, scrub(f"{type(err).__name__}: {err}", password)[:300])


def scrub(text: str, password: str) -> str:
    """``text`` with the password, and the forms it takes on the wire, replaced by ``***``.

    A library error may quote the command it failed on: the password as typed,
    or quoted and escaped as LOGIN sends it.  (Server text from the login
    exchange, which may echo the AUTHENTICATE token, is withheld altogether.)
    """
    if not password:
        return text
    forms = {password, password.replace("\\", "\\\\").replace('"', '\\"')}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text
