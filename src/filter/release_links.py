"""Release links for the daily digest: signed, expiring tokens naming one entry and one recipient.

This module owns the token format and nothing else: no I/O, no clock, no
store.  :func:`make_token` signs (quarantine id, recipient, expiry, random
nonce); :func:`check_token` verifies one and says why it refuses it.  Making a
link single-use is the store's job (:meth:`filter.qstore.QuarantineStore.spend_link`
records the nonce once), and releasing is :func:`filter.qactions.release_link`'s.

A token is the URL-safe base64 (RFC 4648 §5, no ``=`` padding) of::

    version    1 byte    1
    nonce     16 bytes   random (secrets.token_bytes)
    expires    8 bytes   Unix seconds, unsigned big-endian
    id_len     1 byte    then the quarantine id, ASCII [0-9a-f-], 1..64 bytes
    rcpt_len   1 byte    then the recipient address, UTF-8, 1..254 bytes
    mac       32 bytes   HMAC-SHA256(link_key(secret), every byte before it)

``link_key(secret)`` is ``HMAC-SHA256(secret, b"mailgate-portal-release-link")``:
the portal's one secret signs its cookies under other labels, so a value
signed for one purpose is never accepted for another.  The MAC is checked
(in constant time) before any field is read, so a tampered, truncated or
extended token is refused as forged without its contents being looked at;
malformed input of any type or size is refused before it is decoded.  A token
is about 150 characters for a typical id and address.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

VERSION = 1
LABEL = b"mailgate-portal-release-link"
NONCE_BYTES = 16
MAC_BYTES = 32
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its angle brackets.
MAX_RECIPIENT_BYTES = 254
MAX_ID_BYTES = 64
_FIXED = 1 + NONCE_BYTES + 8 + 1 + 1 + MAC_BYTES
# Longest possible token, in characters: anything longer is refused unread.
MAX_TOKEN_CHARS = -(-(_FIXED + MAX_ID_BYTES + MAX_RECIPIENT_BYTES) * 4 // 3)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_ID = re.compile(r"[0-9a-f-]{1,64}")
_LAST_EXPIRY = 2**63 - 1


class LinkError(Exception):
    """A token cannot be made (bad id, recipient or key) or is refused (:class:`LinkRefused`)."""


class Refusal(enum.Enum):
    """Why a token is refused; the portal's page says so in words."""

    MALFORMED = "malformed"  # not a token of any version we make (wrong type, size, characters)
    FORGED = "forged"  # the MAC does not match: tampered, truncated, or another key's
    EXPIRED = "expired"


class LinkRefused(LinkError):
    """:func:`check_token` refuses a token; ``reason`` says why."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"release link {reason.value}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Link:
    """What a valid token says: release ``entry_id`` to ``recipient`` once, until ``expires_at``."""

    entry_id: str
    recipient: str
    expires_at: int
    nonce: bytes


def link_key(secret: bytes) -> bytes:
    """The key release links are signed with, derived from the portal's secret."""
    if not isinstance(secret, bytes) or not secret:
        raise LinkError("the release link secret must be non-empty bytes")
    return hmac.new(secret, LABEL, hashlib.sha256).digest()


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_token(
    secret: bytes, entry_id: str, recipient: str, expires_at: int, nonce: bytes | None = None
) -> str:
    """A token releasing ``entry_id`` to ``recipient`` until ``expires_at`` (Unix seconds).

    ``nonce``: 16 bytes, random unless given (tests).  LinkError for an id that
    is not a quarantine id, an empty or over-long recipient, or a bad expiry.
    """
    if not _ID.fullmatch(entry_id):
        raise LinkError(f"{entry_id[:80]!r} is not a quarantine id")
    try:
        rcpt = recipient.encode("utf-8")
    except UnicodeEncodeError:
        raise LinkError("the recipient is not valid Unicode") from None
    if not 0 < len(rcpt) <= MAX_RECIPIENT_BYTES:
        raise LinkError(f"a recipient of {len(rcpt)} bytes cannot be named in a link")
    if not 0 <= expires_at <= _LAST_EXPIRY:
        raise LinkError(f"expiry {expires_at} out of range")
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise LinkError(f"the nonce must be {NONCE_BYTES} bytes")
    ident = entry_id.encode("ascii")
    payload = (
        bytes([VERSION]) + nonce + expires_at.to_bytes(8, "big")
        + bytes([len(ident)]) + ident + bytes([len(rcpt)]) + rcpt
    )  # fmt: skip
    mac = hmac.new(link_key(secret), payload, hashlib.sha256).digest()
    return _encode(payload + mac)


def _malformed(detail: str) -> LinkRefused:
    return LinkRefused(Refusal.MALFORMED, detail)


def check_token(secret: bytes, token: object, now: float) -> Link:
    """What a token names, if we made it under ``secret`` and it has not expired at ``now``.

    Raises :class:`LinkRefused` (and nothing else) for anything else: a value
    that is not a string, too long, not URL-safe base64, a version or layout we
    never make, a MAC that does not match, or an expiry at or before ``now``.
    Whether the link was used already is the store's to say (``spend_link``).
    """
    key = link_key(secret)
    if not isinstance(token, str):
        raise _malformed(f"a {type(token).__name__}, not a string")
    if len(token) > MAX_TOKEN_CHARS:
        raise _malformed(f"{len(token)} characters, more than any link has")
    if not _TOKEN_CHARS.fullmatch(token):
        raise _malformed("characters outside URL-safe base64")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _malformed("not base64") from None
    if _encode(raw) != token:  # one token, one spelling: no unused bits set
        raise _malformed("not base64 as we write it")
    if len(raw) < _FIXED + 2:
        raise _malformed(f"{len(raw)} bytes, too short")
    if raw[0] != VERSION:
        raise _malformed(f"version {raw[0]}, not {VERSION}")
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), mac):
        raise LinkRefused(Refusal.FORGED, "signature does not match")
    # Signed by us from here on; the layout is still checked, never assumed.
    at = 1 + NONCE_BYTES
    nonce = payload[1:at]
    expires_at = int.from_bytes(payload[at : at + 8], "big")
    at += 8
    id_len = payload[at]
    ident = payload[at + 1 : at + 1 + id_len]
    at += 1 + id_len
    rcpt_len = payload[at] if at < len(payload) else -1
    rcpt = payload[at + 1 :]
    if len(ident) != id_len or rcpt_len != len(rcpt) or not rcpt:
        raise _malformed("fields do not fit the token")
    try:
        entry_id, recipient = ident.decode("ascii"), rcpt.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("fields are not text") from None
    if not _ID.fullmatch(entry_id):
        raise _malformed("not a quarantine id")
    if now >= expires_at:
        raise LinkRefused(Refusal.EXPIRED, f"it was valid until {expires_at} (Unix time)")
    return Link(entry_id, recipient, expires_at, nonce)
