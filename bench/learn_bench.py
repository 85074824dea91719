"""``mail-filter learn`` on a large admin folder: wall time, messages/s and peak memory.

This module owns a benchmark that PRINTS figures (it asserts nothing).  It
starts a throw-away Dovecot (devstack) with the admin mailbox and fills it:

- ``spam-small`` with ``--small`` messages (default 100) over IMAP APPEND on
  TLS, one command per message (imapclient has no MULTIAPPEND), timed;
- ``spam`` with ``--messages`` messages (default 10,000) by writing Maildir
  files directly (the instance stores mail as ``maildir:``, which takes
  outside writers: a file in ``tmp/`` renamed into ``cur/``), then one
  ``doveadm mailbox status`` so Dovecot indexes them before anything is
  measured;
- ``ham`` empty (learn needs both folders).

Phase 1 runs the real console script ``mail-filter learn --dry-run`` (IMAPS,
certificate verified, default batch_size 100) ``--runs`` times per folder,
small and large interleaved, each in a subprocess reaped with ``wait4`` for
its own rusage: wall time (start of the process to its exit, interpreter
start-up included), messages/s over that wall time, learn's own seconds
(from its summary line), CPU seconds and peak RSS of the learn process, and
how many messages it fetched (the ``spam=`` count of its summary line).  The
two folder sizes side by side show whether memory grows with the folder.
(``wait4``'s rusage covers the process and the children it reaped: in the
sa-learn phase CPU and peak RSS are sa-learn's, not learn's alone.)

Phase 2 (``--tell N``, default 1,000; 0 skips) teaches a real spamd
(devstack, ``--allow-tell``, 2 children) with TELL: one non-dry run over a
folder of N messages, then a second run that finds nothing new; reports
messages/s and Bayes' nspam afterwards.  Phase 3 (``--sa-learn N``, default
20; 0 skips) does the same with ``method = "sa-learn"`` on a Bayes path of
its own (one sa-learn run per fetched batch).

Everything listens on 127.0.0.1; every learn run is bounded by ``--timeout``
and killed after it; Dovecot and spamd are stopped on exit, error, Ctrl-C or
SIGTERM.  On a shared machine take the benchmark lock:

    flock /tmp/bench.lock .venv/bin/python -m bench.learn_bench [--messages N] [--small N]
        [--runs N] [--tell N] [--sa-learn N] [--timeout S] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imapclient import IMAPClient

from bench.auth_bench import _loadavg, _source_state
from bench.common import no_interrupts, run_main, say
from bench.filter_bench import _table, _version
from devstack.daemons import _toml
from devstack.dovecot import Dovecot
from devstack.proc import run_checked
from devstack.spamd import Spamd
from devstack.tls import make_tls

ADMIN, ADMIN_PW = "mailgateway@example.com", "learn bench pw"
SMALL_FOLDER, LARGE_FOLDER, HAM_FOLDER = "spam-small", "spam", "ham"
TELL_FOLDER, SA_LEARN_FOLDER = "tell", "salearn"
WORDS_PER_MESSAGE = 120
"""About 1 KB per message: small spam as it arrives in an admin folder."""
VOCABULARY = [f"{a}{b}{c}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti")
              for b in ("bar", "dex", "fin", "gol", "hum", "jet", "kor", "lim")
              for c in ("a", "e", "i", "o", "u", "an", "el", "is")]  # fmt: skip
_SUMMARY = re.compile(
    r"learn: spam=(\d+) ham=(\d+) relearned=(\d+) already=(\d+) failed=(\d+)"
    r" skipped_folders=(\S+) seconds=([\d.]+)"
)


def make_message(seq: int, tag: str) -> bytes:
    """A distinct small message (own Message-ID and words, so Bayes learns each one)."""
    rng = random.Random(f"{tag}-{seq}")
    lines, line = [], []
    for word in rng.choices(VOCABULARY, k=WORDS_PER_MESSAGE):
        line.append(word)
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    body = "\r\n".join([*lines, f"ref {tag}{seq}"])
    return (
        f"From: sender{seq}@{tag}.test\r\nTo: user@example.com\r\n"
        f"Subject: {tag} offer {seq}\r\nMessage-ID: <{tag}-{seq}@learnbench.test>\r\n"
        f"Date: Sat, 28 Nov 2026 00:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


# -- filling the mailbox --------------------------------------------------------------------


def create_folder(dovecot: Dovecot, folder: str) -> Path:
    """Create and subscribe ``folder`` in the admin mailbox; its Maildir++ directory."""
    run_checked(
        ["doveadm", "-c", str(dovecot.config_path), "mailbox", "create", "-s", "-u", ADMIN, folder],
        what="doveadm mailbox create",
    )
    local, _, domain = ADMIN.partition("@")
    return dovecot.mail_dir / domain / local / f".{folder}"


def message_count(dovecot: Dovecot, folder: str) -> int:
    """Messages Dovecot sees in ``folder`` (syncs its index with the Maildir first)."""
    done = run_checked(
        ["doveadm", "-c", str(dovecot.config_path), "mailbox", "status", "-u", ADMIN,
         "messages", folder],
        what="doveadm mailbox status",
    )  # fmt: skip
    return int(done.stdout.decode().split("messages=")[1].split()[0])


def fill_imap(dovecot: Dovecot, folder: str, count: int, tag: str) -> float:
    """APPEND ``count`` messages over IMAPS; the seconds it took."""
    create_folder(dovecot, folder)
    port = dovecot.imaps_port
    if port is None:
        raise RuntimeError("Dovecot started without TLS")
    client = IMAPClient(
        dovecot.host, port=port, ssl=True, ssl_context=dovecot.client_context(), timeout=30
    )
    try:
        client.login(ADMIN, ADMIN_PW)
        began = time.monotonic()
        for seq in range(count):
            client.append(folder, make_message(seq, tag))
        return time.monotonic() - began
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def fill_maildir(dovecot: Dovecot, folder: str, count: int, tag: str) -> tuple[float, float]:
    """Write ``count`` messages as Maildir files, then let Dovecot index them.

    Returns (seconds writing, seconds indexing).  Each file is written in
    ``tmp/`` and renamed into ``cur/`` with an empty ``:2,`` flag list (seen by
    nobody yet), owned like the folder (Dovecot's mail uid), mode 0600 as
    Dovecot itself writes them.  ``S=`` and ``W=`` carry the size (CRLF lines:
    the virtual size is the same), so Dovecot need not stat or read them.
    """
    directory = create_folder(dovecot, folder)
    owner = directory.stat()
    began = time.monotonic()
    stamp, pid = int(time.time()), os.getpid()
    for seq in range(count):
        data = make_message(seq, tag)
        name = f"{stamp}.M{seq}P{pid}.learnbench,S={len(data)},W={len(data)}"
        temp = directory / "tmp" / name
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, owner.st_uid, owner.st_gid)
        finally:
            os.close(fd)
        os.rename(temp, directory / "cur" / f"{name}:2,")
    written = time.monotonic()
    seen = message_count(dovecot, folder)
    if seen != count:
        raise RuntimeError(f"Dovecot sees {seen} messages in {folder}, {count} were written")
    return written - began, time.monotonic() - written


# -- running learn ----------------------------------------------------------------------------


@dataclass
class LearnRun:
    """One ``mail-filter learn`` process, measured from outside."""

    label: str
    wall: float
    cpu: float
    peak_rss_kib: int
    exit_code: int
    counts: dict[str, int]
    own_seconds: float
    output: str

    @property
    def fetched(self) -> int:
        """Messages counted (dry run) or taught, including "already learned" ones."""
        return self.counts.get("spam", 0) + self.counts.get("ham", 0) + self.counts["already"]


def run_learn(
    label: str,
    config: Path,
    log: Path,
    timeout: float,
    *extra: str,
    env: Mapping[str, str] | None = None,
) -> LearnRun:
    """Run the console script; wall time, rusage of that process alone, its summary line."""
    argv = [str(Path(sys.executable).parent / "mail-filter"), "learn", "--config", str(config)]
    with log.open("wb") as out:
        began = time.monotonic()
        process = subprocess.Popen(
            [*argv, *extra], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=None if env is None else dict(env),
        )  # fmt: skip
    try:
        # wait4 rather than Popen.wait: the rusage of this one child (RUSAGE_CHILDREN
        # would mix in doveadm and every earlier run).  Polled for a deadline.
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                wall = time.monotonic() - began
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"{label}: mail-filter learn still running after {timeout} s")
            time.sleep(0.002)
    finally:
        if process.returncode is None:
            with no_interrupts():
                process.send_signal(signal.SIGKILL)
                process.wait()
    output = log.read_text(errors="replace")
    found = _SUMMARY.search(output)
    if found is None:
        raise RuntimeError(f"{label}: no summary line (exit {process.returncode}):\n{output}")
    spam, ham, relearned, already, failed = (int(v) for v in found.groups()[:5])
    return LearnRun(
        label, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, process.returncode,
        {"spam": spam, "ham": ham, "relearned": relearned, "already": already, "failed": failed},
        float(found.group(7)), output,
    )  # fmt: skip


def write_config(path: Path, learn: Mapping[str, object], spamd_port: int | None = None) -> Path:
    settings: dict[str, Mapping[str, object]] = {"learn": learn}
    if spamd_port is not None:
        settings["spamd"] = {"address": f"127.0.0.1:{spamd_port}"}
    path.write_text(_toml(settings, ("spamd", "learn")), encoding="utf-8")
    return path


# -- report -----------------------------------------------------------------------------------


def _mb(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _dry_rows(label: str, runs: Sequence[LearnRun]) -> tuple[str, ...]:
    walls = [r.wall for r in runs]
    wall = statistics.median(walls)
    fetched = runs[0].fetched
    return (
        label, f"{fetched}", f"{wall:.2f} ({min(walls):.2f}-{max(walls):.2f})",
        f"{fetched / wall:.0f}", f"{statistics.median(r.own_seconds for r in runs):.1f}",
        f"{statistics.median(r.cpu for r in runs):.2f}",
        f"{_mb(max(r.peak_rss_kib for r in runs))}"
        f" ({_mb(min(r.peak_rss_kib for r in runs))}-{_mb(max(r.peak_rss_kib for r in runs))})",
        ",".join(sorted({str(r.exit_code) for r in runs})),
    )  # fmt: skip


def _teach_row(run: LearnRun, bayes: str) -> tuple[str, ...]:
    c = run.counts
    return (
        run.label, f"{c['spam'] + c['ham']}/{c['already']}/{c['failed']}", f"{run.wall:.2f}",
        f"{run.fetched / run.wall:.1f}" if run.fetched else "-",
        f"{run.cpu:.2f}", _mb(run.peak_rss_kib), str(run.exit_code), bayes,
    )  # fmt: skip


# -- orchestration ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    # Short and traversable: Dovecot's sockets live under it, its processes and
    # spamd's children run as other users.
    root = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    root.chmod(0o755)
    began = time.monotonic()
    load_before = _loadavg()
    fills: list[str] = []
    dry: dict[str, list[LearnRun]] = {SMALL_FOLDER: [], LARGE_FOLDER: []}
    teach: list[tuple[LearnRun, str]] = []
    cleanup = contextlib.ExitStack()
    try:
        if not args.keep:
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        tls = make_tls(root / "tls")
        dovecot = Dovecot(root / "dc", {ADMIN: ADMIN_PW}, tls=tls)
        cleanup.callback(dovecot.stop)
        say(f"starting Dovecot in {root} ...")
        dovecot.start()
        (root / "pw").write_text(ADMIN_PW + "\n")
        base = {
            "imap_url": dovecot.imap_url("imaps"), "ca_file": str(tls.ca_cert),
            "username": ADMIN, "password_file": str(root / "pw"),
            "ham_folder": HAM_FOLDER, "timeout": 60.0,
        }  # fmt: skip
        create_folder(dovecot, HAM_FOLDER)

        say(f"APPENDing {args.small} messages to {SMALL_FOLDER} over IMAPS ...")
        seconds = fill_imap(dovecot, SMALL_FOLDER, args.small, "small")
        fills.append(
            f"{SMALL_FOLDER}: {args.small} messages by IMAP APPEND in {seconds:.2f} s"
            f" ({args.small / seconds:.0f}/s)"
        )
        say(f"writing {args.messages} Maildir files to {LARGE_FOLDER} ...")
        written, indexed = fill_maildir(dovecot, LARGE_FOLDER, args.messages, "large")
        fills.append(
            f"{LARGE_FOLDER}: {args.messages} messages as Maildir files in {written:.2f} s"
            f" ({args.messages / written:.0f}/s), Dovecot indexed them in {indexed:.2f} s"
        )
        configs = {
            folder: write_config(
                root / f"dry-{folder}.toml",
                {**base, "spam_folder": folder, "state_file": str(root / f"state-{folder}.json")},
            )
            for folder in dry
        }
        for n in range(args.runs):
            for folder, config in configs.items():
                say(f"  learn --dry-run on {folder} (run {n + 1}/{args.runs}) ...")
                result = run_learn(
                    folder, config, root / f"dry-{folder}-{n}.log", args.timeout, "--dry-run"
                )
                dry[folder].append(result)
                say(f"    {result.fetched} messages in {result.wall:.2f} s,"
                    f" peak RSS {_mb(result.peak_rss_kib)} MB")  # fmt: skip

        if args.tell:
            spamd = Spamd(root / "spamd", allow_tell=True)
            cleanup.callback(spamd.stop)
            say("starting spamd --allow-tell ...")
            spamd.start()
            written, indexed = fill_maildir(dovecot, TELL_FOLDER, args.tell, "tell")
            config = write_config(
                root / "tell.toml",
                {**base, "spam_folder": TELL_FOLDER, "state_file": str(root / "state-tell.json"),
                 "method": "spamd"},
                spamd.port,
            )  # fmt: skip
            for n, label in enumerate(("spamd TELL", "spamd TELL, nothing new")):
                say(f"  learn ({label}, {args.tell} messages in the folder) ...")
                result = run_learn(label, config, root / f"tell-{n}.log", args.timeout)
                nspam, nham = spamd.learned_counts()
                teach.append((result, f"nspam={nspam} nham={nham}"))

        if args.sa_learn:
            written, indexed = fill_maildir(dovecot, SA_LEARN_FOLDER, args.sa_learn, "salearn")
            (root / "home").mkdir()
            (root / "bayes").mkdir()
            config = write_config(
                root / "salearn.toml",
                {**base, "spam_folder": SA_LEARN_FOLDER,
                 "state_file": str(root / "state-salearn.json"), "method": "sa-learn",
                 "sa_learn_dbpath": str(root / "bayes" / "bayes")},
            )  # fmt: skip
            env = {**os.environ, "HOME": str(root / "home")}  # sa-learn creates ~/.spamassassin
            say(f"  learn (sa-learn, {args.sa_learn} messages) ...")
            result = run_learn("sa-learn", config, root / "salearn.log", args.timeout, env=env)
            dump = subprocess.run(
                ["sa-learn", "--dbpath", str(root / "bayes" / "bayes"), "--dump", "magic"],
                capture_output=True, text=True, timeout=60, check=False, env=env,
            )  # fmt: skip
            magic = dict(
                (name, value)
                for value, name in re.findall(r"\s(\d+)\s+\S+\s+non-token data: (nspam|nham)",
                                              dump.stdout)
            )  # fmt: skip
            teach.append((result, f"nspam={magic.get('nspam', '?')} nham={magic.get('nham', '?')}"))
    finally:
        with no_interrupts():
            say("stopping everything ...")
            cleanup.close()

    meta = [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"),
        ("Dovecot", f"{_version(['dovecot', '--version'])}, maildir, IMAPS (TLS verified)"),
        ("messages", f"about {len(make_message(0, 'large'))} bytes each, all distinct"),
        ("learn", f"batch_size 100 (default), source {_source_state()}"),
        ("load average", f"{load_before} before, {_loadavg()} after"),
        ("wall time", f"{time.monotonic() - began:.0f} s"),
    ]
    lines = ["# mail-filter learn: large folder", ""]
    lines += [f"- {k}: {v}" for k, v in meta]
    lines += ["", "Filling the mailbox:", "", *(f"- {f}" for f in fills)]
    lines += [
        "",
        f"## learn --dry-run ({args.runs} runs per folder, interleaved; median (min-max))",
        "",
        "wall: process start to exit, interpreter start-up included; msgs/s over wall;"
        " learn s: its own summary figure; RSS: peak of the learn process (ru_maxrss).",
        "",
    ]
    header = ("folder", "fetched", "wall s", "msgs/s", "learn s", "CPU s", "peak RSS MB", "exit")
    rows = [_dry_rows(folder, runs) for folder, runs in dry.items()]
    lines += _table(header, rows)
    if teach:
        lines += [
            "",
            "## teaching Bayes (one run each, non-dry)",
            "",
            "CPU s and peak RSS include the processes learn ran (the sa-learn row: sa-learn's).",
            "",
        ]
        header = ("method", "taught/already/failed", "wall s", "msgs/s", "CPU s",
                  "peak RSS MB", "exit", "Bayes after")  # fmt: skip
        lines += _table(header, [_teach_row(r, bayes) for r, bayes in teach])
    print("\n".join(lines), flush=True)
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.learn_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=_positive, default=10_000, help="large folder size")
    parser.add_argument("--small", type=_positive, default=100, help="small folder size")
    parser.add_argument("--runs", type=_positive, default=3, help="dry runs per folder")
    parser.add_argument("--tell", type=_count, default=1_000, help="messages taught to spamd")
    parser.add_argument("--sa-learn", type=_count, default=20, help="messages taught by sa-learn")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds before a learn run is killed"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs) on exit"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    return run_main(_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
