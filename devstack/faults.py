"""Fault and flood scenarios, shared by the reliability tests and bench/reliability.py.

This module owns the scenarios and what they measure; tests run them small
and assert, the report script runs them at full size and prints figures.

- :func:`mail_survives`: messages pushed through Postfix -> mail-filter ->
  Postfix while the filter is SIGKILLed, clamd and spamd are stopped and
  started, and the re-injection target disappears for a while; every message
  is counted at the sink by Message-ID.
- :func:`auth_flood`: hostile requests on the mux socket (random bytes,
  truncated frames, oversized lengths, CR/LF and quote injections, slow
  clients, idle connections) while real checks go on.
"""

from __future__ import annotations

import random
import smtplib
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from devstack.gateway import MailChain
from devstack.ports import free_port
from saslimap import protocol, saslauthd_client


@dataclass
class MailResult:
    """What happened to the messages."""

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    faults: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _message(mid: str, n: int) -> bytes:
    return (
        f"From: load@example.net\r\nTo: user@example.com\r\nSubject: survival {n}\r\n"
        f"Message-ID: <{mid}>\r\n\r\nmessage {n} of the survival run\r\n"
    ).encode()


def mail_survives(
    chain: MailChain,
    messages: int,
    *,
    kills: int,
    reinject_down: float,
    restart_scanners: bool = True,
    settle_timeout: float = 180.0,
    seed: int = 1,
) -> MailResult:
    """Send ``messages`` while faults happen; wait until the queue drains; count."""
    rng = random.Random(seed)  # noqa: S311 - reproducible fault timing, not a secret
    ids = [f"{uuid.uuid4().hex}@survival.test" for _ in range(messages)]
    result = MailResult(sent=messages)
    started = time.monotonic()
    done_sending = threading.Event()

    def send(batch: list[tuple[int, str]]) -> None:
        with smtplib.SMTP("127.0.0.1", chain.smtpd_port, timeout=60) as smtp:
            for n, mid in batch:
                smtp.sendmail("load@example.net", ["user@example.com"], _message(mid, n))

    def inject_faults() -> None:
        plan: list[str] = ["kill"] * kills
        if restart_scanners:
            plan += ["clamd", "spamd"]
        if reinject_down:
            plan.append("reinject")
        rng.shuffle(plan)
        for fault in plan:
            time.sleep(rng.uniform(0.2, 1.5))
            if fault == "kill":
                chain.kill_filter()
            elif fault == "clamd":
                chain.clamd.stop()
                time.sleep(rng.uniform(0.5, 2.0))
                chain.clamd.start()
            elif fault == "spamd":
                chain.spamd.stop()
                time.sleep(rng.uniform(0.5, 2.0))
                chain.spamd.start()
            else:
                real = chain.filter.settings["reinject"]["address"]
                chain.reinject_to(f"127.0.0.1:{free_port()}")
                time.sleep(reinject_down)
                chain.reinject_to(str(real))
            result.faults.append(fault)

    faults = threading.Thread(target=inject_faults)
    faults.start()
    batches = [list(enumerate(ids))[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, batches))
    done_sending.set()
    faults.join()
    deadline = time.monotonic() + settle_timeout
    while time.monotonic() < deadline:
        chain.flush()
        counts = Counter(_ids_at_sink(chain, ids))
        if len(counts) == messages and chain.queue_empty():
            break
        time.sleep(1.0)
    counts = Counter(_ids_at_sink(chain, ids))
    result.delivered = len(counts)
    result.lost = messages - len(counts)
    result.duplicates = sum(c - 1 for c in counts.values())
    result.seconds = time.monotonic() - started
    return result


def _ids_at_sink(chain: MailChain, ids: list[str]) -> list[str]:
    wanted = {mid.encode(): mid for mid in ids}
    found = []
    for message in chain.sink.messages:
        start = message.data.find(b"Message-ID: <")
        if start >= 0:
            end = message.data.find(b">", start)
            mid = wanted.get(message.data[start + len(b"Message-ID: <") : end])
            if mid is not None and "user@example.com" in message.rcpt_tos:
                found.append(mid)
    return found


@dataclass
class FloodResult:
    """What the real checks saw while hostile traffic went on."""

    hostile: int = 0
    hostile_ok: int = 0
    real: int = 0
    real_wrong: int = 0
    real_p50_ms: float = 0.0
    real_p99_ms: float = 0.0
    idle_held: int = 0
    slow_clients: int = 0
    rss_before_kb: int = 0
    rss_after_kb: int = 0
    alive: bool = True


def _hostile(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))
    if kind == 1:
        full = protocol.encode_request(b"alice@example.com", b"alice pw", b"smtp", b"")
        return full[: rng.randrange(1, len(full))]
    if kind == 2:
        return rng.choice([b"\xff\xff", b"\x01\x01", b"\x10\x00"]) + b"A" * rng.randrange(200)
    if kind == 3:
        return protocol.encode_request(b'user "x"\r\nA2 LOGIN victim "guess"', b"pw", b"smtp", b"")
    if kind == 4:
        return protocol.encode_request(b"alice@example.com", b'pw"\r\nA3 LOGOUT', b"smtp", b"")
    return protocol.encode_request(b"alice@example.com\x00admin", b"pw", b"smtp", b"")


def _send_hostile(path: Path, blob: bytes) -> bool:
    """True if the daemon answered OK (it never must)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(15)
        try:
            s.connect(str(path))
            s.sendall(blob)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError:
            return False
    reply = protocol.parse_reply(data)
    return reply is not None and protocol.reply_is_ok(reply)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def auth_flood(
    mux: Path,
    pid: int,
    real_checks: list[tuple[str, str, bool]],
    *,
    hostile: int,
    idle: int,
    slow: int,
    seed: int = 7,
) -> FloodResult:
    """Hostile traffic, idle and slow connections, and real checks, all at once."""
    rng = random.Random(seed)  # noqa: S311 - reproducible hostile input, not a secret
    result = FloodResult(hostile=hostile, real=len(real_checks), rss_before_kb=_rss_kb(pid))
    held: list[socket.socket] = []
    for _ in range(idle):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(mux))
            held.append(s)
        except OSError:
            s.close()
    result.idle_held = len(held)
    stop = threading.Event()

    def dribble() -> None:
        frame = protocol.encode_request(b"alice@example.com", b"alice pw", b"smtp", b"")
        while not stop.is_set():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(mux))
                    for byte in frame:
                        if stop.wait(1.0):
                            break
                        s.sendall(bytes([byte]))
                except OSError:
                    pass  # closed by the read deadline, as it should be

    dribblers = [threading.Thread(target=dribble) for _ in range(slow)]
    for t in dribblers:
        t.start()
    result.slow_clients = slow
    latencies: list[float] = []
    lock = threading.Lock()

    def real(item: tuple[str, str, bool]) -> None:
        user, password, good = item
        begin = time.monotonic()
        try:
            reply = saslauthd_client.query(
                mux, user.encode(), password.encode(), b"smtp", timeout=30
            )
            ok = protocol.reply_is_ok(reply)
        except (saslauthd_client.NoReply, OSError):
            ok = False
        with lock:
            latencies.append(time.monotonic() - begin)
            if ok != good:
                result.real_wrong += 1

    def bad(blob: bytes) -> None:
        if _send_hostile(mux, blob):
            with lock:
                result.hostile_ok += 1

    jobs: list[Callable[[], None]] = [partial(bad, _hostile(rng)) for _ in range(hostile)]
    step = max(1, hostile // max(1, len(real_checks)))
    for n, item in enumerate(real_checks):  # real checks spread evenly among the hostile ones
        jobs.insert(min(len(jobs), n * (step + 1)), partial(real, item))
    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    stop.set()
    for t in dribblers:
        t.join(10)
    for s in held:
        s.close()
    ordered = sorted(latencies)
    result.real_p50_ms = statistics.median(ordered) * 1000 if ordered else 0.0
    result.real_p99_ms = ordered[int(len(ordered) * 0.99) - 1] * 1000 if ordered else 0.0
    try:
        result.rss_after_kb = _rss_kb(pid)
    except OSError:
        result.alive = False
    return result
