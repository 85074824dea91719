"""Delivery status notifications (RFC 3464) for recipients the downstream refused.

This module owns building the bounce the filter sends when Postfix's
re-injection listener refuses some recipients of a message it accepted for
others: by then the filter has told nobody anything, and answering the whole
message with 5xx would bounce the recipients that were delivered, so the
refused ones are reported to the sender in a DSN of our own (what amavisd-new
does).  Pure: bytes in, bytes out.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Mapping

from filter.headers import split
from filter.smtp_out import Reply

MAX_RETURNED_HEADER = 64 * 1024


def build(
    *,
    reporting_mta: str,
    sender: str,
    failed: Mapping[str, Reply],
    original: bytes,
    queue_id: str = "",
) -> bytes:
    """A multipart/report DSN to ``sender`` listing ``failed`` recipients and their replies.

    Only the original header block is returned (``text/rfc822-headers``), so the
    bounce carries no content back to a possibly forged sender.
    """
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    date = email.utils.formatdate(localtime=True)
    lines = "".join(f"  <{rcpt}>: {reply}\r\n" for rcpt, reply in failed.items())
    per_rcpt = "".join(
        f"\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\n"
        f"Status: {_status(reply)}\r\nDiagnostic-Code: smtp; {reply}\r\n"
        for rcpt, reply in failed.items()
    )
    header = split(original)[0][:MAX_RETURNED_HEADER]
    text = (
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
        f"To: <{sender}>\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{secrets.token_hex(10)}@{reporting_mta}>\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at host {reporting_mta}.\r\n\r\n"
        f"Your message could not be delivered to the following recipients:\r\n\r\n"
        f"{lines}\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {reporting_mta}\r\n"
        f"{'X-Queue-ID: ' + queue_id + chr(13) + chr(10) if queue_id else ''}"
        f"Arrival-Date: {date}\r\n"
        f"{per_rcpt}\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n"
    ).encode("utf-8", "replace")
    return text + header + f"\r\n--{boundary}--\r\n".encode()


def _status(reply: Reply) -> str:
    """The enhanced status code from the reply text, or one derived from the reply code."""
    first = reply.text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return first
    return f"{reply.code // 100}.0.0"
