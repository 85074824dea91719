"""Where one IMAP password check spends its time, step by step, against a real Dovecot.

This module owns a diagnostic companion to :mod:`bench.auth_bench`: it starts a
throw-away Dovecot (devstack, TLS, fast failures) and times, with
``time.perf_counter`` (wall) and ``time.thread_time`` (this thread's CPU):

- the steps of saslimap's own code path (``mailgate.imap``: open the session =
  TCP connect + greeting [+ TLS for imaps]; ``secure`` = STARTTLS + handshake +
  CAPABILITY; AUTHENTICATE; close) and a whole direct ``check_login`` call;
- the same exchange written with bare ``socket``/``ssl`` calls and the fewest
  round trips (the floor any client pays on this machine), one line per step.

It prints figures and asserts nothing.  Loopback only, bounded by ``--checks``.

Run: ``.venv/bin/python -m bench.check_profile [--checks N]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import random
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.auth_bench import DOMAIN, USER_COUNT, make_users, percentile
from devstack.dovecot import Dovecot
from devstack.tls import make_tls
from mailgate import imap
from mailgate.imap import ImapSettings, LoginResult

SCHEMES = ("imap", "imap+plaintext", "imaps")
DEFAULT_CHECKS = 200
MAX_CHECKS = 5000
TIMEOUT = 5.0


@dataclass
class Steps:
    """Wall and CPU seconds per named step, over many checks."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall.setdefault(name, []).append(time.perf_counter() - w0)
            self.cpu.setdefault(name, []).append(time.thread_time() - c0)


# -- saslimap's own code path -------------------------------------------------------


def profile_saslimap(steps: Steps, settings: ImapSettings, user: str, password: str) -> None:
    """One check through mailgate.imap's session object, step by step."""
    with steps.step("total (same steps)"):
        with steps.step(
            "connect+greeting" + (" (+TLS)" if settings.target.scheme == "imaps" else "")
        ):
            session = imap.Session(settings)
        try:
            with steps.step("secure (STARTTLS+TLS+CAPABILITY)"):
                session.secure(settings)
            with steps.step("AUTHENTICATE"):
                verdict = session.authenticate(user, password, settings.mechanism)
        finally:
            with steps.step("close"):
                session.close()
    if verdict is not LoginResult.ACCEPTED:
        raise RuntimeError(f"check for {user} answered {verdict}")


def profile_check_login(steps: Steps, settings: ImapSettings, user: str, password: str) -> None:
    """One direct, unsplit check_login call."""
    with steps.step("check_login()"):
        verdict = imap.check_login(settings, user, password)
    if verdict is not LoginResult.ACCEPTED:
        raise RuntimeError(f"check_login for {user} answered {verdict}")


# -- the floor: bare sockets, fewest round trips -----------------------------------------


def _read_line(sock: socket.socket | ssl.SSLSocket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\r\n")
    buf[:] = rest
    return line


def _read_tagged(sock: socket.socket | ssl.SSLSocket, buf: bytearray, tag: bytes) -> bytes:
    while True:
        line = _read_line(sock, buf)
        if line.startswith(tag + b" "):
            return line


def profile_raw(
    steps: Steps, scheme: str, port: int, context: ssl.SSLContext, user: str, password: str
) -> None:
    """The same check with bare sockets: what the protocol and Dovecot cost by themselves."""
    buf = bytearray()
    with steps.step("total"):
        with steps.step("TCP connect"):
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock: socket.socket | ssl.SSLSocket = raw
        try:
            if scheme == "imaps":
                with steps.step("TLS handshake"):
                    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            with steps.step("greeting"):
                greeting = _read_line(sock, buf)
            if not greeting.startswith(b"* OK"):
                raise RuntimeError(f"greeting {greeting!r}")
            if scheme == "imap":
                with steps.step("STARTTLS command"):
                    sock.sendall(b"S STARTTLS\r\n")
                    _read_tagged(sock, buf, b"S")
                with steps.step("TLS handshake"):
                    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                with steps.step("CAPABILITY after TLS"):
                    sock.sendall(b"C CAPABILITY\r\n")
                    _read_tagged(sock, buf, b"C")
            token = base64.b64encode(f"\0{user}\0{password}".encode())
            with steps.step("AUTHENTICATE PLAIN (SASL-IR)"):
                sock.sendall(b"A AUTHENTICATE PLAIN " + token + b"\r\n")
                reply = _read_tagged(sock, buf, b"A")
            if not reply.startswith(b"A OK"):
                raise RuntimeError(f"AUTHENTICATE answered {reply[:60]!r}")
        finally:
            with steps.step("LOGOUT+close"):
                with contextlib.suppress(OSError):
                    sock.sendall(b"Z LOGOUT\r\n")
                sock.close()


# -- reporting -------------------------------------------------------------------------


def report(title: str, steps: Steps) -> str:
    lines = [title, f"  {'step':38} {'p50 ms':>8} {'mean ms':>8} {'cpu ms':>7}"]
    for name, walls in steps.wall.items():
        ordered = sorted(walls)
        cpu = steps.cpu[name]
        lines.append(
            f"  {name:38} {percentile(ordered, 0.5) * 1000:8.2f} "
            f"{sum(walls) / len(walls) * 1000:8.2f} {sum(cpu) / len(cpu) * 1000:7.2f}"
        )
    return "\n".join(lines)


def _checks(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_CHECKS:
        raise argparse.ArgumentTypeError(f"--checks must be between 1 and {MAX_CHECKS}")
    return value


def _runners(
    steps: tuple[Steps, Steps, Steps], settings: ImapSettings, port: int, context: ssl.SSLContext
) -> list[Callable[[str, str], None]]:
    own, whole, raw = steps
    scheme = settings.target.scheme

    def session_steps(user: str, password: str) -> None:
        profile_saslimap(own, settings, user, password)

    def direct(user: str, password: str) -> None:
        profile_check_login(whole, settings, user, password)

    def bare(user: str, password: str) -> None:
        profile_raw(raw, scheme, port, context, user, password)

    return [session_steps, direct, bare]


def run(checks: int) -> str:
    users = make_users(USER_COUNT)
    names = list(users)
    rng = random.Random(1)
    root = Path(tempfile.mkdtemp(prefix="cp", dir="/tmp"))
    root.chmod(0o755)
    dovecot: Dovecot | None = None
    try:
        tls = make_tls(root / "tls")
        dovecot = Dovecot(root / "dc", users, tls=tls, fast_failures=True)
        dovecot.start()
        context = dovecot.client_context()
        results: dict[str, tuple[Steps, Steps, Steps]] = {
            s: (Steps(), Steps(), Steps()) for s in SCHEMES
        }
        settings = {s: ImapSettings.from_url(dovecot.imap_url(s), dovecot.ca_file) for s in SCHEMES}
        ports = {"imap": dovecot.imap_port, "imap+plaintext": dovecot.imap_port}
        ports["imaps"] = dovecot.imaps_port or 0
        # Interleave everything so drift on the machine spreads evenly.
        runners: list[Callable[[str, str], None]] = []
        for s in SCHEMES:
            runners += _runners(results[s], settings[s], ports[s], context)
        for _ in range(2):  # warm-up, discarded below
            for runner in runners:
                user = rng.choice(names)
                runner(user, users[user])
        for steps_tuple in results.values():
            for steps in steps_tuple:
                steps.wall.clear()
                steps.cpu.clear()
        for _ in range(checks):
            for runner in runners:
                user = rng.choice(names)
                runner(user, users[user])
    finally:
        if dovecot is not None:
            dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)
    out = [f"{checks} checks per scheme, one at a time, {USER_COUNT} users in {DOMAIN}"]
    for s in SCHEMES:
        own, whole, raw = results[s]
        out.append("")
        out.append(report(f"{s}: mailgate.imap session steps", own))
        out.append(report(f"{s}: direct check_login()", whole))
        out.append(report(f"{s}: bare sockets, fewest round trips (floor)", raw))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.check_profile", description=__doc__)
    parser.add_argument("--checks", type=_checks, default=DEFAULT_CHECKS, help="checks per scheme")
    args = parser.parse_args(argv)
    print(run(args.checks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
