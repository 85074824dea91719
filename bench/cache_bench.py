"""saslimap's caches and warm connections against saslauthd rimap, measured in one run.

This module owns a benchmark in three sections, each printing one table and the
project's targets as ratios with PASS/MISS (it asserts nothing):

1. Cache hits.  ``saslimap serve`` with its default cache and ``saslauthd -a
   rimap -r -c`` on the same users; both warmed first, so every request is a
   right password already cached.  Auths/s and p50/p99 at concurrency 1 and 8,
   with the CPU of the daemon, of the client processes and of the whole
   machine, so one can see whether the clients saturate the cores.  A third
   row, the floor (:mod:`bench.bare_mux`), does saslimap's socket work with no
   checking at all: what any daemon on this event loop can reach here.  Cells of
   sections 1 and 3 run in interleaved rounds (A B, B A, ...) so a burst of
   other work on the machine is shared out rather than landing on one daemon.
2. Wrong passwords against a Dovecot with its default settings (2 s failure
   delay, per-IP auth penalty), concurrency 8.  Login attempts are 20 % wrong
   passwords (each sent three times: the attempt and two retries, as mail
   clients do) and 80 % right ones, random users.  Each daemon (caches on,
   fresh, on a Dovecot of its own so the per-IP penalty of one does not delay
   the other) first runs a time-bounded cold pass over the workload, which
   warms its caches.  Both then replay, in a loop, the same first R attempts
   of it (R: the smaller reach of the two cold passes, so every measured
   request, wrong passwords included, was already made once), less any attempt
   a cold pass left without a verdict (no cache holds it), trimmed back to one
   wrong attempt in five: right attempts only (the failure-free throughput),
   then all of them (the measured pass).
3. Cache misses at concurrency 1: saslimap over STARTTLS with
   ``imap.warm_connections = 2`` and ``0`` (``cache.max_entries = 0``: every
   request is an IMAP login) against saslauthd's plaintext rimap without cache.

Clients are separate processes (see :mod:`bench.mux_load`) opening a fresh
Unix-socket connection per request, as libsasl does.  Everything listens on
127.0.0.1, every cell and pass has a deadline, and every process is stopped on
exit, Ctrl-C or error.

Run: ``.venv/bin/python -m bench.cache_bench [--seconds N] [--pass-seconds N] [--out FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.auth_bench import (
    DOMAIN,
    USER_COUNT,
    _dovecot_version,
    _loadavg,
    _source_state,
    as_credentials,
    machine_busy_cpu,
    make_users,
    percentile,
    process_cpu,
)
from bench.common import no_interrupts, ratio, run_main, say, seconds_arg, work_root
from bench.mux_load import (
    FAILED,
    NO,
    NO_REPLY,
    OK,
    Attempt,
    CellJob,
    ClientPool,
    Exchanger,
    PassJob,
    PassResult,
    encode,
)
from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.proc import pids_matching, terminate
from devstack.saslauthd import RimapSaslauthd
from devstack.tls import TlsFiles, make_tls

SERVICE = b"smtp"
CLIENTS = 8
"""Client processes in the pool: the highest concurrency used."""
SASLAUTHD_WORKERS = 8
"""saslauthd -n: one worker process per concurrent client."""
DEFAULT_SECONDS = 5.0
DEFAULT_PASS_SECONDS = 12.0
DEFAULT_ROUNDS = 3
CELL_WARMUP = 0.5
"""Requests in this lead-in of every cell are not recorded."""
START_DELAY = 0.2
"""Time the parent gives the client processes to receive their jobs."""
CELL_MAX_REQUESTS = 2_000_000
REQUEST_TIMEOUT = 10.0
PASS_REQUEST_TIMEOUT = 40.0
"""Section 2: longer than rimap's own 30 s, so saslauthd's answer is always seen."""
PASS_CONCURRENCY = 8
WRONG_EVERY = 5
"""One attempt in five is a wrong password (20 %), at a random place in each block of five."""
RETRIES = 2
COLD_MAX_ATTEMPTS = 4000
REPLAY_MAX_ATTEMPTS = 1_000_000
SASLIMAP_MAX_QUEUE = 10_000
"""imap.max_queue: generous, so no check is refused as "busy" by the benchmark's load."""

TARGET_HIT_RATIO = 1.0
TARGET_SUCCESS_P99_MS = 100.0
TARGET_FRACTION = 0.90
TARGET_MISS_RATIO = 1.0


# -- daemons ---------------------------------------------------------------------------


def saslimap_settings(
    dovecot: Dovecot,
    *,
    imap: Mapping[str, object] | None = None,
    cache: Mapping[str, object] | None = None,
) -> dict[str, dict[str, object]]:
    """Production defaults, except the IMAP server, a short drain and a generous queue.

    Logging stays at the production default (info: one line per check).
    """
    settings: dict[str, dict[str, object]] = {
        "server": {"drain_timeout": 2.0},
        "imap": {
            "url": dovecot.imap_url("imap"),  # STARTTLS, the recommended setting
            "ca_file": str(dovecot.ca_file),
            "max_queue": SASLIMAP_MAX_QUEUE,
            **(imap or {}),
        },
        "users": {"realm": "join", "allowed_domains": [DOMAIN]},
        "logging": {"level": "info"},
    }
    if cache:
        settings["cache"] = dict(cache)
    return settings


@dataclass(frozen=True)
class Target:
    """A daemon under test: its socket, how to find its processes, its IMAP server."""

    name: str
    socket: Path
    pids: Callable[[], list[int]]
    dovecot: Dovecot


def saslimap_target(name: str, daemon: SaslimapDaemon, dovecot: Dovecot) -> Target:
    def pids() -> list[int]:
        proc = daemon.proc
        return [proc.pid] if proc is not None and proc.poll() is None else []

    return Target(name, daemon.socket_path, pids, dovecot)


def saslauthd_target(name: str, daemon: RimapSaslauthd, dovecot: Dovecot) -> Target:
    workdir = str(daemon.workdir)
    return Target(name, daemon.mux_path, lambda: pids_matching("saslauthd", workdir), dovecot)


def warm(target: Target, frames: Sequence[bytes]) -> None:
    """Send every request once (caching it), then check each now answers OK."""
    exchange = Exchanger(str(target.socket), REQUEST_TIMEOUT)
    for round_ in ("warming", "checking"):
        for request in frames:
            if exchange(request) != OK:
                raise RuntimeError(f"{target.name}: {round_} got {exchange.last_error!r}")


# -- sections 1 and 3: cells -------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """The figures of one daemon at one concurrency."""

    daemon: str
    concurrency: int
    ok: int
    others: int
    seconds: float
    p50_ms: float
    p99_ms: float
    daemon_cpu: float
    client_cpu: float
    machine_cpu: float
    imap_logins: int
    """Logins Dovecot finished during the cell, lead-in included (0 for pure cache hits)."""
    samples: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _CellSum:
    """One daemon at one concurrency, added up over interleaved rounds."""

    daemon: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    others: int = 0
    seconds: float = 0.0
    daemon_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_cpu: float = 0.0
    imap_logins: int = 0
    samples: list[str] = field(default_factory=list)

    def cell(self) -> Cell:
        latencies = sorted(self.latencies)
        return Cell(
            daemon=self.daemon,
            concurrency=self.concurrency,
            ok=len(latencies),
            others=self.others,
            seconds=self.seconds,
            p50_ms=percentile(latencies, 0.50) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            daemon_cpu=self.daemon_cpu,
            client_cpu=self.client_cpu,
            machine_cpu=self.machine_cpu,
            imap_logins=self.imap_logins,
            samples=tuple(self.samples[:3]),
        )


def run_round(
    pool: ClientPool,
    target: Target,
    frames: tuple[bytes, ...],
    concurrency: int,
    seconds: float,
    into: _CellSum,
) -> None:
    """``concurrency`` client processes on ``target`` for ``seconds`` after a lead-in."""
    start_at = time.monotonic() + START_DELAY
    per_client = math.ceil(CELL_MAX_REQUESTS / concurrency)
    jobs = [
        CellJob(
            str(target.socket),
            frames,
            start_at,
            CELL_WARMUP,
            seconds,
            per_client,
            seed=random.getrandbits(32),
            timeout=REQUEST_TIMEOUT,
        )
        for _ in range(concurrency)
    ]
    logins0 = target.dovecot.auth_attempts()
    pool.submit(jobs)
    window_start = start_at + CELL_WARMUP
    time.sleep(max(0.0, window_start - time.monotonic()))
    daemon0, machine0 = process_cpu(target.pids()), machine_busy_cpu()
    time.sleep(max(0.0, window_start + seconds - time.monotonic()))
    daemon1, machine1 = process_cpu(target.pids()), machine_busy_cpu()
    parts = pool.collect_cells(concurrency, window_start + seconds + REQUEST_TIMEOUT + 10.0)
    time.sleep(0.05)  # Dovecot's log process writes a finished login a moment later
    for part in parts:
        into.latencies.extend(part.latencies)
        into.others += part.others
        into.client_cpu += part.cpu_seconds
        into.samples.extend(part.samples)
    start = min(part.window_start for part in parts)
    into.seconds += max(0.0, max(part.last_end for part in parts) - start)
    into.daemon_cpu += daemon1 - daemon0
    into.machine_cpu += machine1 - machine0
    into.imap_logins += target.dovecot.auth_attempts() - logins0


def run_cells(
    pool: ClientPool,
    targets: Sequence[Target],
    frames: tuple[bytes, ...],
    concurrency: int,
    seconds: float,
    rounds: int,
) -> list[Cell]:
    """Every target for ``seconds`` in all, in ``rounds`` interleaved turns (A B, B A, ...).

    Interleaving spreads slow drift and bursts of other work on the machine over
    all daemons instead of letting it land on one of them.
    """
    sums = {t.name: _CellSum(t.name, concurrency) for t in targets}
    for n in range(rounds):
        for target in targets if n % 2 == 0 else list(reversed(targets)):
            run_round(pool, target, frames, concurrency, seconds / rounds, sums[target.name])
    cells = [sums[t.name].cell() for t in targets]
    for cell in cells:
        say(
            f"    {cell.daemon} c={concurrency}: {cell.rate:,.1f} auths/s  "
            f"p50 {cell.p50_ms:.3f} ms  not OK {cell.others}"
        )
    return cells


CELL_HEADER = (
    "daemon",
    "conc",
    "auths/s",
    "p50 ms",
    "p99 ms",
    "not OK",
    "cores: daemon",
    "clients",
    f"machine (of {os.cpu_count()})",
    "client us/auth",
    "IMAP logins",
)


def cell_row(cell: Cell) -> tuple[str, ...]:
    secs = cell.seconds or math.nan
    per_auth = cell.client_cpu * 1e6 / cell.ok if cell.ok else math.nan
    return (
        cell.daemon,
        str(cell.concurrency),
        f"{cell.rate:,.0f}" if cell.rate >= 100 else f"{cell.rate:.1f}",
        f"{cell.p50_ms:.3f}",
        f"{cell.p99_ms:.3f}",
        str(cell.others),
        f"{cell.daemon_cpu / secs:.2f}",
        f"{cell.client_cpu / secs:.2f}",
        f"{cell.machine_cpu / secs:.2f}",
        f"{per_auth:.0f}",
        str(cell.imap_logins),
    )


def find_cell(cells: Sequence[Cell], daemon: str, concurrency: int) -> Cell | None:
    return next((c for c in cells if c.daemon == daemon and c.concurrency == concurrency), None)


# -- section 2: passes -------------------------------------------------------------------


def make_workload(
    creds: Sequence[tuple[bytes, bytes, bytes]], count: int, seed: int
) -> tuple[Attempt, ...]:
    """``count`` attempts on random users; one in each block of WRONG_EVERY is wrong.

    Blocks keep any prefix of the workload within one attempt of 20 % wrong.
    Every wrong attempt has a password of its own (a typo, an old password).
    """
    rng = random.Random(seed)
    out: list[Attempt] = []
    while len(out) < count:
        wrong_at = rng.randrange(WRONG_EVERY)
        for k in range(WRONG_EVERY):
            login, realm, password = rng.choice(creds)
            if k == wrong_at:
                bad = b"wrong-%016x" % rng.getrandbits(64)
                out.append(Attempt(encode(login, bad, SERVICE, realm), wrong=True))
            else:
                out.append(Attempt(encode(login, password, SERVICE, realm), wrong=False))
    return tuple(out[:count])


def keepratio(attempts: tuple[Attempt, ...]) -> tuple[Attempt, ...]:
    """Drop the last right (or wrong) attempts until one in WRONG_EVERY is wrong again.

    Leaving out unsettled attempts can upset the workload's ratio; this restores
    it (as far as whole attempts allow), keeping the order.
    """
    wrong = sum(a.wrong for a in attempts)
    right = len(attempts) - wrong
    keep_right = min(right, (WRONG_EVERY - 1) * wrong)
    keep_wrong = min(wrong, math.ceil(right / (WRONG_EVERY - 1)))
    out: list[Attempt] = []
    for a in attempts:
        if a.wrong and keep_wrong > 0:
            keep_wrong -= 1
            out.append(a)
        elif not a.wrong and keep_right > 0:
            keep_right -= 1
            out.append(a)
    return tuple(out)


@dataclass(frozen=True)
class PassFigures:
    """What one pass of section 2 measured."""

    daemon: str
    phase: str
    seconds: float
    attempts: int
    """Attempts taken (each sent at least once)."""
    wrong_attempts: int
    requests: int
    answered_in_window: int
    """OK or NO answers that arrived before the deadline."""
    ok_in_window: int
    success_ms: tuple[float, ...]
    """Sorted latencies of right-password requests answered OK."""
    failure_ms: tuple[float, ...]
    """Sorted latencies of wrong-password requests answered NO."""
    no_reply: int
    failed: int
    right_refused: int
    """Right passwords answered NO (saslauthd answers NO when IMAP fails too)."""
    wrong_accepted: int
    imap_logins: int
    client_cpu: float
    samples: tuple[str, ...]
    unsettled: frozenset[int]
    """Attempts whose last request did not get the expected verdict (OK, or NO if wrong)."""

    @property
    def rate(self) -> float:
        """Answered requests (OK or NO) per second of the pass."""
        return self.answered_in_window / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok_rate(self) -> float:
        return self.ok_in_window / self.seconds if self.seconds > 0 else 0.0


def summarize_pass(
    daemon: str,
    phase: str,
    seconds: float,
    deadline: float,
    parts: Sequence[PassResult],
    taken: int,
    attempts: Sequence[Attempt],
    imap_logins: int,
) -> PassFigures:
    success: list[float] = []
    failure: list[float] = []
    answered = ok_in_window = no_reply = failed = right_refused = wrong_accepted = requests = 0
    last: dict[int, bool] = {}  # attempt -> whether its latest request got the expected verdict
    for part in parts:
        for t0, t1, wrong, outcome, index in zip(
            part.starts, part.ends, part.wrong, part.outcomes, part.attempts, strict=True
        ):
            requests += 1
            last[index] = outcome == (NO if wrong else OK)
            ms = (t1 - t0) * 1000
            if outcome in (OK, NO) and t1 <= deadline:
                answered += 1
                ok_in_window += outcome == OK
            if outcome == NO_REPLY:
                no_reply += 1
            elif outcome == FAILED:
                failed += 1
            elif wrong:
                if outcome == NO:
                    failure.append(ms)
                else:
                    wrong_accepted += 1
            elif outcome == OK:
                success.append(ms)
            else:
                right_refused += 1
    wrong_attempts = sum(attempts[i % len(attempts)].wrong for i in range(taken))
    return PassFigures(
        daemon=daemon,
        phase=phase,
        seconds=seconds,
        attempts=taken,
        wrong_attempts=wrong_attempts,
        requests=requests,
        answered_in_window=answered,
        ok_in_window=ok_in_window,
        success_ms=tuple(sorted(success)),
        failure_ms=tuple(sorted(failure)),
        no_reply=no_reply,
        failed=failed,
        right_refused=right_refused,
        wrong_accepted=wrong_accepted,
        imap_logins=imap_logins,
        client_cpu=sum(p.cpu_seconds for p in parts),
        samples=tuple(s for p in parts for s in p.samples)[:3],
        unsettled=frozenset(i for i, settled in last.items() if not settled),
    )


def run_pass(
    pool: ClientPool,
    target: Target,
    phase: str,
    attempts: tuple[Attempt, ...],
    seconds: float,
    max_attempts: int,
) -> PassFigures:
    """PASS_CONCURRENCY client processes through ``attempts`` in order, for ``seconds``."""
    say(f"  {target.name}: {phase} ({len(attempts)} distinct attempts, {seconds:g} s) ...")
    pool.reset_counter()
    start_at = time.monotonic() + START_DELAY
    job = PassJob(
        str(target.socket),
        attempts,
        start_at,
        seconds,
        max_attempts,
        RETRIES,
        PASS_REQUEST_TIMEOUT,
    )
    logins0 = target.dovecot.auth_attempts()
    pool.submit([job] * PASS_CONCURRENCY)
    deadline = start_at + seconds
    parts = pool.collect_passes(PASS_CONCURRENCY, deadline + PASS_REQUEST_TIMEOUT + 10.0)
    taken = pool.taken()
    time.sleep(0.05)  # Dovecot's log process writes a finished login a moment later
    figures = summarize_pass(
        target.name,
        phase,
        seconds,
        deadline,
        parts,
        taken,
        attempts,
        target.dovecot.auth_attempts() - logins0,
    )
    say(
        f"    {figures.attempts} attempts, {figures.requests} requests, "
        f"{figures.rate:.1f} answered/s, drained {time.monotonic() - deadline:.1f} s after"
    )
    return figures


PASS_HEADER = (
    "daemon",
    "pass",
    "attempts",
    "wrong",
    "requests",
    "auths/s",
    "OK/s",
    "success ms p50 / p99 / max",
    "failure ms p50 / p99 / max",
    "no reply",
    "failed",
    "right->NO",
    "IMAP logins",
    "vs failure-free",
)


def _ms(values: Sequence[float], q: float) -> str:
    value = percentile(values, q)
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def pass_row(fig: PassFigures, baseline: PassFigures | None) -> tuple[str, ...]:
    fraction = fig.rate / baseline.rate if baseline is not None and baseline.rate else math.nan
    wrong_share = fig.wrong_attempts / fig.attempts if fig.attempts else math.nan
    return (
        fig.daemon,
        fig.phase,
        str(fig.attempts),
        f"{wrong_share:.0%}",
        str(fig.requests),
        f"{fig.rate:,.1f}",
        f"{fig.ok_rate:,.1f}",
        " / ".join(_ms(fig.success_ms, q) for q in (0.50, 0.99, 1.0)),
        " / ".join(_ms(fig.failure_ms, q) for q in (0.50, 0.99, 1.0)),
        str(fig.no_reply),
        str(fig.failed),
        str(fig.right_refused + fig.wrong_accepted),
        str(fig.imap_logins),
        "-" if math.isnan(fraction) else f"{fraction:.1%}",
    )


# -- reporting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One target: a measured value, the goal, and whether it was met (None: not measured)."""

    label: str
    value: str
    target: str
    passed: bool | None

    @property
    def word(self) -> str:
        if self.target == "(info)":
            return ""
        return "n/a" if self.passed is None else "PASS" if self.passed else "MISS"


@dataclass
class Section:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    verdicts: list[Verdict]
    notes: list[str]


def verdict(label: str, value: float, target: str, ok: Callable[[float], bool]) -> Verdict:
    """A ratio line; ``target`` "(info)" for a figure with no target."""
    if math.isnan(value):
        return Verdict(label, "nan", target, None)
    return Verdict(label, f"{value:.2f}", target, None if target == "(info)" else ok(value))


def text_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])]
        cells += [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def text_section(section: Section) -> str:
    lines = [f"== {section.title}", *text_table(section.header, section.rows), ""]
    for v in section.verdicts:
        lines.append(f"{v.label}: {v.value}  target {v.target}  {v.word}".rstrip())
    lines += section.notes
    return "\n".join(lines)


def markdown_section(section: Section) -> str:
    lines = [f"## {section.title}", ""]
    lines += ["| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
    lines += ["| " + " | ".join(row) + " |" for row in section.rows]
    lines += ["", "| ratio / figure | value | target | verdict |", "|---|---|---|---|"]
    lines += [f"| {v.label} | {v.value} | {v.target} | {v.word} |" for v in section.verdicts]
    if section.notes:
        lines += ["", *(f"- {note}" for note in section.notes)]
    return "\n".join(lines) + "\n"


# -- the three sections --------------------------------------------------------------------


SASLIMAP_HITS = "saslimap (cache)"
SASLAUTHD_HITS = "saslauthd -c"
FLOOR_HITS = "floor: uvloop, no checks"


def start_floor(root: Path, dovecot: Dovecot, cleanup: contextlib.ExitStack) -> Target:
    """bench.bare_mux in a process of its own: the socket work alone, for reference."""
    path = root / "floor.sock"
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_mux", str(path)])
    cleanup.callback(terminate, proc, 5)
    deadline = time.monotonic() + 10
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("bench.bare_mux did not start")
        time.sleep(0.02)
    return Target(FLOOR_HITS, path, lambda: [proc.pid] if proc.poll() is None else [], dovecot)


def section_hits(
    pool: ClientPool,
    root: Path,
    dovecot: Dovecot,
    frames: tuple[bytes, ...],
    seconds: float,
    rounds: int,
    cleanup: contextlib.ExitStack,
) -> Section:
    sim = SaslimapDaemon(root / "s1", saslimap_settings(dovecot))
    cleanup.callback(sim.stop)
    sad = RimapSaslauthd(
        root / "a1", dovecot.host, dovecot.imap_port, cache=True, threads=SASLAUTHD_WORKERS
    )
    cleanup.callback(sad.stop)
    say("section 1: cache hits; starting saslimap (default cache) and saslauthd -c ...")
    sim.start()
    sad.start()
    targets = [
        saslimap_target(SASLIMAP_HITS, sim, dovecot),
        saslauthd_target(SASLAUTHD_HITS, sad, dovecot),
        start_floor(root, dovecot, cleanup),
    ]
    for target in targets:
        warm(target, frames)
    cells: list[Cell] = []
    for conc in (1, CLIENTS):
        say(f"  c={conc}: {seconds:g} s each in {rounds} interleaved rounds ...")
        cells += run_cells(pool, targets, frames, conc, seconds, rounds)
    sim.stop()
    sad.stop()
    verdicts = []
    for conc in (1, CLIENTS):
        a, b = find_cell(cells, SASLIMAP_HITS, conc), find_cell(cells, SASLAUTHD_HITS, conc)
        value = ratio(a.rate if a else None, b.rate if b else None)
        verdicts.append(
            verdict(
                f"c={conc} auths/s saslimap / saslauthd",
                value,
                f">= {TARGET_HIT_RATIO:.1f}",
                lambda v: v >= TARGET_HIT_RATIO,
            )
        )
    for conc in (1, CLIENTS):
        a, b = find_cell(cells, FLOOR_HITS, conc), find_cell(cells, SASLAUTHD_HITS, conc)
        value = ratio(a.rate if a else None, b.rate if b else None)
        verdicts.append(
            verdict(f"c={conc} auths/s floor / saslauthd", value, "(info)", lambda v: True)
        )
    notes = [
        "cores = CPU seconds / window seconds: daemon (saslimap's process, or all saslauthd "
        "processes), the client processes together, and the whole machine (busy time).",
        f"{FLOOR_HITS}: bench.bare_mux, saslimap's socket work per request (uvloop, "
        "half-close and drain) with no checking, caching, metrics or logging: the most a "
        "daemon built this way reaches here.",
        *(f"not-OK sample {c.daemon} c={c.concurrency}: {s}" for c in cells for s in c.samples),
    ]
    return Section(
        "1. Cache hits (right passwords, already cached)",
        CELL_HEADER,
        [cell_row(c) for c in cells],
        verdicts,
        notes,
    )


SIM_WARM = "saslimap STARTTLS warm=2"
SIM_COLD = "saslimap STARTTLS warm=0"
SAD_PLAIN = "saslauthd plaintext"


def section_misses(
    pool: ClientPool,
    root: Path,
    dovecot: Dovecot,
    frames: tuple[bytes, ...],
    seconds: float,
    rounds: int,
    cleanup: contextlib.ExitStack,
) -> Section:
    no_cache = {"max_entries": 0}
    warm_d = SaslimapDaemon(
        root / "s3w",
        saslimap_settings(dovecot, imap={"warm_connections": 2}, cache=no_cache),
    )
    cold_d = SaslimapDaemon(
        root / "s3c",
        saslimap_settings(dovecot, imap={"warm_connections": 0}, cache=no_cache),
    )
    sad = RimapSaslauthd(
        root / "a3", dovecot.host, dovecot.imap_port, cache=False, threads=SASLAUTHD_WORKERS
    )
    for stop in (warm_d.stop, cold_d.stop, sad.stop):
        cleanup.callback(stop)
    say("section 3: cache misses at c=1; starting two saslimap (no cache) and saslauthd ...")
    warm_d.start()
    cold_d.start()
    sad.start()
    targets = [
        saslimap_target(SIM_WARM, warm_d, dovecot),
        saslimap_target(SIM_COLD, cold_d, dovecot),
        saslauthd_target(SAD_PLAIN, sad, dovecot),
    ]
    exchange_checks = frames[:1]
    for target in targets:
        warm(target, exchange_checks)  # answers at all (no cache: nothing is kept)
    say(f"  c=1: {seconds:g} s each in {rounds} interleaved rounds ...")
    cells = run_cells(pool, targets, frames, 1, seconds, rounds)
    for stop in (warm_d.stop, cold_d.stop, sad.stop):
        stop()
    w, c, s = (find_cell(cells, name, 1) for name in (SIM_WARM, SIM_COLD, SAD_PLAIN))
    verdicts = [
        verdict(
            "c=1 p50 saslimap STARTTLS warm / saslauthd plaintext",
            ratio(w.p50_ms if w else None, s.p50_ms if s else None),
            f"<= {TARGET_MISS_RATIO:.1f}",
            lambda v: v <= TARGET_MISS_RATIO,
        ),
        verdict(
            "c=1 p50 saslimap STARTTLS no warm / saslauthd plaintext",
            ratio(c.p50_ms if c else None, s.p50_ms if s else None),
            "(info)",
            lambda v: True,
        ),
        verdict(
            "c=1 p50 saslimap warm / no warm",
            ratio(w.p50_ms if w else None, c.p50_ms if c else None),
            "(info)",
            lambda v: True,
        ),
    ]
    notes = [f"not-OK sample {c.daemon}: {s}" for c in cells for s in c.samples]
    return Section(
        "3. Cache misses at concurrency 1 (every request an IMAP login)",
        CELL_HEADER,
        [cell_row(c) for c in cells],
        verdicts,
        notes,
    )


SIM_PASS = "saslimap"
SAD_PASS = "saslauthd -c"


def section_failures(
    pool: ClientPool,
    root: Path,
    users: dict[str, str],
    creds: Sequence[tuple[bytes, bytes, bytes]],
    tls: TlsFiles,
    seconds: float,
    pass_seconds: float,
    cleanup: contextlib.ExitStack,
) -> Section:
    # One Dovecot each: the auth penalty is per client IP, and both daemons log in
    # from 127.0.0.1, so on a shared Dovecot one's failures would delay the other.
    dc_sim = Dovecot(root / "da", users, tls=tls, fast_failures=False)
    dc_sad = Dovecot(root / "db", users, tls=tls, fast_failures=False)
    cleanup.callback(dc_sim.stop)
    cleanup.callback(dc_sad.stop)
    say("section 2: wrong passwords; starting two Dovecots with default settings ...")
    dc_sim.start()
    dc_sad.start()
    sim = SaslimapDaemon(root / "s2", saslimap_settings(dc_sim))
    cleanup.callback(sim.stop)
    sad = RimapSaslauthd(
        root / "a2", dc_sad.host, dc_sad.imap_port, cache=True, threads=SASLAUTHD_WORKERS
    )
    cleanup.callback(sad.stop)
    sim.start()  # no probe request: the caches must start empty
    sad.start()
    t_sim = saslimap_target(SIM_PASS, sim, dc_sim)
    t_sad = saslauthd_target(SAD_PASS, sad, dc_sad)
    workload = make_workload(creds, COLD_MAX_ATTEMPTS, seed=20)

    # saslauthd's cold pass first: saslimap's measured pass must follow its own cold
    # pass within cache.negative_ttl (60 s), and saslauthd's drain is the long one.
    cold_sad = run_pass(pool, t_sad, "cold", workload, pass_seconds, len(workload))
    cold_sim = run_pass(pool, t_sim, "cold", workload, pass_seconds, len(workload))
    reach = min(cold_sad.attempts, cold_sim.attempts)
    # Only attempts both cold passes settled (their last request got the expected
    # verdict) are warm: an attempt that ended without a verdict is in no cache.
    unsettled = {
        d.daemon: sorted(i for i in d.unsettled if i < reach) for d in (cold_sad, cold_sim)
    }
    left_out = set(unsettled[SAD_PASS]) | set(unsettled[SIM_PASS])
    replay = keepratio(tuple(a for i, a in enumerate(workload[:reach]) if i not in left_out))
    right_only = tuple(a for a in replay if not a.wrong)
    rows = [pass_row(cold_sad, None), pass_row(cold_sim, None)]
    measured: dict[str, tuple[PassFigures, PassFigures]] = {}
    if right_only and len(right_only) < len(replay):
        for target in (t_sim, t_sad):
            free = run_pass(pool, target, "failure-free", right_only, seconds, REPLAY_MAX_ATTEMPTS)
            mixed = run_pass(pool, target, "measured", replay, pass_seconds, REPLAY_MAX_ATTEMPTS)
            measured[target.name] = (free, mixed)
            rows += [pass_row(free, None), pass_row(mixed, free)]
    sim.stop()
    sad.stop()
    dc_sim.stop()
    dc_sad.stop()

    verdicts: list[Verdict] = []
    for name, info in ((SIM_PASS, False), (SAD_PASS, True)):
        if name not in measured:
            verdicts.append(Verdict(f"{name}: measured pass", "not run", "-", None))
            continue
        free, mixed = measured[name]
        tag = " (reference)" if info else ""
        verdicts.append(
            verdict(
                f"{name}: success p99 ms, measured pass{tag}",
                percentile(mixed.success_ms, 0.99),
                "(info)" if info else f"< {TARGET_SUCCESS_P99_MS:.0f}",
                lambda v: v < TARGET_SUCCESS_P99_MS,
            )
        )
        verdicts.append(
            verdict(
                f"{name}: auths/s measured / failure-free{tag}",
                ratio(mixed.rate, free.rate),
                "(info)" if info else f">= {TARGET_FRACTION:.2f}",
                lambda v: v >= TARGET_FRACTION,
            )
        )
    wrong_in_replay = sum(a.wrong for a in replay)
    notes = [
        f"Workload: attempts on random users of {USER_COUNT}; 1 in {WRONG_EVERY} attempts has a "
        f"wrong password of its own, sent {1 + RETRIES} times (attempt + {RETRIES} retries), so "
        f"{RETRIES + 1}/{RETRIES + 1 + WRONG_EVERY - 1} of requests carry a wrong password. "
        f"Concurrency {PASS_CONCURRENCY} client processes; saslauthd -n {SASLAUTHD_WORKERS}.",
        f"cold: fresh daemon, empty caches, at most {pass_seconds:g} s (no request starts "
        "later; those in progress finish and count in the latencies, not in auths/s).",
        f"failure-free and measured passes replay, in a loop, the first {reach} attempts of the "
        "workload (the smaller of the two cold passes' reach, so both daemons replay the same "
        "attempts and every wrong password was already tried once), less the "
        f"{len(left_out)} whose last request got no verdict in a cold pass (saslimap: "
        f"{len(unsettled[SIM_PASS])}, saslauthd: {len(unsettled[SAD_PASS])}): those are in no "
        "cache; then the last right (or wrong) ones are dropped until 1 in "
        f"{WRONG_EVERY} is wrong again. That leaves {len(replay)} attempts, {wrong_in_replay} "
        f"wrong. failure-free: only the right ones, {seconds:g} s; measured: all, "
        f"{pass_seconds:g} s.",
        "auths/s = OK + NO answers before the deadline per second; 'no reply' = closed "
        "without an answer (saslimap's temporary failure, Postfix 454); 'right->NO' = right "
        "password refused or wrong one accepted; IMAP logins = Dovecot's finished "
        "authentications during the pass (its log; may include logins a daemon gave up on "
        "in the previous pass that Dovecot finished late).",
        *(
            f"sample {f.daemon} {f.phase}: {s}"
            for f in (cold_sad, cold_sim, *(x for pair in measured.values() for x in pair))
            for s in f.samples
        ),
    ]
    return Section(
        "2. 20 % wrong passwords, Dovecot defaults (2 s failure delay, per-IP penalty), c=8",
        PASS_HEADER,
        rows,
        verdicts,
        notes,
    )


# -- orchestration -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_bench", description=__doc__)
    parser.add_argument(
        "--seconds",
        type=seconds_arg(0.5, 60),
        default=DEFAULT_SECONDS,
        help="measured seconds per cell (sections 1, 3; split over the rounds) and per "
        "failure-free pass (default 5)",
    )
    parser.add_argument(
        "--pass-seconds",
        type=seconds_arg(1, 60),
        default=DEFAULT_PASS_SECONDS,
        help="bound on each cold and measured pass of section 2 (default 12)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        choices=range(1, 11),
        default=DEFAULT_ROUNDS,
        metavar="N",
        help="split each cell of sections 1 and 3 into N interleaved rounds (default 3)",
    )
    parser.add_argument(
        "--only",
        choices=("hits", "failures", "misses"),
        action="append",
        help="run only this section (repeatable; default: all three)",
    )
    parser.add_argument("--out", type=Path, help="also write the results as Markdown here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs) on exit"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    users = make_users(USER_COUNT)
    creds = as_credentials(users)
    frames = tuple(encode(login, pw, SERVICE, realm) for login, realm, pw in creds)
    root = work_root("cb")
    began = time.monotonic()
    load_before = _loadavg()
    sections: list[Section] = []
    cleanup = contextlib.ExitStack()
    try:
        if not args.keep:
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        say(f"work directory {root}; starting {CLIENTS} client processes ...")
        pool = ClientPool(CLIENTS)
        cleanup.callback(pool.close)
        tls = make_tls(root / "tls")
        # Sections 1 and 3 send only right passwords: one Dovecot with fast failures.
        dovecot = Dovecot(root / "d0", users, tls=tls, fast_failures=True)
        cleanup.callback(dovecot.stop)
        dovecot.start()
        # The failure section (2) brings Dovecots of its own; this one idles meanwhile.
        builds: dict[str, Callable[[], Section]] = {
            "hits": lambda: section_hits(
                pool, root, dovecot, frames, args.seconds, args.rounds, cleanup
            ),
            "failures": lambda: section_failures(
                pool, root, users, creds, tls, args.seconds, args.pass_seconds, cleanup
            ),
            "misses": lambda: section_misses(
                pool, root, dovecot, frames, args.seconds, args.rounds, cleanup
            ),
        }
        for name, build in builds.items():
            if args.only and name not in args.only:
                continue
            sections.append(build())
            print(text_section(sections[-1]) + "\n", flush=True)
    finally:
        with no_interrupts():
            say("stopping daemons and client processes ...")
            cleanup.close()
    wall = time.monotonic() - began
    load = f"{load_before} before, {_loadavg()} after ({os.cpu_count()} CPUs)"
    print(f"load average {load}; wall time {wall:.0f} s; saslimap source: {_source_state()}")
    if args.out is not None:
        meta = [
            ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
            ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"),
            ("Dovecot", _dovecot_version()),
            ("saslimap source", _source_state()),
            ("users", f"{USER_COUNT} in {DOMAIN}"),
            (
                "clients",
                "one process per concurrent client, fresh Unix connection per request, "
                "whole counted reply read",
            ),
            ("load average", load),
            ("wall time", f"{wall:.0f} s"),
        ]
        text = ["# saslimap caches and warm connections vs saslauthd rimap", ""]
        text += [f"- {key}: {value}" for key, value in meta]
        text += ["", *(markdown_section(s) for s in sections)]
        args.out.write_text("\n".join(text), encoding="utf-8")
        say(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line."""
    return run_main(_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
