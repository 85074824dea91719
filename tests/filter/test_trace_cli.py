"""``mail-filter trace``: rotated and compressed logs, the journal, the quarantine, escaping,
exit statuses; over the lines the real gateway wrote."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from filter import cli, trace_cli
from filter.maillog import MAX_LINE, YearGuess, parse_line
from filter.qdir import DirectoryStore
from filter.qstore import Actor
from filter.quarantine import Entry
from filter.trace_cli import OverlongLine, bounded_lines, rotation_order
from tests.filter.trace_samples import AUDIT_LOG, FILTER_LOG, MAILLOG

SPAM_HELD = "20261204-210051-3fc94dabf8"
WRITTEN = datetime(2026, 12, 5).timestamp()  # the logs' mtime: their year is 2026
ROOT = Path(__file__).resolve().parents[2]


class Run:
    """``mail-filter trace`` in-process: exit status, stdout, stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = cli.main(["trace", *args])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """The command, with no /var/log/mail.log, no default config and no journalctl."""
    monkeypatch.setattr(trace_cli, "DEFAULT_LOG", Path("/nonexistent/mail.log"))
    monkeypatch.setattr(trace_cli, "DEFAULT_CONFIG", Path("/nonexistent/filter.toml"))
    monkeypatch.setattr(trace_cli, "JOURNALCTL", "/nonexistent/journalctl")
    return Run(capsys)


def write(path: Path, text: str, opener: Callable[..., io.IOBase] | None = None) -> Path:
    """``text`` into ``path`` (compressed by ``opener``), last written at WRITTEN."""
    data = text.encode()
    if opener is None:
        path.write_bytes(data)
    else:
        with opener(path, "wb") as out:
            out.write(data)
    os.utime(path, (WRITTEN, WRITTEN))
    return path


def logs(tmp_path: Path) -> list[str]:
    """The gateway's three logs as files: ``--log`` arguments."""
    return [
        "--log", str(write(tmp_path / "maillog", MAILLOG)),
        "--log", str(write(tmp_path / "filter.log", FILTER_LOG)),
        "--log", str(write(tmp_path / "audit.log", AUDIT_LOG)),
    ]  # fmt: skip


# -- reading -----------------------------------------------------------------------------------


def test_rotations_are_read_oldest_first() -> None:
    """logrotate's numbers (higher is older) and dateext dates; the live file last."""
    names = [
        "mail.log", "mail.log.1", "mail.log.2.gz", "mail.log.10.xz", "mail.log-20261201.gz",
        "mail.log-20261130", "mail.err", "mail.log.old", "mail.logger", "syslog",
    ]  # fmt: skip
    assert [
        "mail.log-20261130", "mail.log-20261201.gz", "mail.log.10.xz", "mail.log.2.gz",
        "mail.log.1", "mail.log",
    ] == rotation_order("mail.log", names)  # fmt: skip


def test_an_overlong_line_is_skipped_piece_by_piece() -> None:
    """A line over the limit is never held whole; the lines around it are kept."""
    stream = io.BytesIO(b"one\n" + b"x" * (3 * MAX_LINE) + b"\ntwo\nthree")
    assert [b"one\n", b"two\n", b"three"] == list(bounded_lines(stream))


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open], ids=["gz", "bz2", "xz"])
def test_compressed_rotations_are_read_and_joined_with_the_live_file(
    run: Run, tmp_path: Path, opener: Callable[..., io.IOBase]
) -> None:
    """A message whose first queue id is in mail.log.2.gz, its copy in mail.log.1 and its
    last line in mail.log: one timeline (the name does not matter, the first bytes do)."""
    lines = MAILLOG.splitlines(keepends=True)
    split = next(i for i, line in enumerate(lines) if "25154230806: client=" in line)
    last = next(i for i, line in enumerate(lines) if "25154230806: removed" in line)
    write(tmp_path / "mail.log.2.gz", "".join(lines[:split]), opener)
    write(tmp_path / "mail.log.1", "".join(lines[split:last]))
    write(tmp_path / "mail.log", "".join(lines[last:]))
    code, out, _ = run("--log", str(tmp_path / "mail.log"), "054DD2307FC")
    assert 0 == code
    assert out.startswith("message 054DD2307FC -> 25154230806")
    assert "delivered <friend@example.org>" in out


def test_a_rotation_last_written_before_since_is_not_opened(run: Run, tmp_path: Path) -> None:
    """--since: an older rotation is skipped by its mtime, unread."""
    write(tmp_path / "mail.log", "")
    old = write(tmp_path / "mail.log.1", MAILLOG)
    os.utime(old, (WRITTEN - 30 * 86400, WRITTEN - 30 * 86400))
    code, _, err = run("--log", str(tmp_path / "mail.log"), "--since", "2026-12-04", "@example.com")
    assert 1 == code
    assert "mail.log.1" not in err


def test_a_damaged_rotation_is_said_and_the_rest_read(run: Run, tmp_path: Path) -> None:
    """A truncated gzip: a note on stderr, the other files still traced."""
    whole = gzip.compress(MAILLOG.encode())
    (tmp_path / "mail.log.1.gz").write_bytes(whole[: len(whole) // 2])
    write(tmp_path / "mail.log", MAILLOG)
    code, out, err = run("--log", str(tmp_path / "mail.log"), "054DD2307FC")
    assert 0 == code
    assert "mail.log.1.gz: unreadable after" in err
    assert 1 == out.count("message 054DD2307FC")


@pytest.mark.parametrize(
    ("name", "compress"),
    [("mail.log.2.gz", gzip.compress), ("mail.log.2.bz2", bz2.compress),
     ("mail.log.2.xz", lzma.compress)],
    ids=["gz", "bz2", "xz"],
)  # fmt: skip
def test_a_corrupt_rotation_is_a_problem_not_a_traceback(
    run: Run, tmp_path: Path, name: str, compress: Callable[[bytes], bytes]
) -> None:
    """Damaged compressed data (zlib.error, bz2's OSError, LZMAError): a note, the rest read."""
    line = b"Dec  4 20:10:16 gw postfix/qmgr[1]: ABCDEF123: removed\n"
    data = bytearray(compress(line * 1000))
    for i in range(20, 60):
        data[i] ^= 0x55  # inside the compressed data, past the header
    (tmp_path / name).write_bytes(bytes(data))
    write(tmp_path / "mail.log", MAILLOG)
    code, out, err = run("--log", str(tmp_path / "mail.log"), "054DD2307FC")
    assert 0 == code
    assert f"{name}: unreadable after" in err
    assert 1 == out.count("message 054DD2307FC")


def test_a_line_without_end_is_given_up_after_the_skip_limit() -> None:
    """Past ``skip`` bytes of one line the source is given up, not read to its end."""
    stream = io.BytesIO(b"one\n" + b"\0" * (20 * MAX_LINE))
    lines = bounded_lines(stream, skip=4 * MAX_LINE)
    assert b"one\n" == next(lines)
    with pytest.raises(OverlongLine):
        next(lines)
    assert stream.tell() < 8 * MAX_LINE


def test_what_is_not_a_regular_file_is_said_and_the_rest_read(run: Run, tmp_path: Path) -> None:
    """A directory or a FIFO given as --log: a note; the other logs still traced."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    code, out, err = run(
        "--log", str(tmp_path / "fifo"), "--log", str(tmp_path / "dir"), *logs(tmp_path),
        "054DD2307FC",
    )  # fmt: skip
    assert 0 == code
    assert "fifo: not a regular file, not read" in err
    assert "dir: not a regular file, not read" in err
    assert 1 == out.count("message 054DD2307FC")


def test_a_symlink_to_a_log_is_read(run: Run, tmp_path: Path) -> None:
    """Symlinks to rotated logs are usual: followed, not refused."""
    target = write(tmp_path / "real.log", MAILLOG)
    (tmp_path / "mail.log").symlink_to(target)
    code, out, _ = run("--log", str(tmp_path / "mail.log"), "054DD2307FC")
    assert (0, 1) == (code, out.count("message 054DD2307FC"))


def _trace_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``mail-filter trace`` in a child, killed after 15 s (a hang fails the test, not CI)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    code = "import sys; from filter import cli; sys.exit(cli.main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "trace", *args], capture_output=True, text=True,
        timeout=15, env=env, check=False,
    )  # fmt: skip


def test_log_dev_zero_ends_with_a_note() -> None:
    """``--log /dev/zero`` (endless, no newline) is refused, not read forever."""
    done = _trace_process("--log", "/dev/zero", "ABCDEF123")
    assert 66 == done.returncode
    assert "/dev/zero: not a regular file" in done.stderr


def test_log_fifo_without_writer_does_not_block(tmp_path: Path) -> None:
    """A FIFO with no writer is refused, not waited on in ``open``."""
    os.mkfifo(tmp_path / "mail.log")
    done = _trace_process("--log", str(tmp_path / "mail.log"), "ABCDEF123")
    assert 66 == done.returncode
    assert "mail.log: not a regular file" in done.stderr


def test_december_lines_rotated_in_january_are_last_years(run: Run, tmp_path: Path) -> None:
    """The year a syslog date lacks comes from the file's mtime."""
    log = write(
        tmp_path / "mail.log",
        "Dec 31 23:59:59 gw postfix/smtpd[1]: 1111111111: client=a[192.0.2.1]\n"
        "Jan  1 00:00:01 gw postfix/qmgr[2]: 1111111111: from=<s@example.net>, size=1, nrcpt=1\n",
    )
    january = datetime(2027, 1, 2).timestamp()
    os.utime(log, (january, january))
    code, out, _ = run("--log", str(log), "1111111111")
    assert 0 == code
    assert "  2026-12-31 23:59:59  1111111111  received from a[192.0.2.1]" in out


# -- what is printed ---------------------------------------------------------------------------


def test_the_timeline_of_a_message_through_the_filter(run: Run, tmp_path: Path) -> None:
    """By Message-ID: received, authenticated, scanned, re-injected, delivered."""
    code, out, _ = run(*logs(tmp_path), "<d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net>")
    assert 0 == code
    assert [
        "message 054DD2307FC -> 25154230806"
        "  Message-ID <d575ca8f06224d0c80a2b66dfcf56b3e@test.example.net>",
        "  from <alice@example.com> to <friend@example.org>, 356 bytes",
        "  2026-12-04 21:00:51  054DD2307FC  received from localhost[127.0.0.1], authenticated"
        " as alice@example.com (PLAIN)",
        "  2026-12-04 21:00:51  filter       scanned: clean, score 1.100, re-injected as"
        " 25154230806 (id e713e3f9b979)",
        "  2026-12-04 21:00:51  25154230806  re-injected by the filter (was 054DD2307FC),"
        " from localhost[127.0.0.1]",
        "  2026-12-04 21:00:51  25154230806  delivered <friend@example.org> via"
        " 127.0.0.1[127.0.0.1]:43463: 250 2.0.0 Ok: queued as SINK1",
        "  => <friend@example.org>: delivered via 127.0.0.1[127.0.0.1]:43463",
    ] == out.splitlines()


def test_what_a_sender_wrote_never_reaches_the_terminal_raw(run: Run, tmp_path: Path) -> None:
    """ESC, CSI, bidi overrides in an address or a reply are printed as escapes."""
    hostile = "evil\x1b]0;pwned\x07\u202e@example.net"
    log = write(
        tmp_path / "mail.log",
        f"Dec  4 10:00:00 gw postfix/qmgr[2]: 1111111111: from=<{hostile}>, size=1, nrcpt=1\n"
        "Dec  4 10:00:01 gw postfix/smtp[3]: 1111111111: to=<u@example.com>, relay=x[192.0.2.9]:25,"
        " delay=1, delays=0/0/0/1, dsn=5.0.0, status=bounced (550 \x9b31m no)\n",
    )
    code, out, _ = run("--log", str(log), "1111111111")
    assert 0 == code
    assert out.replace("\n", "").isprintable()  # no ESC, CSI (\\x9b) or bidi override
    assert "evil\\x1b]0;pwned\\x07\\u202e@example.net" in out
    assert "550 \\x9b31m no" in out


def test_json_is_one_ascii_object_per_message(run: Run, tmp_path: Path) -> None:
    """--json: a line each, parseable, with escapes for anything not ASCII."""
    code, out, _ = run(*logs(tmp_path), "--json", "--from", "sender@example.net")
    assert 0 == code
    found = [json.loads(line) for line in out.splitlines()]
    assert 7 == len(found)  # the released copy is a message of its own without the quarantine
    assert out.isascii()
    held = next(t for t in found if SPAM_HELD in t["quarantine_ids"])
    assert {"user@example.com"} == set(held["outcome"])


def test_lines_shows_each_steps_log_line(run: Run, tmp_path: Path) -> None:
    """--lines: under each step, the line it was read from."""
    code, out, _ = run(*logs(tmp_path), "--lines", "06CC62307FE")
    assert 0 == code
    assert "      | 06CC62307FE: client=localhost[127.0.0.1]" in out.splitlines()


# -- exit statuses -----------------------------------------------------------------------------


def test_nothing_matched_says_what_was_read(run: Run, tmp_path: Path) -> None:
    """Exit 1, and stderr names the files, the line count and the span of time."""
    code, out, err = run(*logs(tmp_path), "nobody@example.com")
    assert (1, "") == (code, out)
    assert "nothing matched in" in err
    assert "2026-12-04 21:00:50 to 2026-12-04 21:00:58" in err


def test_no_readable_log_is_66(run: Run, tmp_path: Path) -> None:
    """A --log that does not exist (and no journal): EX_NOINPUT."""
    code, _, err = run("--log", str(tmp_path / "missing.log"), "x@example.com")
    assert 66 == code
    assert "missing.log: No such file or directory" in err


def test_no_query_is_a_usage_error(run: Run) -> None:
    """Nothing to look for: 2, as argparse's errors."""
    assert 2 == run()[0]


def test_a_query_of_only_space_is_a_usage_error(run: Run) -> None:
    """A blank QUERY is refused like none (2), not searched for as a queue id."""
    code, _, err = run("   ")
    assert 2 == code
    assert "give a QUERY" in err


def test_a_bad_since_is_a_usage_error(run: Run) -> None:
    """--since must be a date or 12h/7d."""
    code, _, err = run("--since", "yesterday", "x@example.com")
    assert 2 == code
    assert "--since 'yesterday'" in err


def test_a_bad_config_is_78(run: Run, tmp_path: Path) -> None:
    """--config names a file with an unknown key: EX_CONFIG."""
    bad = tmp_path / "filter.toml"
    bad.write_text("[quarantine]\nnonsense = 1\n")
    assert 78 == run("--config", str(bad), "x@example.com")[0]


# -- the quarantine ----------------------------------------------------------------------------


def _held_and_released(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spam of the samples, held and released as the gateway did (at 21:00:54)."""
    store = DirectoryStore(directory)
    entry = Entry(
        id=SPAM_HELD, category="spam", reason="score 1001.100", mail_from="sender@example.net",
        recipients=["user@example.com"], received_at=datetime(2026, 12, 4, 21, 0, 51).timestamp(),
        size=409, score=1001.1, queue_id="064692307FD", subject="spam",
    )  # fmt: skip
    store.add(entry, b"Subject: spam\r\n\r\nXJS*C4JDBQADN1\r\n")
    with monkeypatch.context() as clock:
        released = datetime(2026, 12, 4, 21, 0, 54, 541000).timestamp()
        clock.setattr("filter.qdir.time.time", lambda: released)
        claim = store.claim_release(SPAM_HELD, Actor("unix:root", "local"))
    store.confirm_release(claim, ["user@example.com"], "250 2.0.0 Ok: queued as 8B511230922")
    store.close()


def test_a_quarantine_id_follows_the_release_to_its_delivery(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry's record of the release names the copy's queue id: its delivery joins."""
    _held_and_released(tmp_path / "q", monkeypatch)
    config = tmp_path / "filter.toml"
    config.write_text(f'[quarantine]\ndirectory = "{tmp_path / "q"}"\n')
    code, out, _ = run("--config", str(config), *logs(tmp_path), SPAM_HELD)
    assert 0 == code
    assert out.startswith("message 064692307FD -> 8B511230922")
    assert "quarantine   held as 20261204-210051-3fc94dabf8: spam, score 1001.100" in out
    assert "released by unix:root from local to user@example.com: 250 2.0.0 Ok: queued as" in out
    assert out.rstrip().endswith("=> <user@example.com>: delivered via 127.0.0.1[127.0.0.1]:43463")


def test_a_quarantine_id_whose_lines_are_gone_is_the_entry(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No log line left for it: the quarantine still answers (exit 0)."""
    _held_and_released(tmp_path / "q", monkeypatch)
    config = tmp_path / "filter.toml"
    config.write_text(f'[quarantine]\ndirectory = "{tmp_path / "q"}"\n')
    empty = write(tmp_path / "mail.log", "")
    code, out, _ = run("--config", str(config), "--log", str(empty), SPAM_HELD)
    assert 0 == code
    assert "held as 20261204-210051-3fc94dabf8" in out


def test_an_unreadable_quarantine_entry_is_said(run: Run, tmp_path: Path) -> None:
    """The trace goes on from the logs; stderr says why the entry is missing."""
    config = tmp_path / "filter.toml"
    config.write_text(f'[quarantine]\ndirectory = "{write(tmp_path / "file", "")}"\n')
    code, out, err = run("--config", str(config), *logs(tmp_path), SPAM_HELD)
    assert 0 == code
    assert f"quarantine: {SPAM_HELD}: metadata unreadable (Not a directory)" in err
    assert "064692307FD" in out


# -- the journal -------------------------------------------------------------------------------


def _fake_journalctl(tmp_path: Path, records: list[str], code: int = 0, said: str = "") -> Path:
    """A journalctl that writes its arguments to ``argv`` and prints ``records``."""
    (tmp_path / "records").write_text("".join(r + "\n" for r in records))
    script = tmp_path / "journalctl"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {tmp_path / "argv"}\n'
        f"cat {tmp_path / 'records'}\n"
        f'printf "%s" "{said}" >&2\n'
        f"exit {code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _records(text: str, identifier: str) -> list[str]:
    """The lines of a log as journalctl -o json would print them."""
    records = []
    for raw in text.splitlines():
        line = parse_line(raw, YearGuess(WRITTEN))
        if line is None:
            continue
        records.append(
            json.dumps(
                {
                    "__REALTIME_TIMESTAMP": str(int(line.at * 1e6)),
                    "SYSLOG_IDENTIFIER": line.program if identifier == "-" else identifier,
                    "_PID": str(line.pid),
                    "_HOSTNAME": "gw",
                    "MESSAGE": line.text if identifier == "-" else raw,
                }
            )
        )
    return records


def test_the_journal_with_postfix_and_the_filters_unit(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--journal: the mail facility or the filter's unit, in JSON; the filter's lines keep
    their own prefix inside the journal's record."""
    records = sorted(
        _records(MAILLOG, "-") + _records(FILTER_LOG, "mail-filter"),
        key=lambda r: int(json.loads(r)["__REALTIME_TIMESTAMP"]),
    )
    monkeypatch.setattr(trace_cli, "JOURNALCTL", str(_fake_journalctl(tmp_path, records)))
    code, out, _ = run("--journal", "--since", "2026-12-04 21:00", "06CC62307FE")
    assert 0 == code
    assert "scanned: virus, Eicar-Test-Signature-Anywhere.UNOFFICIAL" in out
    argv = (tmp_path / "argv").read_text().splitlines()
    since = int(datetime(2026, 12, 4, 21, 0).timestamp() - trace_cli.MARGIN)
    assert [
        "--output=json", "--no-pager", "--quiet", f"--since=@{since}",
        "SYSLOG_FACILITY=2", "+", "_SYSTEMD_UNIT=mail-filter.service",
    ] == argv  # fmt: skip


def test_beside_mail_log_the_journal_adds_only_the_filters_lines(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default on an rsyslog host: mail.log for Postfix, the unit's journal for the filter."""
    monkeypatch.setattr(trace_cli, "DEFAULT_LOG", write(tmp_path / "mail.log", MAILLOG))
    script = _fake_journalctl(tmp_path, _records(FILTER_LOG, "mail-filter"))
    monkeypatch.setattr(trace_cli, "JOURNALCTL", str(script))
    code, out, _ = run("054DD2307FC")
    assert 0 == code
    assert "scanned: clean" in out
    assert "_SYSTEMD_UNIT=mail-filter.service" == (tmp_path / "argv").read_text().splitlines()[-1]
    assert "SYSLOG_FACILITY=2" not in (tmp_path / "argv").read_text()


def test_a_failing_journalctl_is_said(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its exit status and what it said on stderr (escaped) end up on stderr."""
    script = _fake_journalctl(tmp_path, [], code=1, said="No journal files were found.")
    monkeypatch.setattr(trace_cli, "JOURNALCTL", str(script))
    code, _, err = run("--journal", "x@example.com")
    assert 1 == code
    assert "journalctl exited 1: No journal files were found." in err


def test_an_empty_journal_hints_at_permissions(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """journalctl shows a user only their own lines, silently: say so."""
    monkeypatch.setattr(trace_cli, "JOURNALCTL", str(_fake_journalctl(tmp_path, [])))
    _, _, err = run("--journal", "x@example.com")
    assert "adm and systemd-journal" in err


def test_no_journalctl_and_no_mail_log_is_66(run: Run) -> None:
    """Neither source exists: EX_NOINPUT, naming journalctl."""
    code, _, err = run("x@example.com")
    assert 66 == code
    assert "journalctl" in err
