"""The fail2ban filter matches Postfix's real wrong-password lines, not outage lines."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

FILTER = Path(__file__).resolve().parents[3] / "conf/fail2ban/filter.d/postfix-sasl-imap.conf"
# What fail2ban's common.conf __prefix_line expands to, closely enough for syslog lines
# and Postfix's maillog_file lines ("Nov 28 01:15:02 host postfix/smtpd[123]: ...").
PREFIX = r"\S+\s+\d+\s+[\d:]+\s+\S+\s+postfix(-\w+)?/(?:[^/\[:]+/)*smtpd\[\d+\]:\s+"

# Lines as Postfix 3.7 wrote them in this project's integration tests.
WRONG = (
    "Nov 28 01:15:02 gateway postfix/smtpd[2153]: warning: localhost[127.0.0.1]: "
    "SASL PLAIN authentication failed: authentication failure, sasl_username=alice@example.com"
)
OUTAGE = (
    "Nov 28 01:15:02 gateway postfix/smtpd[2153]: warning: localhost[127.0.0.1]: "
    "SASL PLAIN authentication failed: generic failure"
)


def failregex() -> re.Pattern[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(FILTER)
    raw = parser["Definition"]["failregex"]
    text = raw.replace("%(__prefix_line)s", PREFIX).replace("<HOST>", r"(?P<host>[\w.:]+)")
    return re.compile(text)


def test_wrong_password_line_is_matched_with_the_host() -> None:
    """A real authentication failure bans the client's address."""
    match = failregex().search(WRONG)
    assert match is not None
    assert "127.0.0.1" == match.group("host")


def test_outage_line_is_not_matched() -> None:
    """'generic failure' (IMAP server unavailable, 454) never counts."""
    assert failregex().search(OUTAGE) is None
