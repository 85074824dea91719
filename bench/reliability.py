"""Reliability report: faults, floods, hostile input and brute force at full size.

Runs the scenarios of :mod:`devstack.faults` (the test suite runs them small)
plus a brute-force scenario, against real daemons on loopback, and prints a
Markdown table for docs/benchmarks.md (the faults and floods table).  It asserts nothing.

    .venv/bin/python -m bench.reliability [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.faults import auth_flood, mail_survives
from devstack.gateway import MailChain
from devstack.tls import make_tls
from saslimap import protocol, saslauthd_client

USERS = {f"user{n}@example.com": f"password {n}" for n in range(600)}


def _brute_force(root: Path, dictionary: int, spray: int) -> list[tuple[str, str]]:
    tls = make_tls(root / "tls")
    with Dovecot(root / "bf-dovecot", USERS, tls=tls, fast_failures=False) as dovecot:
        # Dovecot's default penalty holds logins from our address up to 15 s; with the
        # default 5 s response_timeout those attempts end as "try later" and are not
        # counted as failures, so the budget never fills. 20 s lets them get a verdict.
        d = SaslimapDaemon(
            root / "bf-saslimap",
            {"imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert),
                      "response_timeout": 20.0}},
        )  # fmt: skip
        with d:
            victim = "user0@example.com"
            assert (
                saslauthd_client.query(d.socket_path, victim.encode(), b"password 0", b"smtp")
                == b"OK"
            )
            before = dovecot.auth_attempts()
            started = time.monotonic()

            def guess(n: int) -> str:
                try:
                    reply = saslauthd_client.query(
                        d.socket_path, victim.encode(), f"guess {n}".encode(), b"smtp", timeout=60
                    )
                except saslauthd_client.NoReply:
                    return "tempfail"  # Dovecot's penalty outlasted the IMAP deadline
                return "ok" if protocol.reply_is_ok(reply) else "no"

            with ThreadPoolExecutor(8) as pool:
                outcomes = list(pool.map(guess, range(dictionary)))
            broke_in = outcomes.count("ok")
            tempfails = outcomes.count("tempfail")
            seconds = time.monotonic() - started
            reached = dovecot.auth_attempts() - before
            begin = time.monotonic()
            still_ok = saslauthd_client.query(
                d.socket_path, victim.encode(), b"password 0", b"smtp"
            )
            victim_ms = (time.monotonic() - begin) * 1000
            before = dovecot.auth_attempts()

            def spray_one(n: int) -> bool:
                try:
                    user = f"user{n + 1}@example.com".encode()
                    reply = saslauthd_client.query(
                        d.socket_path, user, b"Summer2026!", b"smtp", timeout=60
                    )
                except saslauthd_client.NoReply:
                    return False
                return protocol.reply_is_ok(reply)

            with ThreadPoolExecutor(8) as pool:
                spray_ok = sum(pool.map(spray_one, range(spray)))
            spray_reached = dovecot.auth_attempts() - before
    return [
        ("dictionary attack on one user", f"{dictionary} distinct passwords in {seconds:.1f} s"),
        ("  logins that reached IMAP", f"{reached} (budget 10)"),
        ("  guesses accepted", str(broke_in)),
        ("  guesses answered 'try later' (Dovecot's penalty > deadline)", str(tempfails)),
        ("  the real user's password afterwards", f"{still_ok.decode()} in {victim_ms:.1f} ms"),
        ("password spray", f"{spray} users, one password each"),
        ("  logins that reached IMAP", f"{spray_reached} (per-user budgets cannot stop a spray;"
         " per-IP limits need the Dovecot SASL listener)"),
        ("  accepted", str(spray_ok)),
    ]  # fmt: skip


def emit(rows: list[tuple[str, str]], new: list[tuple[str, str]]) -> None:
    """Add rows to the table and print them at once (a long run shows progress)."""
    for what, figure in new:
        print(f"{what}: {figure}", flush=True)
    rows.extend(new)


def rss_mb(kb: int) -> int:
    """Kilobytes to whole megabytes."""
    return kb // 1024


def main() -> int:
    """Run every scenario and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    q = args.quick
    root = Path(tempfile.mkdtemp(prefix="rel", dir="/tmp"))
    root.chmod(0o755)
    rows: list[tuple[str, str]] = []
    try:
        messages, kills, down = (300, 2, 5.0) if q else (2000, 5, 30.0)
        with MailChain(root / "mail", fast_retry=True) as chain:
            mail = mail_survives(chain, messages, kills=kills, reinject_down=down,
                                 settle_timeout=600)  # fmt: skip
        emit(
            rows,
            [
                ("messages through Postfix -> mail-filter -> Postfix", str(mail.sent)),
                ("faults injected", ", ".join(mail.faults) + f" (re-injection down {down:g} s)"),
                ("messages delivered", str(mail.delivered)),
                ("messages lost", str(mail.lost)),
                ("duplicates delivered", str(mail.duplicates)),
                ("time until all delivered", f"{mail.seconds:.0f} s"),
            ],
        )
        tls = make_tls(root / "tls")
        users = {u: p for u, p in list(USERS.items())[:50]}
        with Dovecot(root / "dovecot", users, tls=tls) as dovecot:
            d = SaslimapDaemon(
                root / "saslimap",
                {
                    "imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
                    "server": {"max_connections": 2048},
                },
            )
            with d:
                assert d.proc is not None
                real = [
                    (u, p if n % 5 else p + "!", bool(n % 5))
                    for n, (u, p) in enumerate(list(users.items()) * (2 if q else 10))
                ]
                hostile, idle, slow = (2000, 200, 5) if q else (10000, 1000, 20)
                flood = auth_flood(d.socket_path, d.proc.pid, real, hostile=hostile, idle=idle,
                                   slow=slow)  # fmt: skip
        emit(rows, [
            ("hostile requests on the mux socket", f"{flood.hostile} (random bytes, truncated,"
             " oversized lengths, CR/LF and quote injections, NUL)"),
            ("idle / slow connections", f"{flood.idle_held} / {flood.slow_clients}"),
            ("hostile requests answered OK", str(flood.hostile_ok)),
            ("real checks meanwhile / answered wrongly", f"{flood.real} / {flood.real_wrong}"),
            ("real checks p50 / p99", f"{flood.real_p50_ms:.1f} / {flood.real_p99_ms:.1f} ms"),
            ("saslimap RSS MB before / after", f"{rss_mb(flood.rss_before_kb)} / "
             f"{rss_mb(flood.rss_after_kb)}"),
        ])  # fmt: skip
        emit(rows, _brute_force(root, 1000 if q else 10000, 100 if q else 500))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = "| what | figure |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
