"""mail-filter learn against a real Dovecot (messages APPENDed to spam/ham) and a real spamd,
or a real sa-learn on a Bayes database of the test's own."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.daemons import _toml
from devstack.dovecot import Dovecot
from devstack.spamd import Spamd
from devstack.tls import TlsFiles

pytestmark = pytest.mark.integration

ADMIN, ADMIN_PW = "mailgateway@example.com", "admin pw 'quoted' {3}"
# A second admin whose password LOGIN could only send as a literal: non-ASCII,
# spaces, both kinds of quote, a backslash and IMAP literal syntax.
HARD_ADMIN, HARD_PW = "learner@example.com", "pässwörd \"dq\" 'sq' back\\slash {3} 密码"


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


def message(kind: str, n: int, lines: int = 1) -> bytes:
    words = "\r\n".join(
        " ".join(f"{kind}word{n}x{i}" for i in range(line * 40, line * 40 + 40))
        for line in range(lines)
    )
    return (
        f"From: someone{n}@{kind}.test\r\nTo: user@example.com\r\nSubject: {kind} number {n}\r\n"
        f"Message-ID: <{kind}-{n}@test>\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\n\r\n"
        f"{words}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def setup(workroot: Path, tls: TlsFiles) -> Iterator[LearnSetup]:
    """Module-private daemons (tests change the mailbox and stop Dovecot)."""
    root = workroot / "learn"
    dovecot = Dovecot(root / "dovecot", {ADMIN: ADMIN_PW, HARD_ADMIN: HARD_PW}, tls=tls)
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
                # DEBUG, so the test below also shows no level reveals the password.
                "logging": {"level": "debug"},
            },
            ("spamd", "learn", "logging"),
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
    plain = base64.b64encode(f"\0{ADMIN}\0{ADMIN_PW}".encode()).decode()
    assert "DEBUG filter.learn" in first.stderr  # [logging] level is honoured
    for secret in (ADMIN_PW, plain):
        assert secret not in first.stderr + second.stderr


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


def test_admin_with_a_non_ascii_quoted_password_logs_in(setup: LearnSetup) -> None:
    """learn logs in through the core IMAP session with a password LOGIN would mangle."""
    config = setup.config.parent / "hard.toml"
    (setup.config.parent / "hard-pw").write_text(HARD_PW + "\n")
    config.write_text(
        _toml(
            {
                "spamd": {"address": f"127.0.0.1:{setup.spamd.port}"},
                "learn": {
                    "imap_url": setup.dovecot.imap_url("imap"),
                    "ca_file": str(setup.dovecot.ca_file),
                    "username": HARD_ADMIN,
                    "password_file": str(setup.config.parent / "hard-pw"),
                    "state_file": str(setup.config.parent / "hard-state.json"),
                },
                "logging": {"level": "debug"},
            },
            ("spamd", "learn", "logging"),
        )
    )
    setup.dovecot.append_message(HARD_ADMIN, "spam", message("spam", 900))
    setup.dovecot.append_message(HARD_ADMIN, "ham", message("ham", 900))
    run = subprocess.run(
        [str(Path(sys.executable).parent / "mail-filter"), "learn", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 0 == run.returncode, run.stderr
    assert "learn: spam=1 ham=1" in run.stderr
    assert HARD_PW not in run.stderr


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_core_mailbox_logs_in_by_either_mechanism(setup: LearnSetup, mechanism: str) -> None:
    """AUTHENTICATE PLAIN and LOGIN (the password as a literal) both open the mailbox."""
    from mailgate.imap import ImapSettings
    from mailgate.mailbox import open_mailbox

    settings = ImapSettings.from_url(
        setup.dovecot.imap_url("imaps"), setup.dovecot.ca_file, mechanism=mechanism
    )
    box = open_mailbox(settings, HARD_ADMIN, HARD_PW)
    try:
        assert b"UIDVALIDITY" in box.select_folder("spam")
    finally:
        box.logout()


def test_wrong_admin_password_is_a_clear_error_without_the_password(
    setup: LearnSetup,
) -> None:
    """A refused login is an 'auth' error whose text never carries the password."""
    from mailgate.imap import BackendUnavailable, ImapSettings
    from mailgate.mailbox import open_mailbox

    settings = ImapSettings.from_url(setup.dovecot.imap_url("imaps"), setup.dovecot.ca_file)
    wrong = HARD_PW + "x"
    with pytest.raises(BackendUnavailable) as caught:
        open_mailbox(settings, HARD_ADMIN, wrong)
    assert "auth" == caught.value.kind
    assert wrong not in str(caught.value)


def test_big_messages_come_in_parts_and_one_too_big_is_skipped(
    setup: LearnSetup, tmp_path: Path
) -> None:
    """Dovecot's RFC822.SIZE is what its literals bring: parts fit max_response exactly."""
    import dataclasses

    from filter.config import LearnConfig
    from filter.learn import Learner, State, connect

    lines = {"a": 1300, "b": 1300, "c": 2300, "d": 1}  # about 690 bytes each
    sent = {k: message("spam", 2000 + n, lines=m) for n, (k, m) in enumerate(lines.items())}
    # a and b fit max_response alone, not together; c never fits.
    assert [True, True, True] == [
        850_000 < len(sent["a"]) < 1_000_000, len(sent["a"]) + len(sent["b"]) > 1024 * 1024,
        len(sent["c"]) > 1024 * 1024,
    ]  # fmt: skip
    for body in sent.values():
        setup.dovecot.append_message(HARD_ADMIN, "bigspam", body)
    setup.dovecot.append_message(HARD_ADMIN, "bigham", message("ham", 2000))
    cfg = dataclasses.replace(
        LearnConfig(), imap_url=setup.dovecot.imap_url("imaps"), ca_file=setup.dovecot.ca_file,
        username=HARD_ADMIN, password=HARD_PW, spam_folder="bigspam", ham_folder="bigham",
        state_file=tmp_path / "state.json", max_response=1024 * 1024, run_timeout=60,
    )  # fmt: skip
    taught: list[bytes] = []

    def teach(body: bytes, klass: str, forget: bool) -> str:
        taught.append(body)
        return "learned"

    learner = Learner(cfg, teach)
    box = connect(cfg, learner.deadline)
    try:
        box.select_folder("bigspam")
        reported = box.fetch([1, 2, 3, 4], [b"RFC822.SIZE"])
        assert [len(b) for b in sent.values()] == [reported[u][b"RFC822.SIZE"] for u in range(1, 5)]
        totals = learner.run(box)
    finally:
        box.logout()
    assert [sent["a"], sent["b"], sent["d"]] == taught[:3]
    assert (1, 0, []) == (totals.too_big, totals.failed, totals.skipped_folders)
    assert 4 == State.load(cfg.state_file).folders["bigspam"].last_uid


def test_imap_down_is_a_clear_error_and_keeps_the_state(setup: LearnSetup) -> None:
    """With the IMAP server stopped: non-zero exit, a clear message, state untouched."""
    before = setup.state.read_bytes()
    setup.dovecot.stop()
    run = setup.run()
    assert 1 == run.returncode
    assert "learn failed: IMAP" in run.stderr
    assert before == setup.state.read_bytes()
    assert not list(setup.state.parent.glob(".*"))  # no half-written temporary file left


# -- method = "sa-learn" ------------------------------------------------------

# "0.000          0          3          0  non-token data: nspam"
_MAGIC = re.compile(r"^\S+\s+\S+\s+(\d+)\s+\S+\s+non-token data: (nspam|nham)\s*$", re.M)


@dataclass
class SaLearnSetup:
    """Dovecot with the admin mailbox and a config teaching sa-learn on a Bayes path of ours."""

    dovecot: Dovecot
    config: Path
    dbpath: Path
    env: dict[str, str]  # HOME in the test's directory: sa-learn creates ~/.spamassassin

    def run(self) -> subprocess.CompletedProcess[str]:
        script = str(Path(sys.executable).parent / "mail-filter")
        return subprocess.run(
            [script, "learn", "--config", str(self.config)],
            capture_output=True, text=True, timeout=120, check=False, env=self.env,
        )  # fmt: skip

    def add(self, folder: str, message: bytes) -> None:
        self.dovecot.append_message(ADMIN, folder, message)

    def learned_counts(self) -> tuple[int, int]:
        """(nspam, nham) in the Bayes database, from ``sa-learn --dump magic``."""
        dump = subprocess.run(
            ["sa-learn", "--dbpath", str(self.dbpath), "--dump", "magic"],
            capture_output=True, text=True, timeout=60, check=True, env=self.env,
        )  # fmt: skip
        counts = {name: int(value) for value, name in _MAGIC.findall(dump.stdout)}
        return (counts["nspam"], counts["nham"])


@pytest.fixture(scope="module")
def sa_setup(
    workroot: Path, tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SaLearnSetup]:
    """A Dovecot of its own (no spamd: sa-learn writes the Bayes files directly)."""
    root = workroot / "salearn"
    dovecot = Dovecot(root / "dovecot", {ADMIN: ADMIN_PW}, tls=tls)
    dovecot.start()
    (root / "pw").write_text(ADMIN_PW + "\n")
    tmp = tmp_path_factory.mktemp("salearn")
    (tmp / "home").mkdir()
    dbpath = tmp / "bayes" / "bayes"
    dbpath.parent.mkdir()
    config = root / "filter.toml"
    config.write_text(
        _toml(
            {
                "learn": {
                    "imap_url": dovecot.imap_url("imaps"),
                    "ca_file": str(tls.ca_cert),
                    "username": ADMIN,
                    "password_file": str(root / "pw"),
                    "state_file": str(tmp / "state" / "learn.json"),
                    "method": "sa-learn",
                    "sa_learn_dbpath": str(dbpath),
                    "batch_size": 2,
                },
            },
            ("learn",),
        )
    )
    yield SaLearnSetup(dovecot, config, dbpath, {**os.environ, "HOME": str(tmp / "home")})
    dovecot.stop()


def test_sa_learn_learns_each_message_once(sa_setup: SaLearnSetup) -> None:
    """With method = "sa-learn", new messages land in the Bayes database at dbpath, once."""
    for n in range(3):
        sa_setup.add("spam", message("spam", n))
    for n in range(2):
        sa_setup.add("ham", message("ham", n))
    first = sa_setup.run()
    assert 0 == first.returncode, first.stderr
    assert "learn: spam=3 ham=2 relearned=0 already=0 failed=0" in first.stderr
    assert (3, 2) == sa_setup.learned_counts()
    second = sa_setup.run()
    assert 0 == second.returncode, second.stderr
    assert "learn: spam=0 ham=0 relearned=0 already=0 failed=0" in second.stderr
    assert (3, 2) == sa_setup.learned_counts()


def test_sa_learn_relearns_a_message_moved_from_spam_to_ham(sa_setup: SaLearnSetup) -> None:
    """A spam message moved to ham is forgotten as spam and learned as ham by sa-learn."""
    doveadm = ["doveadm", "-c", str(sa_setup.dovecot.config_path)]
    subprocess.run(
        [*doveadm, "move", "-u", ADMIN, "ham", "mailbox", "spam", "header", "Message-ID",
         "<spam-0@test>"],
        check=True, timeout=30,
    )  # fmt: skip
    run = sa_setup.run()
    assert 0 == run.returncode, run.stderr
    assert "learn: spam=0 ham=1 relearned=1 already=0 failed=0" in run.stderr
    assert (2, 3) == sa_setup.learned_counts()


def test_sa_learn_takes_a_message_over_its_default_size_limit(sa_setup: SaLearnSetup) -> None:
    """A ham message over sa-learn's default 500 KB --max-size is learned, as TELL does."""
    big = message("ham", 50, lines=1000)
    assert len(big) > 600_000
    sa_setup.add("ham", big)
    run = sa_setup.run()
    assert 0 == run.returncode, run.stderr
    assert "learn: spam=0 ham=1 relearned=0 already=0 failed=0" in run.stderr
    assert (2, 4) == sa_setup.learned_counts()
