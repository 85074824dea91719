"""Release link tokens: the exact format, and every way a token is refused (no store, no clock)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from filter import release_links
from filter.release_links import (
    Link,
    LinkError,
    LinkRefused,
    Refusal,
    check_token,
    link_key,
    make_token,
)

SECRET = b"k" * 16 + bytes(range(16))
NONCE = bytes(range(100, 116))
ID = "20261201-101500-8f3a1c2b9d"
RCPT = "alice@example.com"
EXPIRES = 1_800_000_000
NOW = EXPIRES - 3600.0


def token(**changes: object) -> str:
    """A token with the test's fixed fields, some changed."""
    fields: dict[str, object] = {
        "secret": SECRET, "entry_id": ID, "recipient": RCPT, "expires_at": EXPIRES,
        "nonce": NONCE,
    }  # fmt: skip
    fields.update(changes)
    return make_token(**fields)  # type: ignore[arg-type]


def raw(text: str) -> bytes:
    """A token's bytes."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(data: bytes) -> str:
    """Bytes as a token's text."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refusal(value: object, secret: bytes = SECRET, now: float = NOW) -> Refusal:
    """Why check_token refuses ``value`` (failing the test if it accepts it)."""
    with pytest.raises(LinkRefused) as caught:
        check_token(secret, value, now)
    return caught.value.reason


# The format


def test_the_token_is_these_exact_bytes() -> None:
    """version, nonce, expiry, id and recipient with their lengths, then HMAC under the label."""
    payload = (
        b"\x01" + NONCE + EXPIRES.to_bytes(8, "big")
        + bytes([len(ID)]) + ID.encode() + bytes([len(RCPT)]) + RCPT.encode()
    )  # fmt: skip
    key = hmac.new(SECRET, b"mailgate-portal-release-link", hashlib.sha256).digest()
    assert key == link_key(SECRET)
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    assert encode(payload + mac) == token()


def test_a_token_is_url_safe_and_short() -> None:
    """Only URL-safe characters, no padding, about 150 characters."""
    made = token()
    assert set(made) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(made) < 160


def test_a_token_checks_back_to_what_it_names() -> None:
    """check_token gives back the id, recipient, expiry and nonce."""
    assert Link(ID, RCPT, EXPIRES, NONCE) == check_token(SECRET, token(), NOW)


def test_each_token_gets_its_own_random_nonce() -> None:
    """Two links for the same entry and recipient differ (each is spent on its own)."""
    first = make_token(SECRET, ID, RCPT, EXPIRES)
    second = make_token(SECRET, ID, RCPT, EXPIRES)
    assert first != second
    assert check_token(SECRET, first, NOW).nonce != check_token(SECRET, second, NOW).nonce


def test_a_non_ascii_recipient_round_trips() -> None:
    """An SMTPUTF8 address is carried as UTF-8."""
    assert "jürgen@例え.jp" == check_token(SECRET, token(recipient="jürgen@例え.jp"), NOW).recipient


@pytest.mark.parametrize(
    "changes",
    [
        {"entry_id": "../etc/passwd"},
        {"entry_id": ""},
        {"entry_id": "a" * 65},
        {"recipient": ""},
        {"recipient": "a" * 250 + "@example.com"},
        {"recipient": "\udcff@example.com"},
        {"expires_at": -1},
        {"expires_at": 2**64},
        {"nonce": b"short"},
        {"secret": b""},
    ],
    ids=lambda c: next(iter(c)),
)
def test_what_cannot_be_named_in_a_link_is_refused_when_making_it(changes: object) -> None:
    """make_token raises LinkError for a bad id, recipient, expiry, nonce or secret."""
    assert isinstance(changes, dict)
    with pytest.raises(LinkError):
        token(**changes)


# Refusals


def test_expired_at_its_expiry_time() -> None:
    """Valid up to a second before ``expires_at``, refused from then on."""
    check_token(SECRET, token(), EXPIRES - 1)
    assert Refusal.EXPIRED == refusal(token(), now=EXPIRES)
    assert Refusal.EXPIRED == refusal(token(), now=EXPIRES + 86400 * 365)


def test_another_key_is_forged() -> None:
    """A token made under another secret does not verify."""
    assert Refusal.FORGED == refusal(token(secret=b"another secret of some length....."))


def test_every_flipped_bit_is_refused() -> None:
    """Flipping any one bit of the token's bytes (fields or MAC) makes it refused."""
    data = raw(token())
    for index in range(len(data)):
        for bit in range(8):
            changed = bytearray(data)
            changed[index] ^= 1 << bit
            assert refusal(encode(bytes(changed))) in (Refusal.FORGED, Refusal.MALFORMED)


def test_a_longer_expiry_or_another_recipient_cannot_be_spliced_in() -> None:
    """Fields of a valid token moved into another (same MAC) are refused as forged."""
    mine, theirs = raw(token()), raw(token(recipient="bob@example.com", expires_at=EXPIRES * 2))
    spliced = mine[:17] + theirs[17:25] + mine[25:]  # bob's later expiry into alice's token
    assert Refusal.FORGED == refusal(encode(spliced))
    swapped = theirs[:-32] + mine[-32:]  # bob's fields with alice's MAC
    assert Refusal.FORGED == refusal(encode(swapped))


def test_every_truncation_is_refused() -> None:
    """Each prefix of a valid token, down to nothing, is refused."""
    made = token()
    for length in range(len(made)):
        assert refusal(made[:length]) in (Refusal.MALFORMED, Refusal.FORGED)


def test_bytes_appended_are_refused() -> None:
    """A valid token with anything after it is refused."""
    made = token()
    for extra in ("A", "AA", "AAAA", made):
        assert refusal(made + extra) in (Refusal.MALFORMED, Refusal.FORGED)


def test_a_second_spelling_of_the_same_bytes_is_refused() -> None:
    """Unused low bits set in the last character: same bytes, other text, refused."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    made = next(
        t for t in (token(recipient="a" * n + "@example.com") for n in range(1, 4))
        if len(raw(t)) % 3 == 1  # the last character then carries 4 unused bits
    )  # fmt: skip
    other = made[:-1] + alphabet[alphabet.index(made[-1]) | 1]
    assert raw(other) == raw(made)
    assert Refusal.MALFORMED == refusal(other)


MALFORMED = [
    None, 42, 4.2, b"bytes", ["list"], {"a": 1}, object(),
    "", "=", "====", "a", "ab=", "!!!!", "a b", "a\nb", "a\x00b", "ä" * 10,
    "A" * 10, "A" * 90, "A" * 10_000, "A" * 10_000_000, "%41%41", "../..", "\u202e" * 4,
]  # fmt: skip


@pytest.mark.parametrize(
    "value",
    MALFORMED,
    ids=lambda v: repr(v)[:20] + (f"..{len(v)}" if isinstance(v, str) and len(v) > 20 else ""),
)
def test_malformed_input_of_any_shape_is_refused_with_our_error_only(value: object) -> None:
    """Wrong types, sizes up to 10 MB, and characters outside base64url: LinkRefused."""
    assert Refusal.MALFORMED == refusal(value)


def test_a_signed_token_of_another_layout_is_refused_as_malformed() -> None:
    """Lengths that do not fit, signed with the right key, are still refused (never trusted)."""
    key = link_key(SECRET)
    for payload in (
        b"\x01" + NONCE + EXPIRES.to_bytes(8, "big") + b"\x40" + b"a" * 5 + b"\x01x",
        b"\x01" + NONCE + EXPIRES.to_bytes(8, "big") + b"\x01a" + b"\x05ab",
        b"\x01" + NONCE + EXPIRES.to_bytes(8, "big") + b"\x02..\x01x",
        b"\x01" + NONCE + EXPIRES.to_bytes(8, "big") + b"\x01a\x00",
    ):
        mac = hmac.new(key, payload, hashlib.sha256).digest()
        assert Refusal.MALFORMED == refusal(encode(payload + mac))


def test_another_version_is_refused_before_its_mac_is_looked_at() -> None:
    """Version byte 2 is malformed (a future format), not forged."""
    data = bytearray(raw(token()))
    data[0] = 2
    assert Refusal.MALFORMED == refusal(encode(bytes(data)))


def test_the_refusal_says_why_without_echoing_the_token() -> None:
    """The message names the reason; a 10 kB value is not repeated in it."""
    with pytest.raises(LinkRefused) as caught:
        check_token(SECRET, "A" * 10_000, NOW)
    assert str(caught.value).startswith("release link malformed: ")
    assert len(str(caught.value)) < 200


def test_the_longest_token_fits_the_size_limit() -> None:
    """A 64-character id and a 254-byte recipient make a token check_token still reads."""
    longest = token(entry_id="a" * 64, recipient="a" * 242 + "@example.com")
    assert len(longest) <= release_links.MAX_TOKEN_CHARS
    assert "a" * 64 == check_token(SECRET, longest, NOW).entry_id
