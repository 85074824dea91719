"""Faults, floods and hostile input, bounded for the test suite (bench/reliability.py runs
the same scenarios at full size and prints a report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.faults import auth_flood, mail_survives
from devstack.gateway import MailChain
from tests.integration.conftest import HARD, USERS

pytestmark = pytest.mark.integration


def test_no_mail_lost_when_components_die(workroot: Path) -> None:
    """200 messages while the filter is SIGKILLed twice, clamd and spamd are restarted and the
    re-injection target is gone for 3 s: every message is delivered, none lost."""
    with MailChain(workroot / "survive", fast_retry=True) as chain:
        result = mail_survives(chain, 200, kills=2, reinject_down=3.0)
    assert (200, 0) == (result.delivered, result.lost), result
    assert sorted(result.faults) == sorted(["kill", "kill", "clamd", "spamd", "reinject"])


def test_auth_survives_hostile_flood(daemon: SaslimapDaemon) -> None:
    """3,000 hostile requests, 200 idle and 5 slow connections beside 150 real checks: every
    real check right, no hostile one OK, the daemon alive and its memory bounded."""
    real = []
    for n in range(150):
        user = HARD[n % len(HARD)]
        good = n % 5 != 0
        real.append((user, USERS[user] if good else USERS[user] + "!", good))
    assert daemon.proc is not None
    result = auth_flood(daemon.socket_path, daemon.proc.pid, real, hostile=3000, idle=200, slow=5)
    assert (0, 0) == (result.hostile_ok, result.real_wrong), result
    assert daemon.alive()
    assert result.rss_after_kb < result.rss_before_kb + 50 * 1024, result
