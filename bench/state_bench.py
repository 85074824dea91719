"""What saslimap's shared state in Redis (issue 16) costs and saves, against saslauthd rimap.

This module owns a benchmark in three sections, each printing one table and
its ratios, with PASS/MISS where issue 16 set a target (it asserts nothing).
Everything runs in one go against one real Dovecot (STARTTLS for saslimap,
plaintext for saslauthd, fast failures, generated users) and one real
redis-server reached over a Unix socket, as on a host running its own Redis:

1. Cache hits on one host.  ``saslimap serve`` without ``[state]``, the same
   with ``[state]`` on the Redis, and ``saslauthd -a rimap -c``, all warmed
   first so every request is a right password already in the host's own
   cache.  Auths/s and p50/p99 at concurrency 1 and 8, in interleaved rounds
   (as :mod:`bench.cache_bench`).  A local hit never waits for Redis, so the
   ratio with/without ``[state]`` should be about 1.
2. The cross-host case.  Two saslimap daemons sharing the Redis (hosts A and
   B), and two ``saslauthd -a rimap -c`` (each its own cache, as every host
   has today).  Every one of N users is verified once through host A; then
   host B's first check of each is timed, one at a time, and the logins
   Dovecot finished during B's pass are counted: none for saslimap (the
   shared level answers), one per user for saslauthd.
3. Cache misses at concurrency 1.  saslimap without and with ``[state]`` (and
   ``saslauthd -a rimap`` without cache, for reference) on users each daemon
   has never seen, so every check is an IMAP login; with ``[state]`` it also
   pays the admit script's round trip before the login, and the settle after
   the answer: off the client's path, not off the daemon's CPU, hence the CPU
   per check printed with sections 2 and 3.

Clients are separate processes (:mod:`bench.mux_load`) opening a fresh
Unix-socket connection per request, as libsasl does.  Every cell and pass has
a deadline, and every process started here (Dovecot with its children,
saslauthd with its workers, redis-server, the daemons and clients) is stopped
on exit, Ctrl-C or error.  ``[state]`` keeps its production deadline (50 ms)
unless ``--state-timeout`` says otherwise: a Redis answer that misses it turns
sharing off on that host for at least ``retry_interval`` (1 s), so each
section prints the outages its daemons logged, with their reasons.

Run: ``.venv/bin/python -m bench.state_bench [--seconds N] [--rounds N] [--users N]
[--state-timeout S] [--only hits|cross|misses] [--out FILE] [--keep]``
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import secrets
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.auth_bench import (
    DOMAIN,
    _dovecot_version,
    _loadavg,
    _source_state,
    as_credentials,
    make_users,
    percentile,
    process_cpu,
)
from bench.cache_bench import (
    CELL_HEADER,
    CLIENTS,
    SASLAUTHD_WORKERS,
    SERVICE,
    Cell,
    Section,
    Target,
    Verdict,
    cell_row,
    find_cell,
    markdown_section,
    run_cells,
    saslauthd_target,
    saslimap_settings,
    saslimap_target,
    text_section,
    verdict,
    warm,
)
from bench.common import no_interrupts, ratio, run_main, say, seconds_arg, work_root
from bench.mux_load import OK, Attempt, ClientPool, PassJob, PassResult, encode
from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.redis import Redis
from devstack.saslauthd import RimapSaslauthd
from devstack.tls import make_tls
from mailgate.config import StateConfig

DEFAULT_SECONDS = 5.0
DEFAULT_ROUNDS = 3
DEFAULT_USERS = 200
"""Section 2's users, verified through host A then checked on host B (section 1 uses them too)."""
REQUEST_TIMEOUT = 10.0
"""Longer than saslimap's IMAP deadlines (5 s), so each daemon's own answer is seen."""
START_DELAY = 0.2
"""Time the parent gives a client process to receive its job."""
LOG_LAG = 0.1
"""Dovecot's log process writes a finished login a moment after answering."""
SETTLE = 0.5
"""Host A records a verdict in Redis just after answering: B's pass waits this long."""
LEAD_IN = 5
"""Section 3: unmeasured misses per daemon first (TLS session set-up, Redis connection)."""
MISS_USERS_PER_SECOND = 400
"""Section 3's never-seen users per measured second (above any rate a login reaches here)."""

STATE_TIMEOUT = StateConfig().timeout
"""state.timeout: measure what production runs with."""

TARGET_HIT_RATIO = 0.95
"""Issue 16 §7: cache-hit throughput with Redis configured against memory state."""
TARGET_SHARED_P50_MS = 1.0
"""Issue 16 §7: a cache miss answered from the shared level, p50."""


# -- daemons ---------------------------------------------------------------------------


def write_secret(path: Path) -> Path:
    """The hosts' shared secret: 64 hex digits, mode 0600 (as saslimap demands)."""
    path.write_text(os.urandom(32).hex(), encoding="ascii")
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Store:
    """The Redis every saslimap with ``[state]`` uses, and how."""

    redis: Redis
    secret: Path
    timeout: float
    """``state.timeout``: the production default unless ``--state-timeout`` says otherwise."""


def shared_saslimap(workdir: Path, dovecot: Dovecot, store: Store, prefix: str) -> SaslimapDaemon:
    """A saslimap with ``[state]`` on the store's Redis, under ``prefix``.

    Each group of hosts gets a key prefix of its own, so no section sees what an
    earlier one left in Redis.
    """
    settings = saslimap_settings(dovecot)
    settings["state"] = {
        "url": store.redis.unix_url,
        "secret_file": str(store.secret),
        "key_prefix": prefix,
        "timeout": store.timeout,
    }
    return SaslimapDaemon(workdir, settings)


def state_up(daemon: SaslimapDaemon) -> bool:
    """Whether the daemon reports sharing (``saslimap_state_up`` 1 on its metrics page)."""
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as page:
            return "saslimap_state_up 1.0" in page.read().decode()
    except OSError:
        return False


def wait_sharing(*daemons: SaslimapDaemon, timeout: float = 15.0) -> None:
    """Wait until every daemon shares: a check made before would be this host's alone."""
    deadline = time.monotonic() + timeout
    while not all(state_up(d) for d in daemons):
        if time.monotonic() > deadline:
            raise TimeoutError("a saslimap never reported saslimap_state_up 1")
        time.sleep(0.05)


def outages(daemon: SaslimapDaemon) -> list[str]:
    """Why the daemon found Redis unavailable, once per outage (it warns once for each).

    Each outage means this host decided alone for a while (``retry_interval``, 1 s, at
    least): what it verified meanwhile is not in Redis, so another host asks IMAP again.
    """
    marker = "shared state "
    found = []
    for line in daemon.log_text().splitlines():
        _, sep, rest = line.partition(marker)
        if sep and " unavailable (" in rest:
            found.append(rest.partition(" unavailable (")[2].partition("); using")[0])
    return found


def outage_note(hosts: Sequence[tuple[str, SaslimapDaemon]]) -> str:
    """One line: each host's ``saslimap_state_up`` now, and its outages with their reasons."""
    parts = []
    for name, daemon in hosts:
        seen = outages(daemon)
        why = f" ({'; '.join(seen)})" if seen else ""
        parts.append(f"{name}: saslimap_state_up {int(state_up(daemon))}, outages {len(seen)}{why}")
    return "[state] at the end: " + "; ".join(parts) + "."


def start_one_host(
    root: Path,
    section: str,
    dovecot: Dovecot,
    store: Store,
    sad_cache: bool,
    cleanup: contextlib.ExitStack,
) -> tuple[SaslimapDaemon, SaslimapDaemon, RimapSaslauthd]:
    """Sections 1 and 3: saslimap without and with ``[state]``, and saslauthd, started.

    Returns once the saslimap with ``[state]`` shares.  Each is stopped by
    ``cleanup`` too, should the section not get to stop them itself.
    """
    plain = SaslimapDaemon(root / f"s{section}m", saslimap_settings(dovecot))
    shared = shared_saslimap(root / f"s{section}r", dovecot, store, f"sb{section}:")
    sad = RimapSaslauthd(
        root / f"a{section}",
        dovecot.host,
        dovecot.imap_port,
        cache=sad_cache,
        threads=SASLAUTHD_WORKERS,
    )
    for stop in (plain.stop, shared.stop, sad.stop):
        cleanup.callback(stop)
    plain.start()
    shared.start()
    sad.start()
    wait_sharing(shared)
    return plain, shared, sad


# -- one check per request, in order -------------------------------------------------------


@dataclass
class Walk:
    """One daemon's checks, each request sent once and in order, by one client process."""

    daemon: str
    phase: str
    latencies: list[float] = field(default_factory=list)
    """Seconds per OK answer."""
    sent: int = 0
    not_ok: int = 0
    seconds: float = 0.0
    imap_logins: int = 0
    daemon_cpu: float = 0.0
    """CPU seconds of the daemon's processes (saslimap's one, or every saslauthd's)."""
    samples: list[str] = field(default_factory=list)

    def add(self, part: PassResult, logins: int, cpu: float) -> None:
        for t0, t1, outcome in zip(part.starts, part.ends, part.outcomes, strict=True):
            self.sent += 1
            if outcome == OK:
                self.latencies.append(t1 - t0)
            else:
                self.not_ok += 1
        if part.starts:
            self.seconds += part.ends[-1] - part.starts[0]
        # The client records the text of "no reply" and errors; a plain NO is counted.
        self.samples += part.samples[: max(0, 3 - len(self.samples))]
        self.imap_logins += logins
        self.daemon_cpu += cpu

    def ms(self, q: float) -> float:
        return percentile(sorted(self.latencies), q) * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else math.nan


def walk(
    pool: ClientPool, target: Target, frames: Sequence[bytes], seconds: float, into: Walk
) -> int:
    """Send each of ``frames`` once, in order, at concurrency 1, for at most ``seconds``.

    Returns how many were sent.  One client process of the pool does it (a
    :class:`PassJob` with no retries), so the parent's own work never sits on
    the timed path.
    """
    attempts = tuple(Attempt(f, wrong=False) for f in frames)
    pool.reset_counter()
    start_at = time.monotonic() + START_DELAY
    job = PassJob(
        str(target.socket), attempts, start_at, seconds, len(attempts), 0, REQUEST_TIMEOUT
    )
    logins0 = target.dovecot.auth_attempts()
    # From before the first request to after the last answer: the daemon's work after
    # answering (saslimap records a verdict in Redis then) is part of what a check costs.
    cpu0 = process_cpu(target.pids())
    pool.submit([job])
    (part,) = pool.collect_passes(1, start_at + seconds + REQUEST_TIMEOUT + 10.0)
    time.sleep(LOG_LAG)
    cpu = process_cpu(target.pids()) - cpu0
    into.add(part, target.dovecot.auth_attempts() - logins0, cpu)
    return len(part.starts)


WALK_HEADER = (
    "daemon",
    "pass",
    "checks",
    "not OK",
    "p50 ms",
    "p99 ms",
    "max ms",
    "daemon CPU ms/check",
    "IMAP logins",
)


def walk_row(w: Walk) -> tuple[str, ...]:
    return (
        w.daemon,
        w.phase,
        str(w.sent),
        str(w.not_ok),
        f"{w.ms(0.50):.3f}",
        f"{w.ms(0.99):.3f}",
        f"{w.ms(1.0):.3f}",
        f"{w.daemon_cpu * 1000 / w.sent:.2f}" if w.sent else "-",
        str(w.imap_logins),
    )


# -- reporting ---------------------------------------------------------------------------


def info(label: str, value: float) -> Verdict:
    return verdict(label, value, "(info)", lambda v: True)


# -- the three sections ------------------------------------------------------------------


NO_STATE = "saslimap, no [state]"
WITH_STATE = "saslimap, [state] Redis"
SAD_CACHE = "saslauthd -c"


def section_hits(
    pool: ClientPool,
    root: Path,
    dovecot: Dovecot,
    store: Store,
    frames: tuple[bytes, ...],
    seconds: float,
    rounds: int,
    cleanup: contextlib.ExitStack,
) -> Section:
    say("section 1: cache hits; starting saslimap without and with [state], saslauthd -c ...")
    plain, shared, sad = start_one_host(root, "1", dovecot, store, True, cleanup)
    targets = [
        saslimap_target(NO_STATE, plain, dovecot),
        saslimap_target(WITH_STATE, shared, dovecot),
        saslauthd_target(SAD_CACHE, sad, dovecot),
    ]
    for target in targets:
        warm(target, frames)
    cells: list[Cell] = []
    for conc in (1, CLIENTS):
        say(f"  c={conc}: {seconds:g} s each in {rounds} interleaved rounds ...")
        cells += run_cells(pool, targets, frames, conc, seconds, rounds)
    state_note = outage_note([(WITH_STATE, shared)])
    for stop in (plain.stop, shared.stop, sad.stop):
        stop()

    verdicts: list[Verdict] = []
    for conc in (1, CLIENTS):
        w, n, s = (find_cell(cells, name, conc) for name in (WITH_STATE, NO_STATE, SAD_CACHE))
        verdicts.append(
            verdict(
                f"c={conc} auths/s [state] / no [state]",
                ratio(w.rate if w else None, n.rate if n else None),
                f">= {TARGET_HIT_RATIO:.2f}",
                lambda v: v >= TARGET_HIT_RATIO,
            )
        )
        verdicts.append(
            info(
                f"c={conc} p50 [state] / no [state]",
                ratio(w.p50_ms if w else None, n.p50_ms if n else None),
            )
        )
        verdicts.append(
            info(
                f"c={conc} auths/s [state] / saslauthd -c",
                ratio(w.rate if w else None, s.rate if s else None),
            )
        )
    notes = [
        f"{len(frames)} users, each warmed (one IMAP login) then checked once before the cells; "
        "cores = CPU seconds / window seconds (daemon: saslimap's process, or all saslauthd "
        "processes).",
        state_note,
        *(f"not-OK sample {c.daemon} c={c.concurrency}: {s}" for c in cells for s in c.samples),
    ]
    return Section(
        "1. Cache hits on one host (right passwords, already in the host's cache)",
        CELL_HEADER,
        [cell_row(c) for c in cells],
        verdicts,
        notes,
    )


SIM_A, SIM_B = "saslimap host A", "saslimap host B"
SAD_A, SAD_B = "saslauthd -c host A", "saslauthd -c host B"


def section_cross(
    pool: ClientPool,
    root: Path,
    dovecot: Dovecot,
    store: Store,
    frames: tuple[bytes, ...],
    cleanup: contextlib.ExitStack,
) -> Section:
    host_a = shared_saslimap(root / "s2a", dovecot, store, "sb2:")
    host_b = shared_saslimap(root / "s2b", dovecot, store, "sb2:")
    sad_a = RimapSaslauthd(
        root / "a2a", dovecot.host, dovecot.imap_port, cache=True, threads=SASLAUTHD_WORKERS
    )
    sad_b = RimapSaslauthd(
        root / "a2b", dovecot.host, dovecot.imap_port, cache=True, threads=SASLAUTHD_WORKERS
    )
    daemons = (host_a, host_b, sad_a, sad_b)
    for d in daemons:
        cleanup.callback(d.stop)
    say("section 2: the cross-host case; two saslimap on one Redis, two saslauthd -c ...")
    for d in daemons:
        d.start()  # no probe request: every cache must start empty
    wait_sharing(host_a, host_b)
    # Generous: an IMAP login each, well under 100 ms here even on a busy machine.
    bound = 5.0 + 0.1 * len(frames)
    walks: dict[str, Walk] = {}
    pairs = (
        (saslimap_target(SIM_A, host_a, dovecot), saslimap_target(SIM_B, host_b, dovecot)),
        (saslauthd_target(SAD_A, sad_a, dovecot), saslauthd_target(SAD_B, sad_b, dovecot)),
    )
    for a, b in pairs:
        say(f"  {a.name}: first check of {len(frames)} users ...")
        walks[a.name] = Walk(a.name, "first check, A")
        walk(pool, a, frames, bound, walks[a.name])
        time.sleep(SETTLE)
        say(f"  {b.name}: first check of the same users ...")
        walks[b.name] = Walk(b.name, "first check, B")
        walk(pool, b, frames, bound, walks[b.name])
    state_note = outage_note([("host A", host_a), ("host B", host_b)])
    for d in daemons:
        d.stop()

    sim_b, sad_b_w = walks[SIM_B], walks[SAD_B]
    verdicts = [
        info(
            "B's first check p50, saslimap / saslauthd -c",
            ratio(sim_b.ms(0.50), sad_b_w.ms(0.50)),
        ),
        info(
            "B's first check p99, saslimap / saslauthd -c",
            ratio(sim_b.ms(0.99), sad_b_w.ms(0.99)),
        ),
        verdict(
            "saslimap B's first check p50 ms (a hit from the shared level)",
            sim_b.ms(0.50),
            f"<= {TARGET_SHARED_P50_MS:.1f}",
            lambda v: v <= TARGET_SHARED_P50_MS,
        ),
        verdict(
            "IMAP logins in B's pass, saslimap",
            float(sim_b.imap_logins),
            "0",
            lambda v: v == 0,
        ),
        info("IMAP logins in B's pass, saslauthd -c", float(sad_b_w.imap_logins)),
        info(
            "saslimap B p50 / saslimap A p50 (shared hit / IMAP login over STARTTLS)",
            ratio(sim_b.ms(0.50), walks[SIM_A].ms(0.50)),
        ),
    ]
    notes = [
        f"{len(frames)} distinct users, concurrency 1: each verified once through host A, "
        f"then, {SETTLE:g} s later, checked once through host B. saslimap's hosts share one "
        "Redis (Unix socket, key prefix of their own); each saslauthd -c has its own cache.",
        state_note,
        *(f"not-OK sample {w.daemon} {w.phase}: {s}" for w in walks.values() for s in w.samples),
    ]
    return Section(
        "2. The cross-host case: host B's first check of a user verified through host A",
        WALK_HEADER,
        [walk_row(w) for w in walks.values()],
        verdicts,
        notes,
    )


MISS_NO_STATE = "saslimap, no [state]"
MISS_WITH_STATE = "saslimap, [state] Redis"
MISS_SAD = "saslauthd, no cache"


def section_misses(
    pool: ClientPool,
    root: Path,
    dovecot: Dovecot,
    store: Store,
    lead_in: tuple[bytes, ...],
    fresh: tuple[bytes, ...],
    seconds: float,
    rounds: int,
    cleanup: contextlib.ExitStack,
) -> Section:
    say("section 3: cache misses at c=1; starting saslimap without and with [state], saslauthd ...")
    plain, shared, sad = start_one_host(root, "3", dovecot, store, False, cleanup)
    targets = [
        saslimap_target(MISS_NO_STATE, plain, dovecot),
        saslimap_target(MISS_WITH_STATE, shared, dovecot),
        saslauthd_target(MISS_SAD, sad, dovecot),
    ]
    walks = {t.name: Walk(t.name, "miss, c=1") for t in targets}
    # Each daemon goes through the same list of users it has never seen, from where its
    # previous round stopped: a user is checked once per daemon, so every check is a
    # login at Dovecot (and, with [state], finds nothing in Redis either).
    used = dict.fromkeys(walks, 0)
    for target in targets:
        walk(pool, target, lead_in, 5.0 + len(lead_in), Walk(target.name, "lead-in"))
    say(f"  c=1: {seconds:g} s each in {rounds} interleaved rounds ...")
    for n in range(rounds):
        for target in targets if n % 2 == 0 else list(reversed(targets)):
            left = fresh[used[target.name] :]
            if left:
                used[target.name] += walk(pool, target, left, seconds / rounds, walks[target.name])
    for w in walks.values():
        say(f"    {w.daemon}: {w.rate:,.1f} auths/s  p50 {w.ms(0.50):.3f} ms  not OK {w.not_ok}")
    state_note = outage_note([(MISS_WITH_STATE, shared)])
    for stop in (plain.stop, shared.stop, sad.stop):
        stop()

    w, m, s = walks[MISS_WITH_STATE], walks[MISS_NO_STATE], walks[MISS_SAD]
    verdicts = [
        info("c=1 p50 [state] / no [state]", ratio(w.ms(0.50), m.ms(0.50))),
        info("c=1 p50 [state] - no [state], ms", w.ms(0.50) - m.ms(0.50)),
        info("c=1 p99 [state] / no [state]", ratio(w.ms(0.99), m.ms(0.99))),
        info("c=1 p50 [state] / saslauthd, no cache", ratio(w.ms(0.50), s.ms(0.50))),
    ]
    exhausted = [name for name, count in used.items() if count >= len(fresh)]
    notes = [
        f"Every check a user the daemon had never seen ({len(fresh)} available, right "
        f"passwords), {seconds:g} s each in {rounds} interleaved rounds after {len(lead_in)} "
        "unmeasured ones; saslimap over STARTTLS with its default 2 warm connections, "
        "saslauthd in plaintext. IMAP logins = Dovecot's finished logins in the measured rounds.",
        state_note,
        *(f"ran out of fresh users: {name}" for name in exhausted),
        *(f"not-OK sample {x.daemon}: {t}" for x in walks.values() for t in x.samples),
    ]
    return Section(
        "3. Cache misses at concurrency 1 (every check an IMAP login)",
        WALK_HEADER,
        [walk_row(x) for x in walks.values()],
        verdicts,
        notes,
    )


# -- orchestration -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.state_bench", description=__doc__)
    parser.add_argument(
        "--seconds",
        type=seconds_arg(0.5, 60),
        default=DEFAULT_SECONDS,
        help="measured seconds per daemon and cell in sections 1 and 3, split over the "
        "rounds (default 5)",
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
        "--users",
        type=int,
        choices=range(10, 5001),
        default=DEFAULT_USERS,
        metavar="N",
        help="users verified through host A, then checked on host B (default 200)",
    )
    parser.add_argument(
        "--state-timeout",
        type=seconds_arg(0.001, 10),
        default=STATE_TIMEOUT,
        metavar="SECONDS",
        help="state.timeout of every saslimap with [state] (default 0.05, the production "
        "default; a busy machine can miss it, and each miss is an outage of at least 1 s)",
    )
    parser.add_argument(
        "--only",
        choices=("hits", "cross", "misses"),
        action="append",
        help="run only this section (repeatable; default: all three)",
    )
    parser.add_argument("--out", type=Path, help="also write the results as Markdown here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs) on exit"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    users = make_users(args.users)
    # Section 3's users: never checked before it, one per check; more than any daemon
    # here can log in within its seconds.
    fresh_count = math.ceil(args.seconds * MISS_USERS_PER_SECOND) + 100
    misses = {f"miss{i:05d}@{DOMAIN}": secrets.token_urlsafe(15) for i in range(fresh_count)}
    frames = tuple(encode(login, pw, SERVICE, realm) for login, realm, pw in as_credentials(users))
    fresh = tuple(encode(login, pw, SERVICE, realm) for login, realm, pw in as_credentials(misses))
    root = work_root("sb")
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
        # Right passwords only: fast failures change nothing measured here.
        dovecot = Dovecot(root / "d0", {**users, **misses}, tls=tls, fast_failures=True)
        cleanup.callback(dovecot.stop)
        redis = Redis(root / "r0", unix_socket=True)
        cleanup.callback(redis.stop)
        say(f"starting Dovecot ({len(users) + len(misses)} users) and redis-server ...")
        dovecot.start()
        redis.start()
        store = Store(redis, write_secret(root / "state.key"), args.state_timeout)
        builds: dict[str, Callable[[], Section]] = {
            "hits": lambda: section_hits(
                pool, root, dovecot, store, frames, args.seconds, args.rounds, cleanup
            ),
            "cross": lambda: section_cross(pool, root, dovecot, store, frames, cleanup),
            "misses": lambda: section_misses(
                pool,
                root,
                dovecot,
                store,
                frames[:LEAD_IN],
                fresh,
                args.seconds,
                args.rounds,
                cleanup,
            ),
        }
        for name, build in builds.items():
            if args.only and name not in args.only:
                continue
            sections.append(build())
            print(text_section(sections[-1]) + "\n", flush=True)
    finally:
        with no_interrupts():
            say("stopping daemons, Dovecot, redis-server and client processes ...")
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
            ("load average", load),
            ("wall time", f"{wall:.0f} s"),
        ]
        text = ["# saslimap's shared state (issue 16) vs saslauthd rimap", ""]
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
