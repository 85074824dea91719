"""Guessing a user's password cannot lock the user out: figures against saslauthd -a rimap.

An attacker who knows a user name sends ``--guesses`` distinct wrong passwords
(8 at a time) for it, from one client address, and goes on until the
measurements during the attack are over.  While the attack runs, and
again after it, the benchmark measures how long the real user (from another
address, right password, never cached: the daemon has just started) and
another user take to log in, and counts the guesses that reached the IMAP
server (Dovecot's own count of finished authentications).

Three set-ups, each against a fresh real Dovecot and daemon:

- saslimap's Dovecot-protocol listener (Postfix ``smtpd_sasl_type = dovecot``:
  the client's address is known), default limits (whose per-address delay
  slows the attacker to a few guesses a second), and again with that delay off,
  so that every guess arrives;
- saslimap's saslauthd socket (no address), default limits, with the real
  user never verified since the start, and again with the user verified once
  before a ``SIGHUP`` that flushed the caches;
- ``saslauthd -a rimap`` (the reference), which has no limits.

A login that answers "try later" is retried every half second for up to
``--patience`` seconds, as a mail client retries a 454.  With
``--dovecot-defaults`` Dovecot keeps its own failure delay and per-address
penalty, plus the shipped ``conf/dovecot/`` settings for the gateway (its
forwarded client address believed, its failures answered without delay): the
set-up where one attacker's failures could otherwise delay every user (the
reference runs against Dovecot's plain defaults).  Prints figures; asserts
nothing.

    .venv/bin/python -m bench.lockout_bench [--guesses 10000] [--dovecot-defaults]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import run_main, say
from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot, gateway_snippet
from devstack.dovecot_auth import dovecot_auth
from devstack.saslauthd import RimapSaslauthd, saslauthd_check
from devstack.tls import make_tls
from saslimap import protocol, saslauthd_client

VICTIM, VICTIM_PW = "user0@example.com", "password 0"
OTHER, OTHER_PW = "user1@example.com", "password 1"
USERS = {f"user{n}@example.com": f"password {n}" for n in range(20)}
ATTACKER, VICTIM_ADDR, OTHER_ADDR = "192.0.2.66", "198.51.100.7", "198.51.100.8"
RELOADED = "saslimap, saslauthd socket, user verified before a SIGHUP"
NO_DELAY = "saslimap, Dovecot listener, its per-address delay off"

Check = Callable[[str, str, str], str]  # (user, password, client address) -> ok/no/later


@dataclass
class Figures:
    """One set-up's results."""

    name: str
    guesses: int
    seconds: float
    reached: int
    victim_during: str
    other_during: str
    victim_after: str


def patient(check: Check, user: str, password: str, addr: str, patience: float) -> str:
    """Log in, retrying "try later" every 0.5 s; "OK in 0.01 s (1 try)", or what failed."""
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        outcome = check(user, password, addr)
        took = time.monotonic() - started
        if outcome != "later" or took > patience:
            word = {"ok": "OK", "no": "refused (NO)", "later": "still 'try later'"}[outcome]
            return f"{word} in {took:.2f} s ({tries} {'try' if tries == 1 else 'tries'})"
        time.sleep(0.5)


def attack(
    name: str, check: Check, dovecot: Dovecot, guesses: int, patience: float, limit: float
) -> Figures:
    """The attack with the two measurements during it and one after."""
    before = dovecot.auth_attempts()
    started = time.monotonic()
    sent = [0]

    measured = threading.Event()
    lock = threading.Lock()

    def guesser() -> None:
        # Until both the count is sent and the measurements are over: "during" is during.
        while True:
            with lock:
                n = sent[0]
                over = n >= guesses or time.monotonic() - started > limit
                if over and measured.is_set():
                    return
                sent[0] += 1
            check(VICTIM, f"guess {n:06d}", ATTACKER)

    pool = [threading.Thread(target=guesser, daemon=True) for _ in range(8)]
    for thread in pool:
        thread.start()
    try:
        while sent[0] < min(guesses, 200):
            time.sleep(0.05)  # the budget is spent: the attack is under way
        victim_during = patient(check, VICTIM, VICTIM_PW, VICTIM_ADDR, patience)
        other_during = patient(check, OTHER, OTHER_PW, OTHER_ADDR, patience)
    finally:
        measured.set()  # (also on Ctrl-C or SIGTERM: the guessers stop)
    for thread in pool:
        thread.join()
    guesses = sent[0]
    seconds = time.monotonic() - started
    time.sleep(0.5)  # Dovecot logs just after answering
    reached = dovecot.auth_attempts() - before
    # After the attack: a fresh check of the right password (the one above may be cached).
    victim_after = patient(check, VICTIM, VICTIM_PW, VICTIM_ADDR, patience)
    return Figures(name, guesses, seconds, reached, victim_during, other_during, victim_after)


def mux_check(path: Path) -> Check:
    """A check over a saslauthd-protocol socket (saslimap's or saslauthd's)."""

    def check(user: str, password: str, addr: str) -> str:
        try:
            reply = saslauthd_client.query(path, user.encode(), password.encode(), b"smtp",
                                           timeout=60)  # fmt: skip
        except saslauthd_client.NoReply:
            return "later"
        return "ok" if protocol.reply_is_ok(reply) else "no"

    return check


def dovecot_check(path: Path) -> Check:
    """A check over saslimap's Dovecot-protocol socket, from ``addr``."""

    def check(user: str, password: str, addr: str) -> str:
        outcome = dovecot_auth(path, user, password, addr, timeout=60)
        return {"ok": "ok", "fail": "no"}.get(outcome, "later")

    return check


def rimap_check(path: Path) -> Check:
    """A check over saslauthd's socket (it has no "try later": a lost reply is one)."""

    def check(user: str, password: str, addr: str) -> str:
        try:
            reply = saslauthd_check(path, user, password, "smtp")
        except OSError:
            return "later"
        return "ok" if reply.startswith("OK") else "no"

    return check


def run(args: argparse.Namespace) -> int:
    """Each set-up in turn, then the table."""
    root = Path(tempfile.mkdtemp(prefix="lock", dir="/tmp"))
    root.chmod(0o755)
    tls = make_tls(root / "tls")
    fast = not args.dovecot_defaults
    rows: list[Figures] = []
    try:
        for name in ("saslimap, Dovecot listener", NO_DELAY, "saslimap, saslauthd socket",
                     RELOADED, "saslauthd -a rimap"):  # fmt: skip
            say(f"{name}: {args.guesses} guesses")
            work = root / name.split(",")[0].split()[0] / str(len(rows))
            # The reference runs against Dovecot as it is today, without our snippet.
            ours = not name.startswith("saslauthd")
            extra = "" if fast or not ours else gateway_snippet(work / "gw", "127.0.0.1")
            with Dovecot(work / "dovecot", USERS, tls=tls, fast_failures=fast,
                         extra_config=extra) as dovecot:  # fmt: skip
                if name.startswith("saslauthd"):
                    ref = RimapSaslauthd(work / "saslauthd", "127.0.0.1", dovecot.imap_port)
                    ref.start()
                    try:
                        rows.append(attack(name, rimap_check(ref.mux_path), dovecot,
                                           args.guesses, args.patience, args.limit))  # fmt: skip
                    finally:
                        ref.stop()
                    continue
                auth_socket = work / "saslimap" / "run" / "auth"
                settings: dict[str, dict[str, object]] = {
                    "imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert),
                             "send_client_address": True},
                    "dovecot": {"socket": str(auth_socket), "socket_mode": "0666"},
                    "server": {"max_connections": 2048},
                }  # fmt: skip
                if name == NO_DELAY:  # every guess arrives at once: the worst case for IMAP
                    settings["iplimits"] = {"base_delay": 0.0, "max_delay": 0.0}
                with SaslimapDaemon(work / "saslimap", settings) as d:
                    if name == RELOADED:  # verified once, then the caches flushed
                        assert mux_check(d.socket_path)(VICTIM, VICTIM_PW, "") == "ok"
                        d.signal(signal.SIGHUP)
                        while "caches flushed" not in d.log_text():
                            time.sleep(0.05)
                    check = (
                        dovecot_check(auth_socket) if "Dovecot listener" in name
                        else mux_check(d.socket_path)
                    )  # fmt: skip
                    figures = attack(name, check, dovecot, args.guesses, args.patience, args.limit)
                    rows.append(figures)
            say(f"  {rows[-1]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mode = (
        "no failure delay, no penalty"
        if fast
        else ("its defaults; for saslimap with conf/dovecot/ (the reference without)")
    )
    print(f"Dovecot: {mode}")
    print(
        "| set-up | guesses (s) | reached IMAP | real user during | other user during |"
        " real user after |"
    )
    print("|---|---|---|---|---|---|")
    for f in rows:
        print(
            f"| {f.name} | {f.guesses} ({f.seconds:.0f} s) | {f.reached} | {f.victim_during}"
            f" | {f.other_during} | {f.victim_after} |"
        )
    return 0


def main() -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--guesses", type=int, default=10_000)
    parser.add_argument(
        "--patience",
        type=float,
        default=30.0,
        help="seconds a login is retried while told 'try later'",
    )
    parser.add_argument(
        "--limit",
        type=float,
        default=60.0,
        help="seconds after which the attack stops short of --guesses"
        " (against Dovecot's own delays a guess can take 17 s)",
    )
    parser.add_argument(
        "--dovecot-defaults",
        action="store_true",
        help="Dovecot's own failure delay and penalty, gateway trusted",
    )
    return run_main(parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
