"""The one error root of both daemons, and the error every backend client raises.

Exceptions stop at layer boundaries: a backend client (IMAP, clamd, spamd, the
re-injection SMTP server) raises a :class:`BackendError` whose ``kind`` comes
from a small fixed set, so the caller can label a metric with it and pick an
answer (tempfail, retry) without reading message text.
"""

from __future__ import annotations


class MailgateError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(MailgateError, ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class BackendError(MailgateError):
    """A backend gave no usable answer: unreachable, slow, or it broke its protocol.

    ``kind`` is a short word from the raising client's fixed set (``connect``,
    ``timeout``, ``protocol`` ...), fit for a metric label; ``detail`` is for
    the log and never carries a secret.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
