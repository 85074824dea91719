"""A held message as the portal shows it: header fields, one text body, a list of attachments.

This module owns turning a message's bytes into plain strings for a page, and
nothing it returns is markup: the templates escape every string, and HTML
parts are never passed on as HTML.  An HTML body is reduced to its text here
(tags dropped, links written after their text as ``<url>``, scripts and
styles left out); attachments are listed by name, declared type and size,
never opened.

The message is read as the banned-part check reads it (:mod:`filter.mimeparts`:
every entity split at its own delimiter lines, lenient base64, RFC 2047 and
RFC 2231 names decoded), iteratively, with limits on parts, depth and text,
so a hostile message costs bounded work.  Characters a page could be fooled
by (controls, bidi overrides such as U+202E in ``invoice\\u202etxt.exe``) are
shown escaped, as ``mail-filter quarantine show`` shows them.
"""

from __future__ import annotations

import email.charset
import html as html_module
import re
from dataclasses import dataclass, field

from filter import headers
from filter.mimeparts import body_parts, decode_body, decode_words, head_fields, split_entity
from filter.quarantine_cli import printable

# What a page shows at most: enough to judge a message, bounded for a hostile one.
MAX_PARTS = 500
MAX_DEPTH = 30
MAX_TEXT = 100_000
MAX_HTML_INPUT = 2 * 1024 * 1024
MAX_HEADER_VALUE = 2000
# The fields a user sees (an administrator sees every field, Received lines included).
USER_FIELDS = ("from", "sender", "reply-to", "to", "cc", "date", "subject", "message-id")

_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:+-]{1,40})""", re.IGNORECASE)
_DISPOSITION = re.compile(rb"^content-disposition[ \t]*:[ \t]*attachment", re.I | re.M)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


@dataclass(frozen=True)
class Attachment:
    """A part listed by name, declared type and (decoded, estimated) size in bytes."""

    name: str
    type: str
    size: int


@dataclass
class Preview:
    """What the preview page shows of a message."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    from_html: bool = False  # the text was extracted from an HTML part
    attachments: list[Attachment] = field(default_factory=list)
    cut: bool = False  # parts, depth or text went past a limit: not everything is shown


def shown(text: str) -> str:
    """One line for a page: folded whitespace joined, controls and bidi overrides escaped."""
    return printable(text)


def _text_lines(text: str) -> str:
    """A body for a page: line ends kept, tabs kept, every other control escaped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(printable(line, keep="\t") for line in lines)


def _charset(head: bytes) -> str:
    for line in headers.fields(head):
        if headers.field_name(line) == b"content-type":
            found = _CHARSET.search(line.decode("latin-1"))
            if found:
                name = found.group(1).lower()
                return email.charset.ALIASES.get(name, name)
    return "utf-8"


def _decode_text(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset, "replace")
    except (LookupError, UnicodeError):
        # An unknown charset, or a codec that refuses "replace" (idna) or fails anyway
        # (undefined; punycode on 8-bit data): the message chose it, so read it as UTF-8.
        return data.decode("utf-8", "replace")


def _size(body: bytes, encoding: str) -> int:
    """The decoded size, estimated for base64 without decoding (an attachment may be large)."""
    if encoding == "base64":
        return len(_B64_JUNK.sub(b"", body)) * 3 // 4
    if encoding == "quotedprintable":
        return len(decode_body(body, encoding))
    return len(body)


def header_fields(head: bytes, every: bool) -> list[tuple[str, str]]:
    """(name, decoded value) of each field, or only :data:`USER_FIELDS` unless ``every``."""
    out: list[tuple[str, str]] = []
    for line in headers.fields(head):
        name, colon, value = line.decode("utf-8", "replace").partition(":")
        if not colon:
            continue
        if not every and name.strip().lower() not in USER_FIELDS:
            continue
        value = _FOLD.sub("", value).strip()
        if len(value) > MAX_HEADER_VALUE:
            value = value[:MAX_HEADER_VALUE] + " [...]"
        out.append((shown(name.strip()), shown(decode_words(value))))
    return out


_SKIP = ("script", "style", "head", "title", "template", "noscript")
_BREAK = frozenset((
    "br", "p", "div", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "section", "article", "header", "footer",
))  # fmt: skip
_NAME = re.compile(r"/?([a-zA-Z][a-zA-Z0-9]*)")  # "< b": text, as a browser reads it
_ATTR = re.compile(r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+)""")
_END_OF = {tag: re.compile(rf"</{tag}\s*>" + (r"|<body[\s>]" if tag == "head" else ""), re.I)
           for tag in _SKIP}  # fmt: skip
MAX_TAG_ATTRS = 4096  # characters of one tag whose attributes are read (href, alt)


def _attr(inner: str, wanted: str) -> str:
    for name, value in _ATTR.findall(inner[:MAX_TAG_ATTRS]):
        if name.lower() == wanted:
            return html_module.unescape(value.strip("\"'")).strip()
    return ""


def html_text(html: str) -> str:
    """The readable text of an HTML part (never the markup); blank lines collapsed.

    One pass, each character looked at a bounded number of times: an unclosed
    tag or comment ends the text there (as a browser does at the end of its
    input) instead of being retried at the next character, which made
    html.parser quadratic on hostile input (50 KB of ``<a `` took 30 s).
    """
    html = html[:MAX_HTML_INPUT]
    out: list[str] = []
    links: list[str] = []
    i, n = 0, len(html)
    while i < n:
        lt = html.find("<", i)
        chunk = html[i:] if lt < 0 else html[i:lt]
        if chunk:
            out.append(html_module.unescape(chunk))
        if lt < 0:
            break
        if html.startswith("<!--", lt):
            end = html.find("-->", lt + 4)
            if end < 0:
                break
            i = end + 3
            continue
        gt = html.find(">", lt + 1)
        if gt < 0:
            break  # an unclosed tag at the end: dropped
        inner, i = html[lt + 1 : gt], gt + 1
        name = _NAME.match(inner)
        if inner[:1] in "!?" or name is None:
            if name is None and inner[:1] not in "!?":
                out.append(html_module.unescape(html[lt:i]))  # "a < b > c": text
            continue
        tag, closing = name.group(1).lower(), inner.startswith("/")
        if tag in _END_OF and not closing:
            closed = _END_OF[tag].search(html, i)
            if closed is None:
                break
            # After "</script>"; at "<body" (which ends a head), so the body is read.
            i = closed.end() if closed.group(0)[1:2] == "/" else closed.start()
        elif tag in _BREAK:
            out.append("\n")
        elif tag == "a":
            if closing:
                href = links.pop() if links else ""
                if href:
                    out.append(f" <{href}>")
            else:
                links.append(_attr(inner, "href"))
        elif tag == "img" and not closing:
            alt = _attr(inner, "alt")
            if alt:
                out.append(f"[image: {alt}]")
    text = "".join(out).replace("\xa0", " ")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def preview(message: bytes, every_field: bool = False) -> Preview:
    """The fields, the first text body (plain preferred, else HTML as text), the attachments."""
    result = Preview()
    head, _body = split_entity(message)
    result.fields = header_fields(head, every_field)
    plain: str | None = None
    html: str | None = None
    stack: list[tuple[bytes, int]] = [(message, 0)]
    seen = 0
    while stack:
        entity, depth = stack.pop()
        seen += 1
        if seen > MAX_PARTS or depth > MAX_DEPTH:
            result.cut = True
            break
        head, body = split_entity(entity)
        mime = head_fields(head)
        kind = mime.types[0] if mime.types else "text/plain"
        encoding = mime.encodings[0] if mime.encodings else ""
        if kind.startswith("multipart/") and mime.boundaries:
            parts = body_parts(body, mime.boundaries[0])
            if parts is not None:
                stack.extend((part, depth + 1) for part in reversed(parts))
                continue
        names = [n for n in mime.names if "=?" not in n] or list(mime.names)
        name = decode_words(names[-1]) if names else ""
        attached = bool(name) or bool(_DISPOSITION.search(head))
        if not attached and kind == "text/plain" and plain is None:
            plain = _decode_text(decode_body(body, encoding), _charset(head))
        elif not attached and kind == "text/html" and html is None:
            html = _decode_text(decode_body(body, encoding)[:MAX_HTML_INPUT], _charset(head))
        elif attached or not kind.startswith(("text/", "multipart/")):
            result.attachments.append(
                Attachment(shown(name) or "(no name)", shown(kind), _size(body, encoding))
            )
    if plain is not None:
        text = plain
    elif html is not None:
        text, result.from_html = html_text(html), True
    else:
        text = ""
    if len(text) > MAX_TEXT:
        text, result.cut = text[:MAX_TEXT], True
    result.text = _text_lines(text)
    return result
