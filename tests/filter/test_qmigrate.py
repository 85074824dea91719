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

import pytest

from devstack.ports import LOOPBACK, free_port
from filter import cli, qmigrate
from filter.qdir import DirectoryStore
from filter.qindex import AllowList, Ledger
from filter.quarantine import Entry, QuarantineError, new_id

T0 = datetime(2026, 11, 20, 12, 0).timestamp()


def _entry(**fields: object) -> Entry:
    entry = Entry(new_id(), "spam", "why", "a@example.net", ["b@example.com"], T0, 10)
    for name, value in fields.items():
        setattr(entry, name, value)
    return entry


# Rows from the directory's metadata


def test_a_release_record_keeps_its_time_and_fields() -> None:
    """released_at is the record's time; the record goes whole, texts made storable."""
    record: dict[str, object] = {
        "when": "2026-11-20 12:00:00", "at": T0 + 5, "to": "b@example.com", "reply": "250 ok",
        "by": "unix:root\0", "from": "local", "confirmed": True, "token": "ab12",
    }  # fmt: skip
    released_at, stored = qmigrate.release_columns(_entry(releases=[record])) or (0.0, {})
    assert T0 + 5 == released_at
    assert {**record, "by": "unix:root\ufffd"} == stored


def test_an_old_release_record_is_still_a_release() -> None:
    """A record without a time takes it from "when"; one with neither is released at 0,
    never NULL (NULL would let it be released again); an entry never released has none."""
    old = _entry(releases=[{"when": "2026-11-01 10:00:00", "to": "b@example.com", "reply": ""}])
    assert datetime(2026, 11, 1, 10).timestamp() == (qmigrate.release_columns(old) or (0,))[0]
    odd = _entry(releases=[{"when": "yesterday"}])
    assert (0.0, {"when": "yesterday"}) == qmigrate.release_columns(odd)
    assert qmigrate.release_columns(_entry()) is None


def test_requests_become_rows_in_their_order() -> None:
    """Each request one row (id, at, by, address, note); a time that is not a number is 0."""
    entry = _entry(
        requests=[
            {"at": T0, "by": "alice@example.com", "from": "203.0.113.5", "note": "mine\ud800"},
            {"at": "soon", "by": "bob@example.com"},
        ]
    )
    assert [
        (entry.id, T0, "alice@example.com", "203.0.113.5", "mine\ufffd"),
        (entry.id, 0.0, "bob@example.com", "", ""),
    ] == qmigrate.request_rows(entry)


def test_entries_that_cannot_be_trusted_are_skipped_with_their_reason(tmp_path: Path) -> None:
    """Bad metadata and a symlinked message file are reported to on_skip and left out; a name
    whose files went away since the listing is dropped silently."""
    store = DirectoryStore(tmp_path / "q")
    good = _entry()
    store.add(good, b"Subject: hi\r\n\r\n")
    linked = _entry()
    store.add(linked, b"Subject: hi\r\n\r\n")
    (tmp_path / "q" / f"{linked.id}.eml").unlink()
    (tmp_path / "q" / f"{linked.id}.eml").symlink_to("/etc/passwd")
    (tmp_path / "q" / "00aa.json").write_text("{}")
    skipped: list[QuarantineError] = []
    names = [*store.files.names(), "00bb"]
    assert [good] == qmigrate.trusted(store.files, names, skipped.append)
    assert ["00aa: bad metadata", f"{linked.id}: message file is a symbolic link"] == sorted(
        str(e).split(" (")[0].split(";")[0] for e in skipped
    )
    store.close()


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
    """spent(), marks() and holds() give every nonce, mark and hold key once, in key order."""
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
    for n in range(3):
        ledger.record_hold(f"key{n}", f"{n:04x}")
    assert [f"key{n}" for n in range(3)] == [key for key, _id, _at in ledger.holds(batch=2)]
    ledger.close()


def test_a_report_sums_up_as_the_command_prints_it() -> None:
    """The four counts, as the command prints them; done counts every entry dealt with."""
    report = qmigrate.Report(copied=998, already=1, skipped=2, failed=3)
    assert "998 copied, 1 already there, 2 skipped, 3 failed" == report.summary()
    assert 1004 == report.done


# The command's refusals


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration naming a directory store with one entry, auditing to stderr."""
    store = DirectoryStore(tmp_path / "q")
    store.add(_entry(), b"Subject: hi\r\n\r\n")
    store.close()
    path = tmp_path / "filter.toml"
    path.write_text(f'[quarantine]\ndirectory = "{tmp_path / "q"}"\naudit_log = "stderr"\n')
    return path


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql://u:secret@db.example.com/q", "--to: no password in the URL"),
        ("mysql://u@db.example.com/q", "--to: must be"),
        ("", "--to: a postgresql:// URL is needed"),
    ],
)
def test_a_bad_url_is_a_configuration_error(
    config: Path, capsys: pytest.CaptureFixture[str], url: str, said: str
) -> None:
    """--to is checked as [quarantine] store is: 78, naming --to, before anything is read."""
    assert cli.EX_CONFIG == cli.main(
        ["quarantine", "--config", str(config), "migrate", "--to", url]
    )
    err = capsys.readouterr().err
    assert said in err
    assert "secret" not in err


def test_an_unreadable_password_file_is_a_configuration_error(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[quarantine] password_file is where the password comes from: missing, 78."""
    with config.open("a") as f:
        f.write(f'password_file = "{tmp_path / "nope"}"\n')
    url = "postgresql://u@db.example.com/q"
    assert cli.EX_CONFIG == cli.main(
        ["quarantine", "--config", str(config), "migrate", "--to", url]
    )
    assert "cannot read the database password" in capsys.readouterr().err


def test_no_quarantine_directory_is_nothing_to_migrate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory that does not exist (a wrong --config?): 1, saying so, nothing created."""
    path = tmp_path / "filter.toml"
    path.write_text(f'[quarantine]\ndirectory = "{tmp_path / "none"}"\naudit_log = "stderr"\n')
    url = "postgresql://u@db.example.com/q"
    assert 1 == cli.main(["quarantine", "--config", str(path), "migrate", "--to", url])
    assert "no quarantine directory; nothing to migrate" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_database_that_does_not_answer_is_75(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nobody listening at --to: 75 (EX_TEMPFAIL: run it again later), audited as failed."""
    url = f"postgresql://u@{LOOPBACK}:{free_port()}/q"
    assert cli.EX_TEMPFAIL == cli.main(
        ["quarantine", "--config", str(config), "migrate", "--to", url]
    )
    err = capsys.readouterr().err
    assert "quarantine database: connection" in err
    assert "run it again to go on" in err
    assert "action=migrate" in err
    assert "result=failed" in err


def test_db_upgrade_takes_the_database_from_url(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--url stands for [quarantine] store (the directory's config, before a migration),
    checked the same way: a password in it is 78; nobody listening is 75."""
    upgrade = ["db", "upgrade", "--config", str(config), "--url"]
    assert cli.EX_CONFIG == cli.main([*upgrade, "postgresql://u:pw@db.example.com/q"])
    assert "no password in the URL" in capsys.readouterr().err
    assert cli.EX_TEMPFAIL == cli.main([*upgrade, f"postgresql://u@{LOOPBACK}:{free_port()}/q"])
