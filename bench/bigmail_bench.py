"""mail-filter's memory with large messages, and its speed with small ones (issue 14 item 6).

This module owns a benchmark that PRINTS figures and the targets with
PASS/MISS next to them (it asserts nothing)::

    smtplib x 8 (20 MB each, at once)  ->  mail-filter  ->  smtp-sink -c
    smtp-source (5 KB, 100 KB)         ->  mail-filter  ->  smtp-sink -c

One ``mail-filter serve`` (the tree on PYTHONPATH, logging at ``info``) with
clamd (test signatures, DisableCache) and spamd off; messages over
``server.spool_threshold`` (``--threshold``, default the configured 1 MiB)
are spooled.  Figures: the filter's resident memory (VmRSS sampled every
20 ms, its peak VmHWM) while eight 20 MB messages go through at once and 3 s
after; then msgs/s and the filter's own CPU per message for 5 KB and 100 KB
messages at concurrency 4, which must not get worse than before (run the same
script with the older tree on PYTHONPATH to compare).

Targets: peak under 120 MB, under 60 MB afterwards.

Run: ``PYTHONPATH=src:. .venv/bin/python -m bench.bigmail_bench [--big N] [--size MB]``
"""

from __future__ import annotations

import argparse
import os
import smtplib
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import say
from bench.filter_bench import Sink
from devstack.clamd import Clamd
from devstack.daemons import FilterDaemon

PEAK_TARGET_MB = 120
AFTER_TARGET_MB = 60
_TICK = os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in kB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def big_message(size: int, n: int) -> bytes:
    """A plain message of ``size`` bytes of 76-character lines (some starting with a dot)."""
    head = (
        f"From: a@example.net\r\nTo: b@example.com\r\nSubject: big {n}\r\n"
        f"Message-ID: <big{n}.{time.time_ns()}@bench>\r\n\r\n"
    ).encode()
    line = b"." + b"%d" % n + b"y" * (73 - len(str(n))) + b"\r\n"
    return head + line * (size // len(line))


def send(port: int, raw: bytes) -> str:
    """One message over SMTP; the final reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as smtp:
        smtp.ehlo("bench.test")
        smtp.mail("a@example.net")
        smtp.rcpt("b@example.com")
        code, text = smtp.data(raw)
        return f"{code} {text.decode(errors='replace')[:60]}"


def big_phase(pid: int, port: int, count: int, size: int) -> tuple[float, float, float, list[str]]:
    """Peak RSS (sampled, MB), VmHWM (MB), RSS 3 s after (MB), and the replies."""
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, status_kb(pid, "VmRSS"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    messages = [big_message(size, n) for n in range(count)]
    with ThreadPoolExecutor(count) as pool:
        replies = list(pool.map(lambda raw: send(port, raw), messages))
    done.set()
    sampler.join()
    del messages
    time.sleep(3)
    return peak / 1024, status_kb(pid, "VmHWM") / 1024, status_kb(pid, "VmRSS") / 1024, replies


def small_phase(pid: int, port: int, size: int, count: int, conc: int) -> tuple[float, float, str]:
    """msgs/s and the filter's CPU ms per message for smtp-source messages of ``size`` bytes."""
    argv = ["smtp-source", "-m", str(count), "-s", str(conc), "-l", str(size),
            "-f", "a@example.net", "-t", "b@example.com", f"127.0.0.1:{port}"]  # fmt: skip
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    proc = subprocess.run(argv, capture_output=True, timeout=600, check=False)
    seconds = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    problem = proc.stderr.decode(errors="replace").strip()[:120] or (
        f"exit {proc.returncode}" if proc.returncode else ""
    )
    return count / seconds, cpu / count * 1000, problem


def main(argv: Sequence[str] | None = None) -> int:
    """Run both phases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--big", type=int, default=8, help="large messages at once (8)")
    parser.add_argument("--size", type=int, default=20, help="their size in MB (20)")
    parser.add_argument("--threshold", type=int, default=None, help="server.spool_threshold")
    parser.add_argument("--small", type=int, default=400, help="5 KB messages (400)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bigbench") as tmp:
        work = Path(tmp)
        sink = Sink(work, "sink")
        sink.start()
        try:
            with Clamd(work / "clamd") as clamd:
                server: dict[str, object] = {"max_message_size": 26214400}
                if args.threshold is not None:
                    server["spool_threshold"] = args.threshold
                daemon = FilterDaemon(
                    work / "filter",
                    {
                        "server": server,
                        "clamd": {"address": clamd.address, "timeout": 120.0},
                        "spamd": {"enabled": False},
                        "reinject": {"address": f"127.0.0.1:{sink.port}", "timeout": 300.0},
                        "quarantine": {"directory": str(work / "quarantine")},
                        "logging": {"level": "info"},
                    },
                )
                daemon.start()
                try:
                    assert daemon.proc is not None
                    pid = daemon.proc.pid
                    say(f"filter started: {status_kb(pid, 'VmRSS') / 1024:.1f} MB resident")
                    for size, count in ((5 * 1024, args.small), (100 * 1024, args.small // 4)):
                        small_phase(pid, daemon.port, size, 20, 4)  # warm up
                        rate, ms, problem = small_phase(pid, daemon.port, size, count, 4)
                        say(
                            f"{size // 1024:>4} KB x {count} at 4: {rate:7.1f} msgs/s,"
                            f" filter CPU {ms:.2f} ms/msg {problem}"
                        )
                    size = args.size * 1024 * 1024
                    peak, hwm, after, replies = big_phase(pid, daemon.port, args.big, size)
                    ok = sum(r.startswith("250") for r in replies)
                    say(f"{args.big} x {args.size} MB at once: {ok} answered 250 ({replies[0]})")
                    verdict = "PASS" if hwm < PEAK_TARGET_MB else "MISS"
                    say(f"  peak resident (VmHWM) {hwm:.1f} MB, sampled {peak:.1f} MB"
                        f"  [target < {PEAK_TARGET_MB} MB: {verdict}]")  # fmt: skip
                    verdict = "PASS" if after < AFTER_TARGET_MB else "MISS"
                    say(f"  resident 3 s after    {after:.1f} MB"
                        f"  [target < {AFTER_TARGET_MB} MB: {verdict}]")  # fmt: skip
                finally:
                    daemon.stop()
        finally:
            sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
