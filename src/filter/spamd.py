"""The spamd client: a sans-I/O codec for the SPAMC/1.5 protocol and a thin asyncio client.

The codec owns the framing spamd(1p) speaks: a request line (``SYMBOLS
SPAMC/1.5``), headers (``Content-length`` exact, optional ``User``; for learning
``Message-class``, ``Set`` and ``Remove``), a blank line, the message; a response
line ``SPAMD/1.x <code> <text>``, headers (``Spam: True ; 15.2 / 5.0``,
``DidSet``, ``DidRemove``), a blank line and, for SYMBOLS, the comma-separated
names of the rules that hit.  A non-zero code is an error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mailgate.config import Address
from mailgate.errors import BackendError

MAX_RESPONSE = 256 * 1024


class SpamdError(BackendError):
    """spamd could not be asked or gave no usable answer; ``kind`` labels a metric."""


@dataclass(frozen=True)
class SpamReport:
    """SpamAssassin's opinion: score, its own threshold, and the rules that hit."""

    is_spam: bool
    score: float
    threshold: float
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Response:
    """A decoded spamd response."""

    code: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def encode_request(
    command: str, message: bytes, user: str = "", extra: dict[str, str] | None = None
) -> bytes:
    """A complete request; ``Content-length`` counts the message bytes exactly."""
    lines = [f"{command} SPAMC/1.5", f"Content-length: {len(message)}"]
    if user:
        lines.append(f"User: {user}")
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + message


def encode_tell(message: bytes, klass: str, *, remove: bool = False, user: str = "") -> bytes:
    """A TELL request that learns ``message`` as ``spam`` or ``ham`` (or forgets it)."""
    if klass not in ("spam", "ham"):
        raise ValueError("message class must be spam or ham")
    headers = {"Message-class": klass, ("Remove" if remove else "Set"): "local"}
    return encode_request("TELL", message, user, headers)


def parse_response(raw: bytes) -> Response:
    """Decode a whole response (spamd closes the connection after it)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, body = raw, b""
    lines = head.decode("ascii", "replace").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("SPAMD/") or not parts[1].isdigit():
        raise SpamdError("protocol", f"bad response line {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, body)


def parse_report(response: Response) -> SpamReport:
    """The ``Spam:`` header and SYMBOLS body of a successful CHECK/SYMBOLS response."""
    if response.code != 0:
        raise SpamdError("protocol", f"spamd error {response.code} {response.message[:80]}")
    spam = response.headers.get("spam")
    if spam is None:
        raise SpamdError("protocol", "no Spam: header in the response")
    try:
        flag, _, scores = spam.partition(";")
        score_text, _, threshold_text = scores.partition("/")
        score, threshold = float(score_text), float(threshold_text)
    except ValueError:
        raise SpamdError("protocol", f"unreadable Spam: header {spam[:80]!r}") from None
    rules = tuple(
        r.strip() for r in response.body.decode("ascii", "replace").split(",") if r.strip()
    )
    return SpamReport(flag.strip().lower() in ("true", "yes"), score, threshold, rules)


class SpamdClient:
    """Asks spamd over TCP or a Unix socket, with a deadline and a concurrency limit."""

    def __init__(
        self, address: str, *, timeout: float = 60.0, concurrency: int = 4, user: str = ""
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.user = user
        self._slots = asyncio.Semaphore(concurrency)
        self._where = Address.parse(address, "spamd address").where()  # ValueError if bad

    async def exchange(self, request: bytes) -> Response:
        """Send one request and read the whole response."""
        kind, where = self._where
        try:
            async with self._slots, asyncio.timeout(self.timeout):
                if kind == "unix":
                    reader, writer = await asyncio.open_unix_connection(str(where))
                else:
                    reader, writer = await asyncio.open_connection(kind, where)
                try:
                    writer.write(request)
                    await writer.drain()
                    raw = await reader.read(MAX_RESPONSE + 1)
                    while chunk := await reader.read(MAX_RESPONSE):
                        raw += chunk
                        if len(raw) > MAX_RESPONSE:
                            raise SpamdError("protocol", "response too long")
                finally:
                    writer.close()
        except TimeoutError:
            raise SpamdError("timeout", f"no answer within {self.timeout:g} s") from None
        except OSError as err:
            raise SpamdError("connect", f"{self.address}: {err.strerror or err}") from None
        if not raw:
            raise SpamdError("protocol", "connection closed without a response")
        return parse_response(raw)

    async def check(self, message: bytes) -> SpamReport:
        """Score a message and list the rules that hit (SYMBOLS)."""
        return parse_report(await self.exchange(encode_request("SYMBOLS", message, self.user)))
