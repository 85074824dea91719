"""Throughput and latency of saslimap against saslauthd rimap, on one real Dovecot.

This module owns the authentication benchmark: it starts a throw-away Dovecot
(devstack, TLS on both IMAP ports, fast failures, generated users), three
``saslimap serve`` subprocesses (STARTTLS, plaintext, implicit TLS) and one
``saslauthd -a rimap`` (plaintext, the only thing it can do), drives each of
them with N client processes that open a fresh mux connection per request (as
libsasl does), and prints auths/s, p50/p99 latency and errors per daemon and
concurrency, then the ratios the project targets.  It measures; it asserts
nothing.  Everything listens on 127.0.0.1 and is stopped on exit, Ctrl-C or
error.

Run: ``.venv/bin/python -m bench.auth_bench [--seconds N] [--concurrency 1,8] [--out FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import IO, Any

from bench.common import no_interrupts, ratio, run_main, say, work_root
from devstack.dovecot import Dovecot
from devstack.ports import free_port
from devstack.proc import pids_matching, terminate
from devstack.saslauthd import RimapSaslauthd
from devstack.tls import make_tls
from saslimap import config as saslimap_config_mod
from saslimap import saslauthd_client

DOMAIN = "example.com"
SERVICE = b"smtp"
USER_COUNT = 50
DEFAULT_SECONDS = 5.0
DEFAULT_CONCURRENCY = (1, 8)
DEFAULT_MAX_REQUESTS = 50_000
"""Upper bound on requests per cell (all workers together), whatever the duration."""
WARMUP_SECONDS = 0.5
"""Requests sent in this lead-in of every cell are not recorded."""
REQUEST_TIMEOUT = 10.0
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
ERROR_BACKOFF = 0.01
"""Pause after a failed request so a dead daemon does not turn a worker into a busy loop."""
MAX_ERROR_SAMPLES = 3

SASLIMAP_VARIANTS: tuple[tuple[str, str], ...] = (
    ("saslimap-starttls", "imap"),
    ("saslimap-plain", "imap+plaintext"),
    ("saslimap-imaps", "imaps"),
)
SASLAUTHD = "saslauthd-rimap"

Credential = tuple[bytes, bytes, bytes]
"""(login, realm, password) as libsasl sends them for ``login@realm``."""


# -- client workers (separate processes) -------------------------------------


@dataclass
class WorkerResult:
    """What one client process saw in the measured window of one cell."""

    latencies: list[float] = field(default_factory=list)
    """Seconds per successful request started inside the window."""
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    window_start: float = 0.0
    last_end: float = 0.0
    cpu_seconds: float = 0.0
    """CPU this client process used inside the window."""


@dataclass(frozen=True)
class WorkerJob:
    """One client process's instructions (picklable: sent to a spawned process)."""

    socket: str
    creds: tuple[Credential, ...]
    warmup: float
    seconds: float
    max_requests: int
    seed: int


def _one_request(socket_path: str, cred: Credential) -> str | None:
    """Send one request on a fresh connection; None if OK, else a short error text."""
    login, realm, password = cred
    try:
        reply = saslauthd_client.query(
            socket_path, login, password, SERVICE, realm, timeout=REQUEST_TIMEOUT
        )
    except (OSError, saslauthd_client.NoReply) as err:
        return f"{type(err).__name__}: {err}"
    if reply.startswith(b"OK"):
        return None
    return reply.decode("ascii", "replace")[:100]


def _worker(job: WorkerJob, barrier: Any, results: Any) -> None:
    """Client process body: wait for the others, warm up, then measure until the deadline.

    CLOCK_MONOTONIC (time.monotonic) is system-wide on Linux, so the window
    times of different workers can be compared by the parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    rng = random.Random(job.seed)
    out = WorkerResult()
    barrier.wait()
    began = time.monotonic()
    window_start = began + job.warmup
    stop_at = window_start + job.seconds
    out.window_start = window_start
    out.last_end = window_start
    attempts = 0
    cpu_start: float | None = None
    while attempts < job.max_requests:
        t0 = time.monotonic()
        if t0 >= stop_at:
            break
        error = _one_request(job.socket, rng.choice(job.creds))
        t1 = time.monotonic()
        if t0 < window_start:
            if error is not None:
                time.sleep(ERROR_BACKOFF)
            continue
        if cpu_start is None:
            cpu_start = time.process_time()
        attempts += 1
        out.last_end = t1
        if error is None:
            out.latencies.append(t1 - t0)
        else:
            out.errors += 1
            if len(out.samples) < MAX_ERROR_SAMPLES:
                out.samples.append(error)
            time.sleep(ERROR_BACKOFF)
    if cpu_start is not None:
        out.cpu_seconds = time.process_time() - cpu_start
    results.put(out)


# -- statistics ----------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """The figures of one daemon at one concurrency."""

    daemon: str
    concurrency: int
    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    samples: tuple[str, ...]
    daemon_cpu: float = math.nan
    """CPU seconds the benchmarked daemon's processes used in the window."""
    client_cpu: float = math.nan
    machine_cpu: float = math.nan
    """Busy CPU seconds of the whole machine in the window (Dovecot, kernel, everyone)."""

    @property
    def rate(self) -> float:
        """Successful authentications per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def per_auth_ms(self, cpu_seconds: float) -> float:
        """CPU milliseconds per successful authentication."""
        return cpu_seconds * 1000 / self.ok if self.ok else math.nan


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (nan when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(daemon: str, concurrency: int, parts: Sequence[WorkerResult], cpu: CpuWindow) -> Cell:
    """Merge the workers' results (and the CPU the parent saw used) into one cell."""
    latencies = sorted(lat for part in parts for lat in part.latencies)
    errors = sum(part.errors for part in parts)
    start = min((part.window_start for part in parts), default=0.0)
    end = max((part.last_end for part in parts), default=0.0)
    samples = tuple(s for part in parts for s in part.samples)[:MAX_ERROR_SAMPLES]
    return Cell(
        daemon=daemon,
        concurrency=concurrency,
        ok=len(latencies),
        errors=errors,
        seconds=max(0.0, end - start),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        samples=samples,
        daemon_cpu=cpu.daemon,
        client_cpu=sum(part.cpu_seconds for part in parts),
        machine_cpu=cpu.machine,
    )


# -- CPU accounting (Linux /proc) -----------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` (threads included); vanished pids count 0."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        # utime, stime, and reaped children's cutime, cstime (fields 14-17 of proc(5)).
        total += sum(int(v) for v in fields[11:15])
    return total / _TICK


def machine_busy_cpu() -> float:
    """Busy CPU seconds of all cores since boot (everything but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


@dataclass(frozen=True)
class CpuWindow:
    """CPU seconds used during a cell's measured window."""

    daemon: float
    machine: float


def _cpu_snapshot(daemon_pids: Callable[[], list[int]]) -> tuple[float, float]:
    return process_cpu(daemon_pids()), machine_busy_cpu()


# -- running one cell --------------------------------------------------------------


def run_cell(
    ctx: SpawnContext,
    daemon: str,
    socket_path: Path,
    creds: tuple[Credential, ...],
    concurrency: int,
    seconds: float,
    max_requests: int,
    daemon_pids: Callable[[], list[int]],
) -> Cell:
    """Drive one daemon with ``concurrency`` client processes for ``seconds``.

    The parent joins the workers' start barrier, so it knows when their
    measured window begins and ends and samples CPU use at both edges.
    """
    barrier = ctx.Barrier(concurrency + 1)
    results = ctx.Queue()
    per_worker = max(1, math.ceil(max_requests / concurrency))
    procs: list[SpawnProcess] = []
    try:
        for i in range(concurrency):
            job = WorkerJob(
                str(socket_path), creds, WARMUP_SECONDS, seconds, per_worker, seed=i + 1
            )
            proc = ctx.Process(target=_worker, args=(job, barrier, results), daemon=True)
            proc.start()
            procs.append(proc)
        # Spawning and importing take a moment; the barrier makes every worker start together.
        barrier.wait(timeout=60.0)
        began = time.monotonic()
        time.sleep(WARMUP_SECONDS)
        daemon0, machine0 = _cpu_snapshot(daemon_pids)
        time.sleep(max(0.0, began + WARMUP_SECONDS + seconds - time.monotonic()))
        daemon1, machine1 = _cpu_snapshot(daemon_pids)
        cpu = CpuWindow(daemon1 - daemon0, machine1 - machine0)
        deadline = time.monotonic() + 30.0 + WARMUP_SECONDS + seconds + REQUEST_TIMEOUT
        parts: list[WorkerResult] = []
        while len(parts) < concurrency:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{daemon} c={concurrency}: workers did not report in time")
            try:
                parts.append(results.get(timeout=min(1.0, remaining)))
            except queue.Empty:  # check the workers are still alive
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"{daemon} c={concurrency}: a client process died (exit {dead[0].exitcode})"
                    ) from None
        for proc in procs:
            proc.join(timeout=5.0)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
        results.close()
    return summarize(daemon, concurrency, parts, cpu)


# -- daemons --------------------------------------------------------------------


def _saslimap_binary() -> str:
    beside = Path(sys.executable).with_name("saslimap")
    if beside.exists():
        return str(beside)
    found = shutil.which("saslimap")
    if found is None:
        raise FileNotFoundError("saslimap console script not found next to python or on PATH")
    return found


def _toml(value: object) -> str:
    """A TOML value (JSON's string escaping is valid TOML for these ASCII values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def installed_config_keys() -> dict[str, set[str]]:
    """Section -> keys the installed saslimap accepts (it refuses unknown keys)."""
    sections: dict[str, set[str]] = {}
    for section in dataclasses.fields(saslimap_config_mod.Config):
        factory = section.default_factory
        if factory is dataclasses.MISSING or not dataclasses.is_dataclass(factory):
            continue
        sections[section.name] = {f.name for f in dataclasses.fields(factory)}
    return sections


def saslimap_config(
    socket_path: Path, url: str, ca_file: Path, log_level: str, metrics_port: int
) -> tuple[str, list[str]]:
    """TOML for one benchmarked saslimap, and the wanted keys this version does not know.

    Production defaults, except: paths, a short drain, its own metrics port, and
    the credential cache turned off, so every request is a real IMAP login, as
    with ``saslauthd`` without ``-c``.
    """
    wanted: dict[str, dict[str, object]] = {
        "server": {
            "socket": str(socket_path),
            "socket_mode": "0600",
            "socket_group": "",
            "create_directory": True,
            "drain_timeout": 2.0,
        },
        "imap": {"url": url, "ca_file": str(ca_file)},
        "users": {"realm": "join", "allowed_domains": [DOMAIN]},
        "cache": {"max_entries": 0},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "logging": {"level": log_level},
    }
    known = installed_config_keys()
    lines = ["# Generated by bench.auth_bench"]
    skipped: list[str] = []
    for section, values in wanted.items():
        accepted = {k: v for k, v in values.items() if k in known.get(section, set())}
        skipped += [f"{section}.{k}" for k in values if k not in accepted]
        if accepted:
            lines += ["", f"[{section}]", *(f"{k} = {_toml(v)}" for k, v in accepted.items())]
    return "\n".join(lines) + "\n", skipped


def wait_ready(
    name: str, socket_path: Path, cred: Credential, alive: Callable[[], bool], log: Path
) -> None:
    """Wait until the daemon answers OK for a known-good user."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{name} exited during start-up; see {log}")
        if socket_path.exists():
            error = _one_request(str(socket_path), cred)
            if error is None:
                return
            last = error
        time.sleep(0.05)
    raise TimeoutError(f"{name} not answering OK within {READY_TIMEOUT:.0f} s (last: {last})")


class SaslimapProcess:
    """One ``saslimap serve`` subprocess in its own session (Ctrl-C reaches only us)."""

    def __init__(self, name: str, workdir: Path, url: str, ca_file: Path, log_level: str) -> None:
        self.name = name
        self.workdir = workdir
        self.socket = workdir / "mux"
        self.config = workdir / "saslimap.toml"
        self.log = workdir / "saslimap.log"
        workdir.mkdir(mode=0o755)
        text, self.skipped_keys = saslimap_config(self.socket, url, ca_file, log_level, free_port())
        self.config.write_text(text, encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, probe: Credential) -> None:
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [_saslimap_binary(), "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc = self.proc
        wait_ready(self.name, self.socket, probe, lambda: proc.poll() is None, self.log)

    def pids(self) -> list[int]:
        """The daemon's pid (its worker threads are accounted to it)."""
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def make_users(count: int) -> dict[str, str]:
    """``count`` users in DOMAIN with random passwords (URL-safe: no quoting questions)."""
    return {f"user{i:03d}@{DOMAIN}": secrets.token_urlsafe(15) for i in range(count)}


def as_credentials(users: dict[str, str]) -> tuple[Credential, ...]:
    """Split ``login@realm`` as libsasl does (at the last "@")."""
    out: list[Credential] = []
    for user, password in users.items():
        login, _, realm = user.rpartition("@")
        out.append((login.encode(), realm.encode(), password.encode()))
    return tuple(out)


# -- reporting -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    label: str
    value: float
    target: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        if self.target == "(info)":
            return ""
        if self.passed is None:
            return "n/a"
        return "PASS" if self.passed else "MISS"


def _find(cells: Sequence[Cell], daemon: str, concurrency: int) -> Cell | None:
    return next((c for c in cells if c.daemon == daemon and c.concurrency == concurrency), None)


def ratios(cells: Sequence[Cell]) -> list[Ratio]:
    """The project's targets, plus implicit TLS for information."""
    base8 = _find(cells, SASLAUTHD, 8)
    base1 = _find(cells, SASLAUTHD, 1)
    out: list[Ratio] = []
    for name in ("saslimap-starttls", "saslimap-plain", "saslimap-imaps"):
        cell = _find(cells, name, 8)
        value = ratio(cell.rate if cell else None, base8.rate if base8 else None)
        target = ">= 1.0" if name != "saslimap-imaps" else "(info)"
        passed = None if math.isnan(value) or name == "saslimap-imaps" else value >= 1.0
        out.append(Ratio(f"c=8 auths/s  {name} / {SASLAUTHD}", value, target, passed))
    for name in ("saslimap-starttls", "saslimap-plain"):
        cell = _find(cells, name, 1)
        value = ratio(cell.p50_ms if cell else None, base1.p50_ms if base1 else None)
        target = "<= 1.2" if name == "saslimap-starttls" else "(info)"
        passed = None if math.isnan(value) or name != "saslimap-starttls" else value <= 1.2
        out.append(Ratio(f"c=1 p50      {name} / {SASLAUTHD}", value, target, passed))
    return out


HEADER = (
    "daemon",
    "conc",
    "auths/s",
    "p50 ms",
    "p99 ms",
    "errors",
    "ok",
    "cpu ms/auth: daemon",
    "clients",
    "whole machine",
)


def _row(cell: Cell) -> tuple[str, ...]:
    return (
        cell.daemon,
        str(cell.concurrency),
        f"{cell.rate:.1f}",
        f"{cell.p50_ms:.2f}",
        f"{cell.p99_ms:.2f}",
        str(cell.errors),
        str(cell.ok),
        f"{cell.per_auth_ms(cell.daemon_cpu):.2f}",
        f"{cell.per_auth_ms(cell.client_cpu):.2f}",
        f"{cell.per_auth_ms(cell.machine_cpu):.2f}",
    )


def text_report(cells: Sequence[Cell], rats: Sequence[Ratio]) -> str:
    rows = [HEADER, *(_row(c) for c in cells)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for r in rows:
        cols = [
            r[0].ljust(widths[0]),
            *(v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)),
        ]
        lines.append("  ".join(cols))
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for rat in rats:
        lines.append(f"{rat.label}: {rat.value:5.2f}  target {rat.target:7} {rat.verdict}".rstrip())
    for cell in cells:
        for sample in cell.samples:
            lines.append(f"error sample {cell.daemon} c={cell.concurrency}: {sample}")
    return "\n".join(lines)


def markdown_report(
    cells: Sequence[Cell], rats: Sequence[Ratio], meta: Sequence[tuple[str, str]]
) -> str:
    lines = ["# saslimap vs saslauthd rimap: authentication benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in meta]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_row(c)) + " |" for c in cells]
    lines += ["", "| ratio | value | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {r.label} | {r.value:.2f} | {r.target} | {r.verdict} |" for r in rats]
    samples = [f"- {c.daemon} c={c.concurrency}: `{s}`" for c in cells for s in c.samples]
    if samples:
        lines += ["", "Error samples:", "", *samples]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    try:
        return Path("/proc/loadavg").read_text(encoding="ascii").split()[0]
    except OSError:
        return "?"


def _source_state() -> str:
    """Which saslimap was measured: the checkout's commit, and whether it had local edits."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in src/' if dirty else ''}"


def _dovecot_version() -> str:
    try:
        out = subprocess.run(
            ["dovecot", "--version"], capture_output=True, text=True, check=False, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


# -- orchestration --------------------------------------------------------------------


def _parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not values or values[0] < 1 or values[-1] > 64:
        raise argparse.ArgumentTypeError("concurrency values must be between 1 and 64")
    return values


def _parse_seconds(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError("--seconds must be between 0.1 and 60")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_bench", description=__doc__)
    parser.add_argument(
        "--seconds", type=_parse_seconds, default=DEFAULT_SECONDS, help="measured seconds per cell"
    )
    parser.add_argument(
        "--concurrency",
        type=_parse_concurrency,
        default=DEFAULT_CONCURRENCY,
        help="comma-separated client counts (default 1,8)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        help="upper bound on requests per cell",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="saslimap's logging.level (info, the production default, logs every check)",
    )
    parser.add_argument("--out", type=Path, help="also write the results as Markdown here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs, configs) on exit"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    concurrency: tuple[int, ...] = args.concurrency
    users = make_users(USER_COUNT)
    creds = as_credentials(users)
    probe = creds[0]
    ctx = multiprocessing.get_context("spawn")
    root = work_root("ab")
    cleanup = contextlib.ExitStack()
    cells: list[Cell] = []
    began = time.monotonic()
    load_before = _loadavg()
    try:
        if not args.keep:
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        tls = make_tls(root / "tls")
        dovecot = Dovecot(root / "dc", users, tls=tls, fast_failures=True)
        cleanup.callback(dovecot.stop)
        say(f"starting Dovecot in {root} ...")
        dovecot.start()
        ca_file = dovecot.ca_file
        if ca_file is None:
            raise RuntimeError("Dovecot started without a CA file")

        targets: list[tuple[str, Path, Callable[[], list[int]]]] = []
        for index, (name, scheme) in enumerate(SASLIMAP_VARIANTS):
            daemon = SaslimapProcess(
                name, root / f"s{index}", dovecot.imap_url(scheme), ca_file, args.log_level
            )
            cleanup.callback(daemon.stop)
            say(f"starting {name} ({dovecot.imap_url(scheme)}) ...")
            if daemon.skipped_keys:
                say(f"  (this saslimap has no {', '.join(daemon.skipped_keys)}: left out)")
            daemon.start(probe)
            targets.append((name, daemon.socket, daemon.pids))

        saslauthd = RimapSaslauthd(
            root / "sa",
            dovecot.host,
            dovecot.imap_port,
            cache=False,
            threads=max(5, max(concurrency)),
        )
        cleanup.callback(saslauthd.stop)
        say(f"starting saslauthd -a rimap -r -n {max(5, max(concurrency))} ...")
        saslauthd.start()
        sa_socket = saslauthd.mux_path
        wait_ready(
            SASLAUTHD, sa_socket, probe, lambda: saslauthd.pid is not None, saslauthd.workdir
        )
        sa_dir = str(saslauthd.workdir)
        targets.append((SASLAUTHD, sa_socket, lambda: pids_matching("saslauthd", sa_dir)))

        # Cells are interleaved (every daemon at c=1, then every daemon at c=8) so slow
        # drift on the machine does not favour one daemon.
        for conc in concurrency:
            for name, path, pids in targets:
                say(f"  {name} c={conc} ({args.seconds:g} s) ...")
                cell = run_cell(ctx, name, path, creds, conc, args.seconds, args.max_requests, pids)
                cells.append(cell)
                say(
                    f"    {cell.rate:.1f} auths/s  p50 {cell.p50_ms:.2f} ms  "
                    f"p99 {cell.p99_ms:.2f} ms  errors {cell.errors}"
                )
    finally:
        with no_interrupts():
            say("stopping daemons ...")
            cleanup.close()

    rats = ratios(cells)
    load = f"{load_before} before, {_loadavg()} after ({os.cpu_count()} CPUs)"
    print(text_report(cells, rats), flush=True)
    print(f"load average: {load}; saslimap source: {_source_state()}", flush=True)
    if args.out is not None:
        meta = [
            ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
            ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"),
            ("Dovecot", f"{_dovecot_version()} (fast failures, TLS: ECDSA P-256)"),
            ("users", f"{USER_COUNT}, all passwords correct, random user per request"),
            ("clients", "one process per concurrent client, fresh Unix connection per request"),
            ("duration", f"{args.seconds:g} s per cell after {WARMUP_SECONDS:g} s warm-up"),
            ("saslauthd", "-a rimap -r, no cache (-c off), plaintext IMAP"),
            ("saslimap", f"cache off (cache.max_entries = 0), logging {args.log_level}"),
            ("saslimap source", _source_state()),
            ("load average", load),
            ("wall time", f"{time.monotonic() - began:.0f} s"),
        ]
        args.out.write_text(markdown_report(cells, rats, meta), encoding="utf-8")
        say(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    return run_main(_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
