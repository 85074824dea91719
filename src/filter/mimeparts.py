"""MIME entities read from raw bytes, as leniently as a mail client reads them.

This module owns the pieces the banned-part walk is built from: an entity's
MIME fields with every occurrence kept (:func:`head_fields`: RFC 2231
parameters collapsed, RFC 2047 encoded words decoded by :func:`decode_words`),
an entity split into header section and body, a multipart body split into its
parts at delimiter lines (RFC 2046 5.1.1), and bodies decoded with lenient
base64.  Also the cheap whole-message helpers other modules use,
:func:`parse` and :func:`may_nest`.  Pure: bytes in, bytes and strings out.
"""

from __future__ import annotations

import binascii
import email
import email.charset
import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.message import Message

# Every field at a line start in the header section counts, even after a line that
# is no field (the stdlib parser stops there; a client may not).
_MIME_FIELD = re.compile(
    rb"^(content-(?:type|disposition|transfer-encoding))[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
    re.IGNORECASE | re.MULTILINE,
)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# RFC 2047 encoded words, found anywhere (clients decode them inside quoted strings too).
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([bBqQ])\?([^?]*)\?=")
_ENCODED_GAP = re.compile(r"(\?=)\s+(=\?)")


@dataclass(frozen=True)
class HeadFields:
    """The MIME fields of one entity, every occurrence kept."""

    types: tuple[str, ...]
    boundaries: tuple[str, ...]
    names: tuple[str, ...]
    encodings: tuple[str, ...]
    message_types: bool  # some Content-Type is message/*
    problem: str = ""  # why these fields cannot be read as a client reads them ("": none)


# The standard library's parameter parser rescans the value for every ";" inside an
# open quote: quadratic, seconds of CPU for a 40 KB field.  No real MIME field is
# near this long; a longer one is not parsed at all (the part is unchecked).
MAX_MIME_FIELD = 8192


def _params(value: str, header: str) -> tuple[str, list[tuple[str, str]]]:
    """(lowercased type or disposition, [(param, value)...]) with RFC 2231 collapsed."""
    holder = Message()
    holder[header] = value
    params = holder.get_params(header=header) or []
    out: list[tuple[str, str]] = []
    for key, raw in params[1:]:
        text = email.utils.collapse_rfc2231_value(raw, errors="replace")
        out.append((key.lower(), str(text)))
    kind = holder.get_content_type() if header == "content-type" else ""
    return kind, out


def decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded (B and Q, any charset, unknown ones as UTF-8)."""
    if "=?" not in text:
        return text
    return _ENCODED_WORD.sub(_decode_word, _ENCODED_GAP.sub(r"\1\2", text))


def _decode_word(match: re.Match[str]) -> str:
    charset = match.group(1).split("*", 1)[0] or "utf-8"  # RFC 2231 section 5: charset*lang
    payload = match.group(3)
    if match.group(2) in "bB":
        raw = _lenient_b64(payload.encode("ascii", "replace"))
    else:
        raw = binascii.a2b_qp(payload.replace("_", " ").encode("ascii", "replace"))
    try:
        return raw.decode(email.charset.ALIASES.get(charset.lower(), charset), "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")


_B64_ALPHABET = re.compile(rb"[^A-Za-z0-9+/]")


def _lenient_b64(data: bytes) -> bytes:
    """Base64 as clients decode it: junk skipped, padding and a dangling character forgiven."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        clean = _B64_ALPHABET.sub(b"", data)
        clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
        return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


def head_fields(head: bytes) -> HeadFields:
    types: list[str] = []
    boundaries: list[str] = []
    names: list[str] = []
    encodings: list[str] = []
    message_types = False
    problem = ""
    for match in _MIME_FIELD.finditer(head):
        field = match.group(1).lower()
        if len(match.group(2)) > MAX_MIME_FIELD:
            problem = f"a {field.decode('ascii', 'replace')} field over {MAX_MIME_FIELD} bytes"
            continue
        value = _FOLD.sub("", match.group(2).decode("latin-1")).strip()
        if field == b"content-transfer-encoding":
            # base-64, Base_64, "base64": the same thing to a lenient decoder.
            encodings.append(re.sub(r"[^a-z0-9]", "", value.lower()))
            continue
        header = field.decode("ascii").lower()
        kind, params = _params(value, header)
        if kind:
            types.append(kind)
            message_types = message_types or kind.startswith("message/")
        for key, text in params:
            if key == "boundary" and header == "content-type":
                boundaries.append(text)
                if not text.isascii():
                    # RFC 2046 boundaries are ASCII; a client may match the UTF-8 or
                    # the Latin-1 bytes of another one, we cannot tell which.
                    problem = "a boundary that is not ASCII"
            elif key in ("name", "filename"):
                names.append(text)
                decoded = decode_words(text)
                if decoded != text:
                    names.append(decoded)
    return HeadFields(
        tuple(dict.fromkeys(types)),
        tuple(dict.fromkeys(b for b in boundaries if b)),
        tuple(dict.fromkeys(names)),
        tuple(dict.fromkeys(encodings)),
        message_types,
        problem,
    )


def _after_empty_line(message: bytes) -> int | None:
    """Where the first empty line in CRLF or LF form ends, or None if there is none.

    CRLF CRLF is looked for first, the usual header end over SMTP, and LF LF only
    before it: a CRLF message has no LF LF, and an unbounded search for one reads
    it all.  (Any line ending is a line boundary to the email parser.)
    """
    crlf = message.find(b"\r\n\r\n")
    lf = message.find(b"\n\n", 0, crlf + 2 if crlf >= 0 else len(message))
    cuts = [found + size for found, size in ((lf, 2), (crlf, 4)) if found >= 0]
    return min(cuts) if cuts else None


def split_entity(entity: bytes) -> tuple[bytes, bytes]:
    """(header section, body); an entity starting with an empty line has no header."""
    if entity.startswith((b"\r\n", b"\n")):
        return b"", entity[2 if entity.startswith(b"\r\n") else 1 :]
    cut = _after_empty_line(entity)
    if cut is None:
        return entity, b""
    return entity[:cut], entity[cut:]


def parse(message: bytes) -> Message:
    """``email.message_from_bytes(message, policy=compat32)``, cheaper for single-part mail.

    Kept for callers outside the banned check, which no longer uses the stdlib tree.
    The parser reads the body line by line even when it only joins the lines
    back into one payload, as it does for every type but multipart/* and
    message/*.  So the header section is parsed alone, up to just after the
    first empty line; when the parser's headers end exactly there (no stray
    body line before it) and the type is single-part, the rest of the text is
    the payload as is.  Any other message gets the full parse.
    """
    text = message.decode("ascii", "surrogateescape")  # what message_from_bytes does
    cut = _after_empty_line(message)  # one byte is one character of text
    if cut is not None:
        msg = email.message_from_string(text[:cut], policy=email.policy.compat32)
        if msg.get_content_maintype() not in ("multipart", "message") and not msg.get_payload():
            msg.set_payload(text[cut:])
            return msg
    return email.message_from_string(text, policy=email.policy.compat32)


def may_nest(message: bytes) -> bool:
    """Whether the email parser might see a multipart/* or message/* type (else: one part).

    Its content type comes from a field of its header section, which never
    reaches past the first empty line in CRLF or LF form (it may end earlier, at
    a line that is no field); a main type of ``multipart`` or ``message`` needs
    ``multipart/`` or ``message/`` in the value, in any case.  So without either
    text before that empty line, the message is a single part.
    """
    lowered = message[: _after_empty_line(message)].lower()
    return b"multipart/" in lowered or b"message/" in lowered


def decode_body(body: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return _lenient_b64(body)
    if encoding == "quotedprintable":
        return binascii.a2b_qp(body)
    return body  # 7bit, 8bit, binary, and names no client decodes


_DELIMITERS: dict[str, re.Pattern[bytes]] = {}


def _delimiter(boundary: str) -> re.Pattern[bytes]:
    """Delimiter lines of a boundary (RFC 2046 5.1.1), transport padding allowed."""
    pattern = _DELIMITERS.get(boundary)
    if pattern is None:
        raw = boundary.encode("latin-1", "replace")
        pattern = re.compile(rb"^--" + re.escape(raw) + rb"(--)?[ \t]*\r?$", re.MULTILINE)
        if len(_DELIMITERS) < 256:
            _DELIMITERS[boundary] = pattern
    return pattern


def body_parts(body: bytes, boundary: str) -> list[bytes] | None:
    """The body parts between delimiter lines (after a close one too), or None without any.

    A part after the last delimiter, if that is no close delimiter, runs to the end
    of the body (a truncated multipart: clients show that part).
    """
    lines = list(_delimiter(boundary).finditer(body))
    if not lines:
        return None
    parts = []
    ends = [line.start() for line in lines[1:]]
    if not lines[-1].group(1):
        ends.append(len(body))  # no close delimiter: the last part runs to the end
    for this, end in zip(lines, ends, strict=False):
        start = body.find(b"\n", this.end())
        start = this.end() if start < 0 else start + 1
        # The line break before a delimiter belongs to the delimiter.
        end -= 2 if body[end - 2 : end] == b"\r\n" else 1 if body[end - 1 : end] == b"\n" else 0
        parts.append(body[start : max(start, end)])
    return parts
