"""saslimap: check SMTP AUTH passwords by logging in to an IMAP server.

The daemon speaks the Cyrus saslauthd protocol on a Unix socket (so Postfix
and ``testsaslauthd`` use it unchanged); the same check is usable from Python::

    from saslimap import Verdict, Verifier

    async with Verifier.from_url("imaps://imap.example.com", ca_file="/etc/ssl/ca.pem") as v:
        result = await v.verify("alice@example.com", password, service="smtp")
        if result.verdict is Verdict.OK: ...
"""

from __future__ import annotations

from mailgate.imap import BackendUnavailable, LoginResult
from saslimap.api import Verifier
from saslimap.config import Config, ConfigError, ImapTarget, load, parse_imap_url
from saslimap.service import Result, Verdict

__all__ = [
    "BackendUnavailable",
    "Config",
    "ConfigError",
    "ImapTarget",
    "LoginResult",
    "Result",
    "Verdict",
    "Verifier",
    "load",
    "parse_imap_url",
]
