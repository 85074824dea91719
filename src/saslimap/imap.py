"""The IMAP password check: the one module that touches imapclient.

imapclient (and the standard library's imaplib beneath it) is blocking and
untyped, so it is wrapped here once, behind :func:`check_login` (blocking, run in
a worker thread) and :class:`ImapBackend` (asyncio, bounded concurrency, overall
deadline).  Everything else in saslimap sees only :class:`LoginResult` and
:class:`BackendUnavailable`.

Why not ``IMAPClient.login()``: it calls imaplib's ``login``, which puts the user
name on the wire unquoted and quotes the password with only ``\\`` and ``"``
escaped.  Instead we send ``AUTHENTICATE PLAIN`` (RFC 4616: base64, no quoting,
UTF-8 safe), in one round trip when the server offers SASL-IR (RFC 4959), and
fall back to ``LOGIN`` with properly quoted strings, or literals for 8-bit values
(RFC 3501 section 4.3, RFC 9051 section 4.3).

Secrets: imapclient turns on imaplib's protocol trace and logs sent commands at
DEBUG level, which would include the password.  The trace is switched off on
every connection and imapclient's loggers are capped at WARNING.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import enum
import imaplib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from saslimap.config import ImapConfig, ImapTarget

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


class BackendUnavailable(Exception):
    """The IMAP server gave no verdict: unreachable, slow, TLS failure, or an unexpected reply.

    ``kind`` is one of a small fixed set (``connect``, ``timeout``, ``tls``,
    ``starttls``, ``protocol``, ``closed``, ``busy``) so it can label a metric.
    The message never contains the password.
    """

    KINDS = ("connect", "timeout", "tls", "starttls", "protocol", "closed", "busy")

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


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
    def from_config(cls, cfg: ImapConfig) -> ImapSettings:
        """Build settings, including the verifying TLS context, from the config."""
        target = cfg.target
        context = None if target.scheme == "imap+plaintext" else make_ssl_context(cfg.ca_file)
        return cls(
            target, context, cfg.connect_timeout, cfg.response_timeout, cfg.mechanism,
            cfg.send_client_address,
        )  # fmt: skip


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


class _Session:
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
            log.debug("IMAP server refused ID: %s", err)

    def _plain(self, user: str, password: str) -> LoginResult:
        # RFC 4616: authzid NUL authcid NUL passwd, UTF-8, then base64 (RFC 3501 6.2.2).
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        if "SASL-IR" in self.capabilities:
            typ, data = self.imap._simple_command("AUTHENTICATE", "PLAIN", token.decode("ascii"))
        else:
            self.imap.literal = lambda _challenge: token
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

    def close(self) -> None:
        """Say LOGOUT without waiting for the BYE, then close (saves a round trip)."""
        with contextlib.suppress(OSError):
            self.imap.send(b"Z LOGOUT\r\n")
        with contextlib.suppress(OSError):
            self.imap.shutdown()


def open_session(settings: ImapSettings) -> _Session:
    """Connect, check the greeting and negotiate TLS: a session ready for one login.

    Raises :class:`BackendUnavailable` (never a library exception).
    """
    session: _Session | None = None
    try:
        session = _Session(settings)
        session.secure(settings)
        return session
    except Exception as err:
        if session is not None:
            session.close()
        if isinstance(err, BackendUnavailable):
            raise
        raise _unavailable(err, "") from None


def authenticate_on(
    session: _Session, settings: ImapSettings, user: str, password: str, client_addr: str = ""
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
        raise _unavailable(err, password) from None
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


def _unavailable(err: BaseException, password: str) -> BackendUnavailable:
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
    detail = f"{type(err).__name__}: {err}"
    if password:
        detail = detail.replace(password, "***")
    return BackendUnavailable(kind, detail[:300])


class WarmPool:
    """IMAP sessions opened and TLS-negotiated ahead of demand (each used for one login).

    Worker threads take sessions (:meth:`take`); an asyncio task keeps the pool
    at its size, closes sessions idle longer than ``max_idle`` (before the
    server's own pre-login timeout would), and backs off while the server is
    unreachable.  The newest session is taken first; the oldest expire first.
    """

    def __init__(self, settings: ImapSettings, size: int, max_idle: float) -> None:
        self.settings = settings
        self.size = size
        self.max_idle = max_idle
        self._sessions: collections.deque[tuple[float, _Session]] = collections.deque()
        self._opener = ThreadPoolExecutor(1, thread_name_prefix="imap-warm")
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def start(self) -> None:
        """Begin filling the pool (from the event loop)."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._keep_filled())

    def take(self) -> _Session | None:
        """A fresh session, or None (called from worker threads)."""
        session = None
        while session is None:
            try:
                opened, candidate = self._sessions.pop()
            except IndexError:
                break
            if time.monotonic() - opened < self.max_idle:
                session = candidate
            else:
                candidate.close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wanted.set)
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    async def _keep_filled(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            now = time.monotonic()
            while self._sessions and now - self._sessions[0][0] >= self.max_idle:
                try:
                    _, old = self._sessions.popleft()
                except IndexError:
                    break
                old.close()
            while len(self._sessions) < self.size:
                try:
                    await loop.run_in_executor(self._opener, self._open_one)
                except BackendUnavailable as err:
                    backoff = min(max(backoff * 2, 0.5), 10.0)
                    log.debug("warm connection failed (%s); retrying in %.1f s", err.kind, backoff)
                    break
                backoff = 0.0
            self._wanted.clear()
            if backoff:
                await asyncio.sleep(backoff)  # the server is unreachable: do not retry per request
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), self.max_idle / 4)

    def _open_one(self) -> None:
        # In the opener thread; it may finish after close(), which must not leak it.
        self._sessions.append((time.monotonic(), open_session(self.settings)))
        if self._closed:
            self._close_all()

    def close(self) -> None:
        """Stop refilling and close every idle session."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._opener.shutdown(wait=False, cancel_futures=True)
        self._close_all()

    def _close_all(self) -> None:
        while self._sessions:
            try:
                _, session = self._sessions.pop()
            except IndexError:
                break
            session.close()


class ImapBackend:
    """IMAP checks in worker threads: bounded concurrency and queue, a deadline, warm sessions.

    At most ``max_concurrency`` logins run at once and at most ``max_queue``
    checks wait for a slot; a check beyond that is refused at once as ``busy``
    rather than piling up behind a slow server.
    """

    def __init__(
        self,
        settings: ImapSettings,
        max_concurrency: int = 16,
        *,
        max_queue: int = 64,
        warm_connections: int = 0,
        warm_max_idle: float = 20.0,
        check: Callable[[ImapSettings, str, str, str], LoginResult] | None = None,
    ) -> None:
        self.settings = settings
        self.max_queue = max_queue
        self.pool = (
            WarmPool(settings, warm_connections, warm_max_idle)
            if warm_connections > 0 and check is None
            else None
        )
        self._check = check or self._check_pooled
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="imap-login")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        # Socket timeouts bound each step; this bounds the whole exchange:
        # connect + greeting, STARTTLS, handshake, CAPABILITY, the login itself.
        self.deadline = settings.connect_timeout * 2 + settings.response_timeout * 3

    @classmethod
    def from_config(cls, cfg: ImapConfig) -> ImapBackend:
        """The backend described by the ``[imap]`` section."""
        return cls(
            ImapSettings.from_config(cfg),
            cfg.max_concurrency,
            max_queue=cfg.max_queue,
            warm_connections=cfg.warm_connections,
            warm_max_idle=cfg.warm_max_idle,
        )

    def start(self) -> None:
        """Begin keeping warm sessions (if configured); call from the event loop."""
        if self.pool is not None:
            self.pool.start()

    def _check_pooled(
        self, settings: ImapSettings, user: str, password: str, client_addr: str = ""
    ) -> LoginResult:
        session = self.pool.take() if self.pool is not None else None
        if session is not None:
            try:
                return authenticate_on(session, settings, user, password, client_addr)
            except BackendUnavailable as err:
                if err.kind not in ("closed", "connect"):
                    raise
                # The server dropped the idle connection; a new one decides.
                log.debug("warm connection was closed by the server (%s); reconnecting", err.kind)
        return check_login(settings, user, password, client_addr)

    async def login(self, user: str, password: str, client_addr: str = "") -> LoginResult:
        """Check the credentials against the IMAP server."""
        if self._slots.locked() and self._waiting >= self.max_queue:
            raise BackendUnavailable("busy", f"{self._waiting} checks already queued")
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        self._waiting += 1
        queued = True
        try:
            async with asyncio.timeout(self.deadline):
                async with self._slots:
                    self._waiting -= 1
                    queued = False
                    return await loop.run_in_executor(
                        self._executor, self._check, self.settings, user, password, client_addr
                    )
        except TimeoutError:
            waited = time.monotonic() - start
            raise BackendUnavailable("timeout", f"no verdict within {waited:.1f} s") from None
        finally:
            if queued:
                self._waiting -= 1

    def close(self) -> None:
        """Stop the worker threads; checks still running finish on their own socket timeouts."""
        if self.pool is not None:
            self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
