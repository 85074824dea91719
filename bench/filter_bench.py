"""mail-filter against fuglu 1.7 and spamd's own speed, through one clamd and one spamd.

This module owns a benchmark that PRINTS figures side by side and the
project's targets with PASS/MISS next to them (it asserts nothing).  The path
is the one the recipe's reference figures were measured on, straight in and
out with no Postfix in between::

    smtp-source -m N -s CONC -l SIZE  ->  filter  ->  smtp-sink -c (counting)

Filters: ``mail-filter serve`` (devstack.daemons.FilterDaemon, logging at
the production level ``info``) and fuglu 1.7 from PyPI in a venv of its own
(``--fuglu-venv``, default /tmp/fuglu-venv; created with pip if missing),
configured minimally by this script under its /tmp work directory: listen
port, re-injection to its smtp-sink, its ClamAV plugin on the same clamd Unix
socket and, for the spamd phase, its SpamAssassin plugin on the same spamd.

Matrix: message bodies of 5 KB and 100 KB, concurrency 1, 4 and 8, first
clamd only (mail-filter ``[spamd] enabled = false``, fuglu ``plugins=clamav``),
then clamd + spamd.  clamd runs with DisableCache; smtp-source's messages
differ anyway (Message-Id and Date), and ours carry a sequence number.

Per cell: msgs/s of each filter (messages the sink counted / wall time of
smtp-source), their ratio, the filter's own CPU per message (utime + stime
from /proc/PID/stat before and after the cell), and how busy the machine's
cores were.  In the spamd phase also spamd's raw throughput: CONC parallel
Python clients sending SYMBOLS requests (what mail-filter sends) with
messages of the same shape.  Latency is measured apart: one SMTP connection,
sequential messages, the time from DATA to the final reply of each.

Everything listens on 127.0.0.1; every run is bounded in messages and time;
every process started here is stopped on exit, error or Ctrl-C.

Run: ``.venv/bin/python -m bench.filter_bench [--quick] [--out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import functools
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.auth_bench import _loadavg, _source_state, machine_busy_cpu, percentile, process_cpu
from bench.common import no_interrupts, ratio, run_main, say, work_root
from devstack.clamd import Clamd
from devstack.daemons import FilterDaemon
from devstack.ports import LOOPBACK, free_port, wait_for_greeting
from devstack.proc import child_pids, stop_pid, tail, terminate
from devstack.spamd import Spamd
from filter.spamd import encode_request, parse_report, parse_response

SIZES = (5 * 1024, 100 * 1024)
"""Body bytes (smtp-source -l)."""
CONCURRENCY = (1, 4, 8)
SENDER = "a@example.test"
RECIPIENT = "b@example.test"
MF = "mail-filter"
FUGLU = "fuglu"
FUGLU_SPEC = "fuglu==1.7.*"
DEFAULT_FUGLU_VENV = Path("/tmp/fuglu-venv")
SPAMD_CHILDREN = 2
"""One per core here: the recipe found more children than cores gains nothing."""
WARMUP_MESSAGES = 12
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """How many messages each kind of run sends, and its time limits."""

    clamd_messages: int
    spamd_messages: int
    latency_clamd: int
    latency_spamd: int
    clamd_timeout: float
    spamd_timeout: float


FULL = Plan(300, 60, 200, 20, 120.0, 300.0)
QUICK = Plan(60, 12, 40, 6, 60.0, 120.0)

# -- targets ---------------------------------------------------------------------------

CLAMD_RATIO_TARGET = 3.0
"""mail-filter msgs/s over fuglu's, clamd only."""
CPU_TARGET_MS = {5 * 1024: 1.0, 100 * 1024: 4.0}
"""The filter's own CPU per message."""
SPAMD_RAW_TARGET = 0.95
"""mail-filter msgs/s over spamd's raw SYMBOLS throughput."""
LATENCY_TARGET_MS = 10.0
"""p50, clamd only, 5 KB."""


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


# -- messages ----------------------------------------------------------------------------


def make_message(size: int, seq: int, tag: str) -> bytes:
    """A message as smtp-source -l ``size`` makes it, unique by its Message-Id.

    smtp-source writes From, To, Date and Message-Id, then a body of 78-character
    lines, each a digit (1, 2, ... 9, 0, 1, ...) and 77 X, cut at ``size`` bytes.
    """
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
        f"Message-Id: <{tag}.{seq}@filter-bench.example.test>\r\n\r\n"
    ).encode("ascii")
    lines: list[bytes] = []
    total = 0
    while total < size:
        line = (str((len(lines) + 1) % 10) + "X" * 77)[: max(1, size - total - 2)]
        lines.append(line.encode("ascii") + b"\r\n")
        total += len(lines[-1])
    return head + b"".join(lines)


# -- processes -----------------------------------------------------------------------------


class Sink:
    """Postfix's ``smtp-sink -c``: accepts everything, counts messages on its stdout."""

    _COUNT = re.compile(rb"mesg=(\d+)")

    def __init__(self, workdir: Path, name: str) -> None:
        self.port = free_port()
        self.output = workdir / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["smtp-sink"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # it refuses to run as root without a user to be
        argv += ["-c", f"{LOOPBACK}:{self.port}", "1024"]
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for_greeting(LOOPBACK, self.port, b"220", timeout=10)

    def count(self) -> int:
        """Messages received so far (the counter it last printed)."""
        found = self._COUNT.findall(self.output.read_bytes())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc, 10)


def ensure_fuglu(venv: Path) -> str:
    """The venv's python with fuglu 1.7 importable (installed with pip if missing); its version."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import fuglu; print(fuglu.__version__)"]

    def version() -> str:
        if not python.exists():
            return ""
        done = subprocess.run(probe, capture_output=True, text=True, check=False, timeout=60)
        return done.stdout.strip() if done.returncode == 0 else ""

    found = version()
    if not found.startswith("1.7"):
        say(f"installing {FUGLU_SPEC} into {venv} ...")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", FUGLU_SPEC], check=True, timeout=600
        )
        found = version()
        if not found.startswith("1.7"):
            raise RuntimeError(f"fuglu 1.7 not importable from {venv} (found {found!r})")
    return found


class Fuglu:
    """One fuglu in the foreground (no privilege drop, no daemonizing), thread backend."""

    def __init__(
        self,
        venv: Path,
        workdir: Path,
        *,
        sink_port: int,
        clamd_socket: Path,
        spamd_port: int | None,
    ) -> None:
        self.python = venv / "bin" / "python"
        self.workdir = workdir
        self.port = free_port()
        self.sink_port = sink_port
        self.clamd_socket = clamd_socket
        self.spamd_port = spamd_port
        self.config_path = workdir / "fuglu.conf"
        self.log_path = workdir / "fuglu.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        plugins = "clamav" if self.spamd_port is None else "clamav,spamassassin"
        spamassassin = (
            ""
            if self.spamd_port is None
            else f"\n[SAPlugin]\nhost={LOOPBACK}\nport={self.spamd_port}\n"
        )
        return f"""# Generated by bench.filter_bench; minimal: everything else is fuglu's default.
[main]
daemonize=0
plugins={plugins}
prependers=
appenders=
bindaddress={LOOPBACK}
incomingport={self.port}
outgoinghost={LOOPBACK}
outgoingport={self.sink_port}
tempdir={self.workdir / "tmp"}
controlport={self.workdir / "control.sock"}
versioncheck=0
mrtgdir=

[ClamavPlugin]
host=localhost
port={self.clamd_socket}
{spamassassin}"""

    def start(self, timeout: float = 60.0) -> None:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        argv = [
            str(self.python), "-m", "fuglu", "--foreground", "--baseloglevel", "INFO",
            "--config", str(self.config_path), "--pidfile", str(self.workdir / "fuglu.pid"),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fuglu exited {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                wait_for_greeting(LOOPBACK, self.port, b"220", timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fuglu not ready:\n{tail(self.log_path)}") from None

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *child_pids(self.proc.pid)]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        children = child_pids(proc.pid) if proc.poll() is None else []
        terminate(proc, 20)
        for child in children:
            stop_pid(child, 10)


@dataclass
class Target:
    """A filter under test: where to send, where it delivers, which processes are it."""

    name: str
    port: int
    sink: Sink
    pids: Callable[[], list[int]]


# -- CPU of this run and of everything else on the machine -------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")
NOISE_CORES = 0.25
"""Other processes' CPU (cores) above which a cell is measured again, once."""
QUIET_WAIT = 30.0
"""Seconds to wait at most, before a cell, for other processes to quieten."""


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def our_cpu() -> float:
    """CPU seconds of this process and all its descendants, live or reaped."""
    parents: dict[int, list[int]] = {}
    cpu: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is None:
            continue
        pid = int(entry.name)
        parents.setdefault(int(fields[1]), []).append(pid)
        # utime, stime, cutime, cstime (proc(5) fields 14-17)
        cpu[pid] = sum(int(v) for v in fields[11:15])
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0)
        todo += parents.get(pid, [])
    return total / _TICK


def process_busy_cpu() -> float:
    """CPU seconds all processes got since boot (user, nice, system) plus steal."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (values[0] + values[1] + values[2] + values[7]) / _TICK


@dataclass
class Window:
    """CPU seconds used in one measured window: by the machine and by everyone but us."""

    start: float = field(default_factory=time.monotonic)
    machine0: float = field(default_factory=machine_busy_cpu)
    others0: float = field(default_factory=lambda: process_busy_cpu() - our_cpu())

    def close(self) -> tuple[float, float, float]:
        """(seconds, machine busy CPU seconds, other processes' CPU seconds)."""
        others = process_busy_cpu() - our_cpu() - self.others0
        return time.monotonic() - self.start, machine_busy_cpu() - self.machine0, max(0.0, others)


def wait_for_quiet(limit: float = QUIET_WAIT) -> float:
    """Wait (at most ``limit`` s) until other processes use under NOISE_CORES; the last reading."""
    deadline = time.monotonic() + limit
    while True:
        window = Window()
        time.sleep(0.5)
        seconds, _, others = window.close()
        load = others / seconds
        if load < NOISE_CORES or time.monotonic() >= deadline:
            return load


# -- load and measurement --------------------------------------------------------------------


@dataclass
class Run:
    """One smtp-source run through one filter."""

    filter: str
    size: int
    conc: int
    sent: int
    delivered: int = 0
    seconds: float = math.nan
    cpu: float = math.nan
    """CPU seconds of the filter's processes during the run."""
    machine: float = math.nan
    """Busy CPU seconds of the whole machine during the run."""
    others: float = math.nan
    """CPU seconds of processes not started by this benchmark during the run."""
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_ms(self) -> float:
        return self.cpu * 1000 / self.delivered if self.delivered else math.nan

    @property
    def busy_cores(self) -> float:
        return self.machine / self.seconds if self.seconds > 0 else math.nan

    @property
    def other_cores(self) -> float:
        return self.others / self.seconds if self.seconds > 0 else math.nan


def smtp_source(target: Target, size: int, conc: int, count: int, timeout: float) -> Run:
    """Send ``count`` messages with ``conc`` sessions; count what reached the sink."""
    run = Run(target.name, size, conc, count)
    argv = [
        "smtp-source", "-m", str(count), "-s", str(conc), "-l", str(size),
        "-f", SENDER, "-t", RECIPIENT, f"{LOOPBACK}:{target.port}",
    ]  # fmt: skip
    before_sink = target.sink.count()
    cpu0 = process_cpu(target.pids())
    window = Window()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        run.problems.append(f"stopped at the {timeout:g} s limit")
    run.seconds, run.machine, run.others = window.close()
    run.cpu = process_cpu(target.pids()) - cpu0
    # The filter answers 250 only after the sink took the message, so the count is final.
    run.delivered = target.sink.count() - before_sink
    lines = err.decode("utf-8", "replace").splitlines()
    if proc.returncode:
        run.problems.append(f"smtp-source exited {proc.returncode}")
    if lines:
        run.problems.append(f"{len(lines)} smtp-source messages, e.g. {lines[0][:160]}")
    if run.delivered != count:
        run.problems.append(f"sink counted {run.delivered} of {count}")
    return run


class SmtpClient:
    """A minimal blocking SMTP client for latency: one message at a time."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        greeting = self.reply()
        if greeting[0] != 220:
            raise ConnectionError(f"greeting {greeting}")
        if self.command(b"EHLO filter-bench.example.test")[0] != 250:
            raise ConnectionError("EHLO refused")

    def reply(self) -> tuple[int, str]:
        while True:
            end = self.buf.find(b"\n")
            while end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                self.buf += chunk
                end = self.buf.find(b"\n")
            line, self.buf = self.buf[:end].rstrip(b"\r"), self.buf[end + 1 :]
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode("utf-8", "replace")

    def command(self, line: bytes) -> tuple[int, str]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, message: bytes) -> tuple[float, tuple[int, str]]:
        """One transaction; seconds from DATA to the final reply, and that reply."""
        for line in (f"MAIL FROM:<{SENDER}>".encode(), f"RCPT TO:<{RECIPIENT}>".encode()):
            answer = self.command(line)
            if answer[0] != 250:
                self.command(b"RSET")
                return math.nan, answer
        t0 = time.perf_counter()
        answer = self.command(b"DATA")
        if answer[0] != 354:
            return math.nan, answer
        payload = message.replace(b"\r\n.", b"\r\n..")
        self.sock.sendall(payload + b".\r\n")
        answer = self.reply()
        return time.perf_counter() - t0, answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command(b"QUIT")
        self.sock.close()


@dataclass
class Latency:
    """Sequential messages at concurrency 1 through one filter."""

    filter: str
    size: int
    spamd: bool
    seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ms(self, q: float) -> float:
        return percentile(sorted(self.seconds), q) * 1000


def measure_latency(
    target: Target, size: int, count: int, timeout: float, spamd: bool, tag: str
) -> Latency:
    """``count`` messages one after the other, each on a fresh connection (untimed).

    fuglu serves one message per connection (a second MAIL gets 503), as
    smtp-source also sends them, so both filters get a connection per message.
    """
    out = Latency(target.name, size, spamd)
    deadline = time.monotonic() + timeout
    for seq in range(count):
        if time.monotonic() > deadline:
            out.problems.append(f"stopped at the {timeout:g} s limit")
            break
        message = make_message(size, seq, tag)
        try:
            client = SmtpClient(target.port, timeout=60)
            try:
                seconds, (code, text) = client.send(message)
            finally:
                client.close()
        except (OSError, ValueError) as err:
            code, text = 0, f"{type(err).__name__}: {err}"
        if code == 250:
            out.seconds.append(seconds)
        elif len(out.problems) < 3:
            out.problems.append(f"{code} {text[:120]}")
    return out


@dataclass
class RawSpamd:
    """spamd alone: CONC clients sending SYMBOLS requests back to back."""

    size: int
    conc: int
    sent: int
    ok: int = 0
    seconds: float = math.nan
    others: float = math.nan
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan

    @property
    def other_cores(self) -> float:
        return self.others / self.seconds if self.seconds > 0 else math.nan


async def _spamd_raw(result: RawSpamd, port: int, limit: float, tag: str) -> None:
    messages = iter(range(result.sent))

    async def worker() -> None:
        for seq in messages:
            request = encode_request("SYMBOLS", make_message(result.size, seq, tag))
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                writer.write(request)
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
            try:
                parse_report(parse_response(raw))
            except Exception as err:  # any failure is reported, not raised
                if len(result.problems) < 3:
                    result.problems.append(str(err)[:120])
                continue
            result.ok += 1

    window = Window()
    try:
        async with asyncio.timeout(limit):
            await asyncio.gather(*(worker() for _ in range(result.conc)))
    except TimeoutError:
        result.problems.append(f"stopped at the {limit:g} s limit")
    result.seconds, _, result.others = window.close()


def spamd_raw(port: int, size: int, conc: int, count: int, timeout: float, tag: str) -> RawSpamd:
    result = RawSpamd(size, conc, count)
    asyncio.run(_spamd_raw(result, port, timeout, tag))
    return result


# -- report ------------------------------------------------------------------------------------


def _kb(size: int) -> str:
    return f"{size // 1024} KB"


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _pair(a: float, b: float) -> str:
    return f"{_num(a, 2)}/{_num(b, 2)}"


def _cpu_verdict(run: Run) -> str:
    value = run.cpu_ms
    return _verdict(None if math.isnan(value) else value <= CPU_TARGET_MS[run.size])


@dataclass
class Results:
    clamd: dict[tuple[str, int, int], Run] = field(default_factory=dict)
    spamd: dict[tuple[str, int, int], Run] = field(default_factory=dict)
    raw: dict[tuple[int, int], RawSpamd] = field(default_factory=dict)
    latency: list[Latency] = field(default_factory=list)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = [
            row[0].ljust(widths[0]),
            *(v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)),
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [fmt(header), rule, *(fmt(r) for r in rows)]


def report(res: Results, meta: Sequence[tuple[str, str]]) -> str:
    lines = ["# mail-filter vs fuglu 1.7: smtp-source -> filter -> smtp-sink", ""]
    lines += [f"- {k}: {v}" for k, v in meta]
    lines += [
        "",
        "## clamd only (mail-filter [spamd] enabled = false; fuglu plugins=clamav)",
        "",
        "CPU ms/msg: the filter's own utime+stime per message.  busy: cores in use on the whole"
        " machine (2 = saturated), mail-filter run / fuglu run; others: of those, cores used by"
        " processes this benchmark did not start.",
        "",
    ]
    header: tuple[str, ...] = (
        "size", "conc", "mail-filter/s", "fuglu/s", "mf/fuglu", ">=3x",
        "mf CPU ms/msg", "target", "fuglu CPU ms/msg", "busy", "others",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = []
    for size in SIZES:
        for conc in CONCURRENCY:
            mf, fg = res.clamd.get((MF, size, conc)), res.clamd.get((FUGLU, size, conc))
            if mf is None or fg is None:
                continue
            vs_fuglu = ratio(mf.rate, fg.rate)
            rows.append((
                _kb(size), str(conc), _num(mf.rate), _num(fg.rate), _num(vs_fuglu, 2),
                _verdict(None if math.isnan(vs_fuglu) else vs_fuglu >= CLAMD_RATIO_TARGET),
                _num(mf.cpu_ms, 2), f"<={CPU_TARGET_MS[size]:g} {_cpu_verdict(mf)}",
                _num(fg.cpu_ms, 2), _pair(mf.busy_cores, fg.busy_cores),
                _pair(mf.other_cores, fg.other_cores),
            ))  # fmt: skip
    lines += _table(header, rows)
    lines += [
        "",
        "## clamd + spamd (spamd: 2 children; raw = parallel SYMBOLS clients, no filter)",
        "",
    ]
    header = (
        "size", "conc", "mail-filter/s", "fuglu/s", "mf/fuglu", "spamd raw/s", "mf/raw",
        ">=0.95", "mf CPU ms/msg", "fuglu CPU ms/msg", "others mf/fuglu/raw",
    )  # fmt: skip
    rows = []
    for size in SIZES:
        for conc in CONCURRENCY:
            mf, fg = res.spamd.get((MF, size, conc)), res.spamd.get((FUGLU, size, conc))
            raw = res.raw.get((size, conc))
            if mf is None or fg is None or raw is None:
                continue
            vs_raw = ratio(mf.rate, raw.rate)
            rows.append((
                _kb(size), str(conc), _num(mf.rate), _num(fg.rate),
                _num(ratio(mf.rate, fg.rate), 2),
                _num(raw.rate), _num(vs_raw, 3),
                _verdict(None if math.isnan(vs_raw) else vs_raw >= SPAMD_RAW_TARGET),
                # The CPU targets are the clamd-only table's (the wording);
                # here spamd's children keep both cores busy and every wake-up costs more.
                _num(mf.cpu_ms, 2),
                _num(fg.cpu_ms, 2),
                f"{_pair(mf.other_cores, fg.other_cores)}/{_num(raw.other_cores, 2)}",
            ))  # fmt: skip
    lines += _table(header, rows)
    lines += [
        "",
        "## latency, concurrency 1 (sequential messages, a connection each; DATA -> final reply)",
        "",
    ]
    header = ("scanners", "size", "filter", "msgs", "p50 ms", "p95 ms", "max ms", "target")
    rows = []
    for lat in res.latency:
        target = ""
        if lat.filter == MF and not lat.spamd and lat.size == SIZES[0] and lat.seconds:
            target = f"p50 <{LATENCY_TARGET_MS:g} {_verdict(lat.ms(0.5) < LATENCY_TARGET_MS)}"
        rows.append((
            "clamd+spamd" if lat.spamd else "clamd", _kb(lat.size), lat.filter,
            str(len(lat.seconds)), _num(lat.ms(0.5), 2), _num(lat.ms(0.95), 2),
            _num(lat.ms(1.0), 2), target,
        ))  # fmt: skip
    lines += _table(header, rows)
    problems = [
        f"- {kind} {r.filter} {_kb(r.size)} c={r.conc}: {p}"
        for kind, runs in (("clamd", res.clamd), ("spamd", res.spamd))
        for r in runs.values()
        for p in r.problems
    ]
    problems += [
        f"- spamd raw {_kb(r.size)} c={r.conc}: {p}" for r in res.raw.values() for p in r.problems
    ]
    problems += [
        f"- latency {lat.filter} {_kb(lat.size)}: {p}" for lat in res.latency for p in lat.problems
    ]
    lines += [
        "",
        "Problems:" if problems else "Problems: none (every message reached the sink).",
        *problems,
    ]
    return "\n".join(lines) + "\n"


# -- orchestration ------------------------------------------------------------------------------


def _version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else "?"
    )


def quietly(measure: Callable[[], T], noise: Callable[[T], float]) -> tuple[T, str]:
    """Measure after other processes quietened; once more if they got busy meanwhile.

    Returns the run with less foreign load and a note when it was not quiet.
    """
    wait_for_quiet()
    first = measure()
    if not noise(first) > NOISE_CORES:
        return first, ""
    wait_for_quiet()
    second = measure()
    best = min((first, second), key=noise)
    note = f"other processes used {noise(first):.2f} cores, then {noise(second):.2f} (re-measured)"
    return best, note


def _warm(targets: Sequence[Target], timeout: float) -> None:
    for target in targets:
        for size in SIZES:
            run = smtp_source(target, size, 2, WARMUP_MESSAGES // 2, timeout)
            if run.delivered == 0:
                raise RuntimeError(f"{target.name} delivered nothing in warm-up: {run.problems}")


def _phase(
    res: Results,
    spamd_on: bool,
    root: Path,
    clamd: Clamd,
    spamd: Spamd,
    sinks: dict[str, Sink],
    fuglu_venv: Path,
    plan: Plan,
    log_level: str,
    tag: str,
) -> None:
    name = "spamd" if spamd_on else "clamd"
    cleanup = contextlib.ExitStack()
    with cleanup:
        mf = FilterDaemon(
            root / f"mf-{name}",
            {
                "reinject": {"address": f"{LOOPBACK}:{sinks[MF].port}"},
                "clamd": {"address": clamd.address},
                "spamd": {"address": f"{LOOPBACK}:{spamd.port}", "enabled": spamd_on},
                "logging": {"level": log_level},
            },
        )
        cleanup.callback(mf.stop)
        say(f"[{name}] starting mail-filter ...")
        mf.start(timeout=30)
        fg = Fuglu(
            fuglu_venv, root / f"fg-{name}", sink_port=sinks[FUGLU].port,
            clamd_socket=clamd.socket_path, spamd_port=spamd.port if spamd_on else None,
        )  # fmt: skip
        cleanup.callback(fg.stop)
        say(f"[{name}] starting fuglu ...")
        fg.start()

        def mf_pids() -> list[int]:
            return [mf.proc.pid] if mf.proc is not None and mf.proc.poll() is None else []

        targets = [
            Target(MF, mf.port, sinks[MF], mf_pids),
            Target(FUGLU, fg.port, sinks[FUGLU], fg.pids),
        ]
        count = plan.spamd_messages if spamd_on else plan.clamd_messages
        timeout = plan.spamd_timeout if spamd_on else plan.clamd_timeout
        _warm(targets, timeout)
        store = res.spamd if spamd_on else res.clamd
        for size in SIZES:
            for conc in CONCURRENCY:
                # Alternate which filter goes first so slow drift favours neither.
                order = targets if conc != 4 else targets[::-1]
                for target in order:
                    run, note = quietly(
                        functools.partial(smtp_source, target, size, conc, count, timeout),
                        lambda r: r.other_cores,
                    )
                    if note:
                        run.problems.append(note)
                    store[(target.name, size, conc)] = run
                    say(
                        f"[{name}] {target.name:11} {_kb(size):>6} c={conc}: {run.rate:7.1f} msg/s"
                        f"  {run.cpu_ms:6.2f} ms CPU/msg  {run.delivered}/{count} delivered"
                    )
                if spamd_on:
                    raw_tag = f"{tag}r{size}c{conc}"
                    raw, note = quietly(
                        functools.partial(
                            spamd_raw, spamd.port, size, conc, count, timeout, raw_tag
                        ),
                        lambda r: r.other_cores,
                    )
                    if note:
                        raw.problems.append(note)
                    res.raw[(size, conc)] = raw
                    say(f"[{name}] spamd raw   {_kb(size):>6} c={conc}: {raw.rate:7.1f} msg/s")
        lat_count = plan.latency_spamd if spamd_on else plan.latency_clamd
        for size in SIZES:
            for target in targets:
                wait_for_quiet()
                lat = measure_latency(
                    target, size, lat_count, timeout, spamd_on, f"{tag}l{name}{size}{target.name}"
                )
                res.latency.append(lat)
                say(
                    f"[{name}] latency {target.name:11} {_kb(size):>6}: p50 {lat.ms(0.5):.2f} ms"
                    f" p95 {lat.ms(0.95):.2f} ms ({len(lat.seconds)} msgs)"
                )


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    fuglu_version = ensure_fuglu(args.fuglu_venv)
    root = work_root("fb")
    tag = root.name
    res = Results()
    began = time.monotonic()
    load_before = _loadavg()
    cleanup = contextlib.ExitStack()
    try:
        if not args.keep:
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        clamd = Clamd(root / "clamd", disable_cache=True)
        cleanup.callback(clamd.stop)
        spamd = Spamd(root / "spamd", children=SPAMD_CHILDREN)
        cleanup.callback(spamd.stop)
        say(f"starting clamd and spamd in {root} ...")
        clamd.start()
        spamd.start()
        sinks = {name: Sink(root, f"sink-{name}") for name in (MF, FUGLU)}
        for sink in sinks.values():
            cleanup.callback(sink.stop)
            sink.start()
        for spamd_on in (False, True):
            _phase(
                res, spamd_on, root, clamd, spamd, sinks, args.fuglu_venv, plan, args.log_level,
                tag,
            )  # fmt: skip
    finally:
        with no_interrupts():
            say("stopping everything ...")
            cleanup.close()

    meta = [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"),
        ("mode", "quick" if args.quick else "full"),
        (
            "messages per cell",
            f"{plan.clamd_messages} clamd only, {plan.spamd_messages} with spamd"
            f" (after {WARMUP_MESSAGES} warm-up messages per filter and phase)",
        ),
        ("load source", "smtp-source -m N -s CONC -l SIZE (one message per connection)"),
        ("sink", "smtp-sink -c (one per filter)"),
        ("clamd", f"{_version(['clamd', '--version'])}, DisableCache yes, MaxThreads 4"),
        ("spamd", f"{_version(['spamd', '--version'])}, {SPAMD_CHILDREN} children"),
        ("fuglu", f"{fuglu_version} from PyPI in {args.fuglu_venv}, backend=thread, log INFO"),
        ("mail-filter", f"source {_source_state()}, logging.level {args.log_level}"),
        ("load average", f"{load_before} before, {_loadavg()} after"),
        ("wall time", f"{time.monotonic() - began:.0f} s"),
    ]
    text = report(res, meta)
    print(text, flush=True)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        say(f"wrote {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.filter_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages per cell")
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    parser.add_argument(
        "--fuglu-venv", type=Path, default=DEFAULT_FUGLU_VENV,
        help=f"venv with {FUGLU_SPEC} (created with pip if missing)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info",
        help="mail-filter's logging.level (info, the production default, logs every message)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs) on exit"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    return run_main(_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
