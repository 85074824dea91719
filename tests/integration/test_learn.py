"""mail-filter learn against a real Dovecot (messages APPENDed to spam/ham) and a real spamd."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.dovecot import Dovecot
from devstack.saslimapd import _toml
from devstack.spamd import Spamd
from devstack.tls import TlsFiles

pytestmark = pytest.mark.integration

ADMIN, ADMIN_PW = "mailgateway@example.com", "admin pw 'quoted' {3}"


@dataclass
class LearnSetup:
    """Dovecot with the admin mailbox, spamd with --allow-tell, and a config file."""

    dovecot: Dovecot
    spamd: Spamd
    config: Path
    state: Path

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        script = str(Path(sys.executable).parent / "mail-filter")
        return subprocess.run(
            [script, "learn", "--config", str(self.config), *extra],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def add(self, folder: str, message: bytes) -> None:
        self.dovecot.append_message(ADMIN, folder, message)


def message(kind: str, n: int) -> bytes:
    words = " ".join(f"{kind}word{n}x{i}" for i in range(40))
    return (
        f"From: someone{n}@{kind}.test\r\nTo: user@example.com\r\nSubject: {kind} number {n}\r\n"
        f"Message-ID: <{kind}-{n}@test>\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\n\r\n"
        f"{words}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def setup(workroot: Path, tls: TlsFiles) -> Iterator[LearnSetup]:
    """Module-private daemons (tests change the mailbox and stop Dovecot)."""
    root = workroot / "learn"
    dovecot = Dovecot(root / "dovecot", {ADMIN: ADMIN_PW}, tls=tls)
    spamd = Spamd(root / "spamd", allow_tell=True)
    dovecot.start()
    spamd.start()
    (root / "pw").write_text(ADMIN_PW + "\n")
    config = root / "filter.toml"
    state = root / "state" / "learn.json"
    config.write_text(
        _toml(
            {
                "spamd": {"address": f"127.0.0.1:{spamd.port}"},
                "learn": {
                    "imap_url": dovecot.imap_url("imap"),
                    "ca_file": str(tls.ca_cert),
                    "username": ADMIN,
                    "password_file": str(root / "pw"),
                    "state_file": str(state),
                    "batch_size": 3,
                },
            },
            ("spamd", "learn"),
        )
    )
    yield LearnSetup(dovecot, spamd, config, state)
    spamd.stop()
    dovecot.stop()


def test_learns_each_message_once(setup: LearnSetup) -> None:
    """New messages are taught once; a second run learns nothing."""
    for n in range(5):
        setup.add("spam", message("spam", n))
        setup.add("ham", message("ham", n))
    first = setup.run()
    assert 0 == first.returncode, first.stderr
    assert "learn: spam=5 ham=5" in first.stderr
    assert (5, 5) == setup.spamd.learned_counts()
    second = setup.run()
    assert 0 == second.returncode, second.stderr
    assert "learn: spam=0 ham=0" in second.stderr
    assert (5, 5) == setup.spamd.learned_counts()
    assert ADMIN_PW not in first.stderr + second.stderr


def test_dry_run_changes_nothing(setup: LearnSetup) -> None:
    """--dry-run counts new messages but teaches nothing and keeps the state."""
    setup.add("spam", message("spam", 100))
    before = setup.state.read_bytes()
    dry = setup.run("--dry-run")
    assert 0 == dry.returncode, dry.stderr
    assert "spam=1" in dry.stderr
    assert before == setup.state.read_bytes()
    assert 0 == setup.run().returncode
    assert (6, 5) == setup.spamd.learned_counts()


def test_message_moved_to_the_other_folder_is_relearned(setup: LearnSetup) -> None:
    """A ham message later put in spam is forgotten as ham and learned as spam."""
    setup.add("spam", message("ham", 0))
    run = setup.run()
    assert 0 == run.returncode, run.stderr
    assert "relearned=1" in run.stderr
    assert (7, 4) == setup.spamd.learned_counts()


def test_uidvalidity_change_relearns_the_folder_safely(setup: LearnSetup) -> None:
    """A recreated folder (new UIDVALIDITY) is read again; Bayes counts nothing twice."""
    doveadm = ["doveadm", "-c", str(setup.dovecot.config_path)]
    subprocess.run([*doveadm, "mailbox", "delete", "-u", ADMIN, "ham"], check=True, timeout=30)
    subprocess.run(
        [*doveadm, "mailbox", "create", "-s", "-u", ADMIN, "ham"], check=True, timeout=30
    )
    for n in range(1, 5):
        setup.add("ham", message("ham", n))
    run = setup.run()
    assert 0 == run.returncode, run.stderr
    assert "already=4" in run.stderr
    assert (7, 4) == setup.spamd.learned_counts()


def test_imap_down_is_a_clear_error_and_keeps_the_state(setup: LearnSetup) -> None:
    """With the IMAP server stopped: non-zero exit, a clear message, state untouched."""
    before = setup.state.read_bytes()
    setup.dovecot.stop()
    run = setup.run()
    assert 1 == run.returncode
    assert "learn failed: IMAP" in run.stderr
    assert before == setup.state.read_bytes()
    assert not list(setup.state.parent.glob(".*"))  # no half-written temporary file left
