"""The server side of Dovecot's authentication protocol, as Postfix uses it, over bytes.

This module owns the line format Postfix's ``xsasl_dovecot`` client speaks
(``smtpd_sasl_type = dovecot``): tab-separated lines ending in LF.

- handshake, server -> client: ``VERSION 1 2``, a ``MECH`` line per mechanism
  (``plaintext`` marks PLAIN and LOGIN), ``SPID``, ``CUID``, ``COOKIE``, ``DONE``;
  client -> server: ``VERSION 1 x`` and ``CPID pid``;
- ``AUTH <id> <mech> service=smtp nologin lip=<ip> rip=<ip> [secured] [resp=<b64>]``;
- replies ``OK <id> user=<name>``, ``CONT <id> <b64>``, and
  ``FAIL <id> [temp] reason=<text> [user=<name>]`` (``temp`` makes Postfix answer
  454 instead of 535);
- ``CONT <id> <b64>`` from the client for the next step.

It also owns the two mechanisms' state machines (RFC 4616 PLAIN, and LOGIN's
two prompts).  No sockets, no asyncio.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass, field

MAX_LINE = 16 * 1024
MECHANISMS = ("PLAIN", "LOGIN")


class DovecotProtocolError(ValueError):
    """A line that breaks the protocol; the connection is closed."""


def handshake(cuid: int) -> bytes:
    """What the server says first on every connection."""
    lines = [
        "VERSION\t1\t2",
        "MECH\tPLAIN\tplaintext",
        "MECH\tLOGIN\tplaintext",
        f"SPID\t{os.getpid()}",
        f"CUID\t{cuid}",
        f"COOKIE\t{secrets.token_hex(16)}",
        "DONE",
    ]
    return ("\n".join(lines) + "\n").encode()


@dataclass(frozen=True)
class Auth:
    """An AUTH request."""

    id: str
    mechanism: str
    params: dict[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    resp: bytes | None = None  # decoded initial response

    @property
    def client_ip(self) -> str:
        """The SMTP client's address (``rip=``), or ""."""
        return self.params.get("rip", "")

    @property
    def service(self) -> str:
        """``service=`` (smtp)."""
        return self.params.get("service", "")


@dataclass(frozen=True)
class Cont:
    """A continuation from the client."""

    id: str
    data: bytes


@dataclass(frozen=True)
class Other:
    """VERSION, CPID and anything the server may ignore."""

    command: str


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DovecotProtocolError("invalid base64") from None


def _request_id(text: str) -> str:
    if not text.isdigit() or len(text) > 10:
        raise DovecotProtocolError(f"bad request id {text[:20]!r}")
    return text


def parse_line(line: bytes) -> Auth | Cont | Other:
    """One client line (without its LF)."""
    if len(line) > MAX_LINE:
        raise DovecotProtocolError("line too long")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise DovecotProtocolError("non-ASCII protocol line") from None
    parts = text.split("\t")
    command = parts[0]
    if command == "AUTH":
        if len(parts) < 3:
            raise DovecotProtocolError("AUTH needs an id and a mechanism")
        params: dict[str, str] = {}
        flags: set[str] = set()
        for arg in parts[3:]:
            key, eq, value = arg.partition("=")
            if eq:
                params[key] = value
            else:
                flags.add(arg)
        resp = _b64(params.pop("resp")) if "resp" in params else None
        return Auth(_request_id(parts[1]), parts[2].upper(), params, frozenset(flags), resp)
    if command == "CONT":
        if len(parts) != 3:
            raise DovecotProtocolError("CONT needs an id and data")
        return Cont(_request_id(parts[1]), _b64(parts[2]))
    if command in ("VERSION", "CPID"):
        return Other(command)
    raise DovecotProtocolError(f"unknown command {command[:20]!r}")


def _clean(value: str) -> str:
    # TAB and LF end fields and lines in this protocol; nothing we send may carry them.
    return "".join(c if c.isprintable() and c != "\t" else "?" for c in value)


def ok(request_id: str, user: str) -> bytes:
    """Success, naming the authenticated user (Postfix logs it as sasl_username)."""
    return f"OK\t{request_id}\tuser={_clean(user)}\n".encode()


def fail(request_id: str, reason: str, *, user: str = "", temp: bool = False) -> bytes:
    """Failure; ``temp`` tells Postfix to answer 454 (try again later) rather than 535."""
    fields = ["FAIL", request_id]
    if temp:
        fields.append("temp")
    fields.append(f"reason={_clean(reason)}")
    if user:
        fields.append(f"user={_clean(user)}")
    return ("\t".join(fields) + "\n").encode()


def cont(request_id: str, challenge: bytes) -> bytes:
    """Ask the client for the next step."""
    return f"CONT\t{request_id}\t{base64.b64encode(challenge).decode()}\n".encode()


@dataclass(frozen=True)
class Credentials:
    """What a mechanism extracted: the user name and password."""

    user: str
    password: str = field(repr=False)


class Mechanism:
    """PLAIN or LOGIN for one request: feed client data, get a challenge or credentials."""

    def __init__(self, name: str) -> None:
        if name not in MECHANISMS:
            raise DovecotProtocolError(f"unsupported mechanism {name[:20]!r}")
        self.name = name
        self._user: str | None = None

    def step(self, data: bytes | None) -> bytes | Credentials:
        """``data`` is the client's (initial) response, or None if it sent none yet."""
        if self.name == "PLAIN":
            if data is None:
                return b""  # empty challenge: the client sends authzid\0authcid\0password
            parts = data.split(b"\0")
            if len(parts) != 3:
                raise DovecotProtocolError("PLAIN response is not authzid NUL authcid NUL passwd")
            authzid, authcid, password = (_utf8(p) for p in parts)
            if authzid and authzid != authcid:
                raise DovecotProtocolError("PLAIN authorization identity must equal the user")
            return Credentials(authcid, password)
        if data is None or (self._user is None and data == b""):
            return b"Username:"
        if self._user is None:
            self._user = _utf8(data)
            return b"Password:"
        return Credentials(self._user, _utf8(data))


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DovecotProtocolError("credentials are not valid UTF-8") from None
