"""The migration's source side and its command's refusals, without a database.

What :mod:`filter.qmigrate` reads from a directory store and how it turns it
into rows (release records, requests), the SQLite readers it walks the allow
list and the digest's ledger with, and the ``quarantine migrate`` command's
exit codes for what it refuses before copying anything.  The copying itself is
tested against a real PostgreSQL: tests/integration/filter/test_qmigrate.py.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from filter.qindex import AllowList, Ledger

T0 = datetime(2026, 11, 20, 12, 0).timestamp()


# The SQLite readers a migration walks


def test_the_allow_list_is_read_whole_a_batch_at_a_time(tmp_path: Path) -> None:
    """every() gives each entry once, by recipient and sender, across batch boundaries."""
    allow = AllowList(tmp_path / "allow.sqlite3")
    pairs = [(f"u{i % 3}@example.com", f"s{i}@example.net") for i in range(7)]
    for rcpt, sender in pairs:
        allow.add(rcpt, sender, "unix:root", now=T0)
    assert sorted(pairs) == [(a.recipient, a.sender) for a in allow.every(batch=2)]
    assert 7 == len(list(allow.every(batch=7)))
    allow.close()


def test_the_ledger_is_read_whole_a_batch_at_a_time(tmp_path: Path) -> None:
    """spent() and marks() give every nonce and every mark once, in key order."""
    ledger = Ledger(tmp_path / "digest.sqlite3")
    nonces = [os.urandom(16) for _ in range(5)]
    for nonce in nonces:
        assert ledger.spend(nonce, T0 + 86400, now=T0)
    ledger.mark("alice@example.com", [(f"{i:04x}", T0 + i) for i in range(4)], T0 + 60)
    ledger.mark("bob@example.com", [("0001", T0 + 1)], T0 + 90)
    assert [(n, T0 + 86400) for n in sorted(nonces)] == list(ledger.spent(batch=2))
    assert [
        *[("alice@example.com", f"{i:04x}", T0 + i, T0 + 60) for i in range(4)],
        ("bob@example.com", "0001", T0 + 1, T0 + 90),
    ] == list(ledger.marks(batch=2))
    ledger.close()
