"""Every SMTP reply the filter sends Postfix, in one place, and the 451 that stops a message.

This module owns the reply texts (codes and enhanced status codes, RFC 3463)
of the front side (127.0.0.1:10024): the final answer after DATA, the
connection cap, XFORWARD, our own failures.  A template's fields are filled
with ``str.format``.  The rule they encode: 250 only after the downstream
Postfix took the message (or we dropped it on purpose); 554 only when every
recipient rejects it; anything unresolved is a 451, so Postfix keeps the mail.

The texts after the first block are aiosmtpd 1.4's own, repeated by the quick
DATA loop in :mod:`filter.aiosmtpd_shortcuts`, which must answer byte for byte
as aiosmtpd does (``tests/filter/test_server.py`` compares).
"""

from __future__ import annotations

# -- the answer after DATA (filter.service) ---------------------------------------------------
TEMPFAIL = "451 4.3.0 {why} (id={filter_id})"
"""Something we could not resolve (a scanner, the quarantine, the downstream): Postfix retries."""
TIMED_OUT = "451 4.4.7 Filtering took over {limit:g} s, try again later"
REJECTED = "554 5.7.1 Rejected, id={filter_id} - {what}"
"""Every recipient's destiny is reject: Postfix bounces the message."""
DISCARDED = "250 2.7.0 Ok, discarded, id={filter_id}{held} - {what}"
"""Nobody gets the message, on purpose (``{held}``: the quarantine id, if it was held)."""
HELD_AS = ", quarantined as {quarantine_id}"
DELIVERED = "250 2.0.0 Ok, id={filter_id}, from downstream: {downstream}"
"""The downstream Postfix accepted the message (refusals for good went to our DSN)."""
REFUSED_REPORTED = "250 2.0.0 Ok, id={filter_id}, refused downstream, DSN sent: {downstream}"
"""Some recipients' copy was refused for good and reported by our DSN: a 5xx now
would make Postfix bounce a second time, for everybody."""

# -- why a message is deferred (the ``{why}`` of TEMPFAIL) -------------------------------------
NO_QUARANTINE = "Quarantine is not configured"
QUARANTINE_FAILED = "Could not quarantine the message"
VIRUS_SCANNER_DOWN = "Virus scanner unavailable ({kind}), try again later"
VIRUS_SCANNER_FAILED = "Virus scanner could not scan this message, try again later"
SPAM_SCANNER_DOWN = "Spam scanner unavailable ({kind}), try again later"
NOT_HANDED_BACK = "Could not hand the message back to Postfix ({error})"
DOWNSTREAM_DEFERRED = "Downstream: {downstream}"
SOME_DEFERRED = "Downstream deferred some recipients: {downstream}"
DSN_FAILED = "Could not report refused recipients to the sender"

# -- the DSN line of a recipient whose destiny is bounce or reject ----------------------------
BLOCKED_CODE = 554
BLOCKED = "5.7.1 {what}"

# -- the session (filter.server) --------------------------------------------------------------
TOO_MANY_CONNECTIONS = b"421 4.3.2 Too many connections, try again later\r\n"
INTERNAL_ERROR = "451 4.3.0 Internal error in the content filter, try again later"
"""An exception of ours: never aiosmtpd's 500, which would make Postfix bounce the mail."""
XFORWARD_OK = "250 2.0.0 Ok"
XFORWARD_BAD = "501 5.5.4 Bad XFORWARD attribute"
ENVELOPE_OK = "250 OK"
"""MAIL or RCPT accepted: aiosmtpd's own text, as without our hooks."""
SENDER_NOT_UTF8 = "553 5.1.7 Error: sender address is not valid UTF-8"
RECIPIENT_NOT_UTF8 = "553 5.1.3 Error: recipient address is not valid UTF-8"
"""An address that is not valid UTF-8 could never be re-injected (RFC 6531 3.3 allows
UTF-8 only, RFC 3463 X.1.7/X.1.3: bad address syntax): refused for good at once, not
accepted and then deferred at DATA on every retry."""

# -- aiosmtpd 1.4's own DATA replies (filter.aiosmtpd_shortcuts repeats them) ----------------
NEED_RCPT = "503 Error: need RCPT command"
DATA_SYNTAX = "501 Syntax: DATA"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 Error: Too much mail data"
DATA_OK = "250 OK"

# -- our own, in the quick DATA loop ------------------------------------------------------------
SPOOL_FAILED = "451 4.3.0 Could not store the message for scanning ({error}), try again later"
"""Writing a large message to its temporary file failed (a full disk): Postfix keeps it."""


class Tempfail(Exception):
    """Stop processing this message and answer :data:`TEMPFAIL` with this text."""
