"""Checking a portal login's password by asking saslimap, and nothing else.

This module owns the login check: one saslauthd request on saslimap's mux
socket (:mod:`mailgate.saslauthd`) under the service name ``portal``, with the
browser's address as the client address, so saslimap's cache, failure budgets
(per user and per address) and audit lines apply to the portal as to SMTP
AUTH.  The password goes into that request and nowhere else: it is neither
kept, logged, nor put in an exception.

Three outcomes, never confused: :attr:`Verdict.OK`, :attr:`Verdict.WRONG`
(saslimap said ``NO``), and :attr:`Verdict.UNAVAILABLE` for everything else:
saslimap closing without a reply (its "try later": the IMAP server is down or
the budget holds the check), ``NO temporary failure`` (saslimap with
``on_backend_error = "no"``), no socket, a reply that is not saslauthd's, or
the deadline passing.  The page then says "try again later", never "wrong
password".
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Protocol

from mailgate import saslauthd

log = logging.getLogger(__name__)

SERVICE = b"portal"
# saslauthd's field limit (MAX_REQ_LEN): longer values could never be checked.
MAX_FIELD = 256


class Verdict(enum.Enum):
    """What a login check decided."""

    OK = "ok"
    WRONG = "wrong"
    UNAVAILABLE = "unavailable"


class Checker(Protocol):
    """Checks a login name and password (saslimap, or a fake in tests)."""

    async def check(self, login: str, password: str, client: str) -> Verdict:
        """The verdict for ``login`` and ``password`` from the browser at ``client``."""
        ...


def reply_verdict(reply: bytes) -> Verdict:
    """saslimap's reply text as a verdict: OK, a temporary failure, or a wrong password."""
    if saslauthd.reply_is_ok(reply):
        return Verdict.OK
    # saslimap with on_backend_error = "no" says NO for an outage, with this prefix.
    if reply.startswith(b"NO temporary failure"):
        return Verdict.UNAVAILABLE
    return Verdict.WRONG


class Saslimap:
    """Asks saslimap's saslauthd mux socket, within a deadline."""

    def __init__(self, socket_path: Path, seconds: float) -> None:
        self.socket_path = socket_path
        self.seconds = seconds

    async def check(self, login: str, password: str, client: str) -> Verdict:
        """One request; anything but OK or a plain NO is UNAVAILABLE."""
        try:
            reply = await saslauthd.check(
                self.socket_path, login.encode(), password.encode(), SERVICE,
                seconds=self.seconds, client_addr=client.encode("ascii", "replace")[:MAX_FIELD],
            )  # fmt: skip
        except saslauthd.NoReply:
            return Verdict.UNAVAILABLE  # saslimap's "try later"
        except TimeoutError:
            log.warning("login check for %r: saslimap did not answer within %g s",
                        login, self.seconds)  # fmt: skip
            return Verdict.UNAVAILABLE
        except saslauthd.ReplyError as err:
            log.warning("login check for %r: %s on %s", login, err, self.socket_path)
            return Verdict.UNAVAILABLE
        except OSError as err:
            log.warning("login check for %r: saslimap's socket %s: %s",
                        login, self.socket_path, err.strerror or err)  # fmt: skip
            return Verdict.UNAVAILABLE
        return reply_verdict(reply)
