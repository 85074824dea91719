"""The saslauthd wire protocol, as pure functions over bytes.

This module owns the byte format spoken on saslauthd's "mux" Unix socket by
cyrus-sasl 2.1.28 (``lib/checkpw.c`` on the client side, ``saslauthd/ipc_unix.c``
on the server side) and nothing else: no sockets, no asyncio.  The client's
half (framing a request, reading a reply) is :mod:`mailgate.saslauthd`, shared
with the filter's portal, and re-exported here.

A request is a sequence of *counted strings*: a 2-byte big-endian length, then
that many bytes.  Four are always sent: login, password, service, realm.  Newer
cyrus-sasl releases append a fifth, the client address; it is optional, so a
complete request is recognised after four fields and the fifth is taken only
when its bytes are already there.  The reply is one counted string, ``OK`` or
``NO <reason>``; libsasl accepts any reply whose first two bytes are ``OK``, so a
failure text must never start with them.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# The client side (framing a request, reading a reply) is the shared core's, since
# the filter's portal asks saslimap too; re-exported under the names it always had.
from mailgate.saslauthd import MAX_REPLY as MAX_REPLY
from mailgate.saslauthd import encode_request as encode_request
from mailgate.saslauthd import parse_reply as parse_reply
from mailgate.saslauthd import reply_is_ok as reply_is_ok

# saslauthd's MAX_REQ_LEN: each field may hold at most 256 bytes.
DEFAULT_MAX_FIELD = 256
_LEN = struct.Struct(">H")
FIELD_NAMES = ("login", "password", "service", "realm", "client address")


class ProtocolError(Exception):
    """A request that cannot be a valid saslauthd request."""


class FieldTooLong(ProtocolError):
    """A field's declared length exceeds the configured limit.

    Raised as soon as the 2-byte length is seen, so the daemon never buffers
    the oversized value; the daemon answers ``NO``.
    """

    def __init__(self, name: str, length: int, limit: int) -> None:
        super().__init__(f"{name} field of {length} bytes exceeds the {limit}-byte limit")
        self.name = name
        self.length = length
        self.limit = limit


class Request(NamedTuple):
    """One decoded request; ``password`` is left out of ``repr``.

    A named tuple rather than a frozen dataclass: one is made per request, on
    the cache-hit path, and a frozen dataclass costs several times as much.
    """

    login: bytes
    password: bytes
    service: bytes
    realm: bytes
    client_addr: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"Request(login={self.login!r}, service={self.service!r}, realm={self.realm!r}, "
            f"client_addr={self.client_addr!r})"
        )


class Parsed(NamedTuple):
    """A complete request and how many bytes of the buffer it used."""

    request: Request
    consumed: int


def _fields(buf: bytes, limit: int, wanted: int) -> tuple[list[bytes], int]:
    """Read up to ``wanted`` complete counted strings from the start of ``buf``."""
    out: list[bytes] = []
    pos = 0
    size = len(buf)
    for index in range(wanted):
        if size - pos < 2:
            break
        length = buf[pos] << 8 | buf[pos + 1]  # 2-byte big-endian; cheaper than struct here
        if length > limit:
            raise FieldTooLong(FIELD_NAMES[index], length, limit)
        end = pos + 2 + length
        if end > size:
            break
        out.append(buf[pos + 2 : end])
        pos = end
    return out, pos


def parse_request(buf: bytes, max_field: int = DEFAULT_MAX_FIELD) -> Parsed | None:
    """Decode a request from the start of ``buf``.

    Returns ``None`` while fewer than four complete fields have arrived, and
    raises :class:`FieldTooLong` as soon as a declared length is over the limit.
    A fifth field (client address) is included only if it is complete in
    ``buf``; a partial fifth field is left unconsumed, never waited for.
    """
    try:
        fields, consumed = _fields(buf, max_field, 5)
    except FieldTooLong as err:
        # An oversized *fifth* field must not spoil a complete four-field request:
        # the optional field is simply ignored.
        if err.name != FIELD_NAMES[4]:
            raise
        fields, consumed = _fields(buf, max_field, 4)
    if len(fields) < 4:
        return None
    login, password, service, realm = fields[:4]
    addr = fields[4] if len(fields) == 5 else None
    return Parsed(Request(login, password, service, realm, addr), consumed)


def max_request_size(max_field: int = DEFAULT_MAX_FIELD) -> int:
    """The largest number of bytes a valid five-field request can take."""
    return 5 * (_LEN.size + max_field)


def encode_reply(text: bytes) -> bytes:
    """Frame a reply; it is cut to what libsasl's buffer holds."""
    body = text[:MAX_REPLY]
    return _LEN.pack(len(body)) + body


def reply_ok() -> bytes:
    """The framed success reply."""
    return _REPLY_OK


_REPLY_OK = encode_reply(b"OK")


def reply_no(reason: str) -> bytes:
    """The framed failure reply ``NO <reason>``.

    The reason is reduced to printable ASCII so nothing a client sent can be
    echoed back as control characters; since it follows ``NO``, the reply can
    never be mistaken for ``OK``.
    """
    clean = "".join(c if " " <= c <= "~" else "?" for c in reason)
    return encode_reply(b"NO " + clean.encode("ascii"))
