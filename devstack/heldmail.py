"""Mail the filter holds: GTUBE spam and EICAR virus messages sent through a gateway.

This module owns what ``make run`` and the portal's browser tests need to have
something in the quarantine by the real path (Postfix, mail-filter, spamd,
clamd, the directory store) rather than by writing entries: the filter
settings that hold spam instead of tagging it, the two test messages every
scanner knows, sending them in at the gateway's door, and waiting until the
quarantine's index lists them (what the portal shows).
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from devstack.clamd import EICAR
from filter.qdir import DirectoryStore
from filter.qstore import Query

# SpamAssassin's test string: scores 1000, far over any kill level.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

# [policy] that holds spam over the kill level (discarded and quarantined, as
# amavisd-new's D_DISCARD with a spam quarantine) instead of tagging and passing
# it: what a site running the portal sets, so users have spam to release.
HOLD_SPAM: dict[str, object] = {
    "quarantine": ["virus", "banned", "unchecked", "spam"],
    "spam_destiny": "discard",
}


def spam(sender: str, recipient: str, subject: str, text: str = "Buy now.") -> bytes:
    """A plain-text message carrying GTUBE after ``text``."""
    message = _message(sender, recipient, subject)
    message.set_content(f"{text}\n\n{GTUBE.decode()}\n")
    return bytes(message)


def virus(sender: str, recipient: str, subject: str, attachment: str = "invoice.com") -> bytes:
    """A short text with the EICAR test file attached as ``attachment``."""
    message = _message(sender, recipient, subject)
    message.set_content("Please find the invoice attached.\n")
    message.add_attachment(
        EICAR, maintype="application", subtype="octet-stream", filename=attachment
    )
    return bytes(message)


def _message(sender: str, recipient: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="heldmail.test")
    return message


def send(smtpd_port: int, sender: str, recipient: str, message: bytes) -> None:
    """Hand one message to the gateway's Postfix on loopback, as an Internet MTA would."""
    with smtplib.SMTP("127.0.0.1", smtpd_port, timeout=30) as smtp:
        smtp.sendmail(sender, [recipient], message)


def wait_held(
    directory: Path,
    count: int,
    timeout: float = 60.0,
    nudge: Callable[[], None] | None = None,
) -> None:
    """Block until the quarantine in ``directory`` lists ``count`` entries (TimeoutError if not).

    ``nudge`` (e.g. a Postfix queue flush) is called every 5 s while waiting: a message
    the filter answered 451 (a scanner slow on a busy machine) is retried by Postfix only
    after its backoff, minutes by default.
    """
    store = DirectoryStore(directory)
    try:
        deadline = time.monotonic() + timeout
        nudged = time.monotonic()
        while (held := store.count(Query())) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{directory}: {held} of {count} messages held after {timeout:g} s"
                )
            if nudge is not None and time.monotonic() - nudged >= 5.0:
                nudge()
                nudged = time.monotonic()
            time.sleep(0.1)
    finally:
        store.close()
