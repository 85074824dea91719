"""What a check ends in: the verdict, the result, and the one log line about it.

This module owns the values that cross from the policy to the listeners
(:class:`Verdict`, :class:`Result`) and the text of the one log line per check,
which the decision order (:mod:`saslimap.service`), the replay memo
(:mod:`saslimap.replay`) and the IMAP step (:mod:`saslimap.inflight`) all write.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Literal

# Every check's line comes from this one logger, whichever module writes it, so an
# operator filters on one name (it was service.py's own before the split).
log = logging.getLogger("saslimap.service")

Kind = Literal["ok", "no", "tempfail", "ratelimited", "bad_request"]


class Verdict(enum.Enum):
    """What the client is told: yes, no, or try again later."""

    OK = "ok"
    NO = "no"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class Result:
    """The outcome of one check.

    ``reason`` is a short human text safe to send back to the client and to log;
    ``user`` is the effective IMAP user name (empty when the request was refused
    before one could be formed); ``backend_seconds`` is the IMAP round trip, or
    ``None`` when the backend was not asked; ``source`` says where the answer
    came from (``imap``, ``cache``, ``negative-cache``, ``stale-cache``,
    ``budget``, ``ip-limit``, ``policy``).  ``detail`` is for the log only.
    """

    verdict: Verdict
    reason: str
    user: str = ""
    backend_seconds: float | None = None
    error_kind: str | None = None
    detail: str = ""
    kind: Kind | None = None
    source: str = "policy"

    @property
    def label(self) -> Kind:
        """The ``result`` label of the requests metric."""
        if self.kind is not None:
            return self.kind
        return (
            "ok"
            if self.verdict is Verdict.OK
            else "no"
            if self.verdict is Verdict.NO
            else "tempfail"
        )


def shown(value: str | bytes) -> str:
    """A value made safe for a log line: control and invisible characters escaped, quotes too."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text  # the common case, on the hot path of every log line
    return "".join(
        c
        if c.isprintable() and c not in '"\\'
        else f"\\x{ord(c):02x}"
        if ord(c) < 256
        else f"\\u{ord(c):04x}"
        for c in text
    )


def line(result: Result, login: str | bytes, service: str | bytes, realm: str | bytes) -> str:
    """The one log line of a check."""
    backend_ms = "-" if result.backend_seconds is None else f"{result.backend_seconds * 1000:.1f}"
    detail = f' detail="{shown(result.detail)}"' if result.detail else ""
    return (
        f'auth user="{shown(result.user or login)}" service="{shown(service)}" '
        f'realm="{shown(realm)}" result={result.label} source={result.source} '
        f'reason="{result.reason}" backend_ms={backend_ms}{detail}'
    )
