"""Client processes that load a saslauthd-protocol ("mux") socket, for the benchmarks.

This module owns the load generator of :mod:`bench.cache_bench`: a pool of
long-lived client processes (spawned once, so no cell pays for process start-up
or imports), the one request/reply exchange they repeat (a fresh Unix-socket
connection per request, as libsasl does, reading the whole counted reply), and
two kinds of job:

- :class:`CellJob`: the same kind of request over and over for a fixed time
  (random pick from a list of ready-made requests), recording each latency;
- :class:`PassJob`: a shared, ordered list of login *attempts* (a right
  password, or a wrong one that is retried), taken in order by all processes
  through a shared counter, recording every request's start, end, kind and
  outcome.

Only the standard library is used on the hot path.  Every exchange has a
socket timeout and every job a deadline, and the parent gives up on a process
that does not report in time; :meth:`ClientPool.close` ends them all.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import signal
import socket
import struct
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

# Outcomes of one exchange (stored in an array of signed bytes).
OK = 0
"""The reply starts with "OK" (libsasl's own test)."""
NO = 1
"""Any other reply (saslauthd and saslimap answer "NO ...")."""
NO_REPLY = 2
"""The daemon closed the connection without a reply (saslimap's temporary failure)."""
FAILED = 3
"""Connect/send/receive error or timeout."""

OUTCOME_NAMES = ("ok", "no", "no reply", "failed")
MAX_SAMPLES = 3
_COUNTED = struct.Struct(">H")


def encode(login: bytes, password: bytes, service: bytes, realm: bytes) -> bytes:
    """A saslauthd request: four counted strings (2-byte big-endian length, then bytes)."""
    return b"".join(_COUNTED.pack(len(f)) + f for f in (login, password, service, realm))


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


class Exchanger:
    """One request on a fresh connection, the whole counted reply read back.

    The socket stays blocking (no per-call poll) and is bounded by the kernel's
    SO_RCVTIMEO/SO_SNDTIMEO instead; a blocking connect also waits for room in a
    full listen backlog rather than failing at once as a non-blocking one would.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeval = _timeval(timeout)
        self.last_error = ""

    def __call__(self, request: bytes) -> int:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self.timeval)
            sock.connect(self.path)
            sock.sendall(request)
            buf = b""
            # saslauthd writes the length and the text separately: read until the
            # 2-byte length is satisfied.
            while len(buf) < 2 or len(buf) < 2 + ((buf[0] << 8) | buf[1]):
                chunk = sock.recv(1024)
                if not chunk:
                    self.last_error = f"closed after {len(buf)} reply bytes"
                    return NO_REPLY
                buf += chunk
        except OSError as err:
            self.last_error = f"{type(err).__name__}: {err}"
            return FAILED
        finally:
            sock.close()
        if buf[2:4] == b"OK":
            return OK
        self.last_error = buf[2:80].decode("ascii", "replace")
        return NO


# -- jobs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CellJob:
    """Random picks from ``requests`` for ``seconds`` after a ``warmup`` lead-in."""

    socket: str
    requests: tuple[bytes, ...]
    start_at: float
    """CLOCK_MONOTONIC time (system-wide on Linux) at which every process begins."""
    warmup: float
    seconds: float
    max_requests: int
    seed: int
    timeout: float


@dataclass
class CellResult:
    """What one process saw inside the measured window of a cell."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    """Seconds per OK answer to a request started inside the window."""
    others: int = 0
    """Requests inside the window not answered OK."""
    samples: list[str] = field(default_factory=list)
    window_start: float = 0.0
    last_end: float = 0.0
    cpu_seconds: float = 0.0
    """CPU (user + system) this process used inside the window."""


@dataclass(frozen=True)
class Attempt:
    """One login attempt of a workload: a wrong one is sent ``1 + retries`` times."""

    request: bytes
    wrong: bool


@dataclass(frozen=True)
class PassJob:
    """Attempts taken in order (shared counter) until ``seconds`` or ``max_attempts``.

    Attempt number ``i`` is ``attempts[i % len(attempts)]``, so a short list is
    replayed in a loop.  No request starts after the deadline; one in progress
    is allowed to finish (it is bounded by ``timeout``).
    """

    socket: str
    attempts: tuple[Attempt, ...]
    start_at: float
    seconds: float
    max_attempts: int
    retries: int
    timeout: float


@dataclass
class PassResult:
    """Every request one process made in a pass."""

    starts: array[float] = field(default_factory=lambda: array("d"))
    ends: array[float] = field(default_factory=lambda: array("d"))
    wrong: array[int] = field(default_factory=lambda: array("b"))
    outcomes: array[int] = field(default_factory=lambda: array("b"))
    attempts: array[int] = field(default_factory=lambda: array("q"))
    """The attempt number each request belongs to (one process makes all of an attempt's)."""
    samples: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class JobFailed:
    """A client process hit an unexpected exception (a bug here, not a daemon error)."""

    text: str


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def run_cell(job: CellJob) -> CellResult:
    """Body of one client process for a cell."""
    exchange = Exchanger(job.socket, job.timeout)
    choice = random.Random(job.seed).choice
    requests = job.requests
    clock = time.monotonic
    out = CellResult()
    _sleep_until(job.start_at)
    window_start = job.start_at + job.warmup
    stop_at = window_start + job.seconds
    while clock() < window_start:  # lead-in: not recorded
        if exchange(choice(requests)) != OK:
            time.sleep(0.01)
    out.window_start = out.last_end = clock()
    cpu0 = time.process_time()
    latencies = out.latencies
    count = 0
    while count < job.max_requests:
        t0 = clock()
        if t0 >= stop_at:
            break
        outcome = exchange(choice(requests))
        t1 = clock()
        count += 1
        if outcome == OK:
            latencies.append(t1 - t0)
        else:
            out.others += 1
            if len(out.samples) < MAX_SAMPLES:
                out.samples.append(f"{OUTCOME_NAMES[outcome]}: {exchange.last_error}")
            time.sleep(0.01)  # a dead daemon must not turn this into a busy loop
        out.last_end = t1
    out.cpu_seconds = time.process_time() - cpu0
    return out


def run_pass(job: PassJob, counter: Any) -> PassResult:
    """Body of one client process for a pass (``counter`` is shared by all processes)."""
    exchange = Exchanger(job.socket, job.timeout)
    attempts = job.attempts
    clock = time.monotonic
    lock = counter.get_lock()
    out = PassResult()
    _sleep_until(job.start_at)
    stop_at = job.start_at + job.seconds
    cpu0 = time.process_time()
    while clock() < stop_at:
        with lock:
            index = counter.value
            if index >= job.max_attempts:
                break
            counter.value = index + 1
        attempt = attempts[index % len(attempts)]
        sends = 1 + (job.retries if attempt.wrong else 0)
        for n in range(sends):
            t0 = clock()
            if n and t0 >= stop_at:
                break  # the first send of a taken attempt always goes out
            outcome = exchange(attempt.request)
            t1 = clock()
            out.starts.append(t0)
            out.ends.append(t1)
            out.wrong.append(1 if attempt.wrong else 0)
            out.outcomes.append(outcome)
            out.attempts.append(index)
            if outcome >= NO_REPLY and len(out.samples) < MAX_SAMPLES:
                out.samples.append(f"{OUTCOME_NAMES[outcome]}: {exchange.last_error}")
    out.cpu_seconds = time.process_time() - cpu0
    return out


def _serve(conn: Connection, counter: Any) -> None:
    """A pool process: run jobs from the parent until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        result: CellResult | PassResult | JobFailed
        try:
            if isinstance(job, CellJob):
                result = run_cell(job)
            elif isinstance(job, PassJob):
                result = run_pass(job, counter)
            else:
                result = JobFailed(f"unknown job {type(job).__name__}")
        except Exception as err:  # reported to the parent, which raises
            result = JobFailed(f"{type(err).__name__}: {err}")
        conn.send(result)


class ClientPool:
    """``size`` spawned client processes, reused for every cell and pass."""

    def __init__(self, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.counter: Any = ctx.Value("q", 0)
        self._conns: list[Connection] = []
        self._procs: list[SpawnProcess] = []
        try:
            for _ in range(size):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, self.counter), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self._procs)

    def submit(self, jobs: Sequence[CellJob | PassJob]) -> None:
        """Hand one job to each of the first ``len(jobs)`` processes (they start at once)."""
        if len(jobs) > self.size:
            raise ValueError(f"{len(jobs)} jobs for {self.size} client processes")
        for conn, job in zip(self._conns, jobs, strict=False):
            conn.send(job)

    def _collect(self, count: int, deadline: float) -> list[object]:
        results: list[object] = []
        for conn, proc in zip(self._conns[:count], self._procs[:count], strict=True):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not conn.poll(remaining):
                raise TimeoutError("a client process did not report before the deadline")
            try:
                result = conn.recv()
            except EOFError:
                raise RuntimeError(f"client process died (exit {proc.exitcode})") from None
            if isinstance(result, JobFailed):
                raise RuntimeError(f"client process failed: {result.text}")
            results.append(result)
        return results

    def collect_cells(self, count: int, deadline: float) -> list[CellResult]:
        """The results of ``count`` submitted cell jobs."""
        return [r for r in self._collect(count, deadline) if isinstance(r, CellResult)]

    def collect_passes(self, count: int, deadline: float) -> list[PassResult]:
        """The results of ``count`` submitted pass jobs."""
        return [r for r in self._collect(count, deadline) if isinstance(r, PassResult)]

    def reset_counter(self) -> None:
        """Start the next pass at attempt 0."""
        with self.counter.get_lock():
            self.counter.value = 0

    def taken(self) -> int:
        """Attempts taken (each one at least sent once) since :meth:`reset_counter`."""
        with self.counter.get_lock():
            return int(self.counter.value)

    def close(self) -> None:
        """Stop every process (politely, then by force)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a process that already died
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=2.0)
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2.0)
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self._procs.clear()
