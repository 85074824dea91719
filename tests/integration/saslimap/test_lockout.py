"""Guessing a user's password cannot lock the real user out (real saslimap, real Dovecot)."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.dovecot_auth import dovecot_auth
from devstack.tls import TlsFiles
from saslimap import protocol, saslauthd_client
from tests.integration.conftest import USERS

VICTIM = "bob@example.com"


def test_guesses_from_one_address_leave_the_user_free_from_another(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """300 guesses from one address through the Dovecot listener reach IMAP at most the
    budget's worth (case variants included), are never answered as if the budget were a
    wrong password for the real user, and the real user, never cached, logs in at the first
    try from another address."""
    auth_socket = workroot / "lockout" / "run" / "auth"
    d = SaslimapDaemon(
        workroot / "lockout",
        {"imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
         "dovecot": {"socket": str(auth_socket), "socket_mode": "0666"},
         "iplimits": {"base_delay": 0.0}},
    )  # fmt: skip
    with d:
        before = dovecot.auth_attempts()
        names = [VICTIM, VICTIM.upper(), "Bob@Example.com"]

        def guess(n: int) -> str:
            return dovecot_auth(auth_socket, names[n % 3], f"guess {n}", "192.0.2.66")

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(guess, range(300)))
        assert "ok" not in outcomes
        assert outcomes.count("fail") <= 10 + 8  # the budget, and a few answered at once
        time.sleep(0.3)  # Dovecot logs just after answering
        assert dovecot.auth_attempts() - before <= 10
        # At once: the first try is answered OK (a held check would be a hang-up);
        # how fast is bench/lockout_bench.py's to say, not a test's.
        assert "ok" == dovecot_auth(auth_socket, VICTIM, USERS[VICTIM], "198.51.100.7")
        # Held guesses were "try later" (a hang-up) while no password of bob's was known;
        # now one is, a held guess is a wrong password again (counted by the per-IP limit).
        assert "closed" in outcomes
        assert "fail" == dovecot_auth(auth_socket, "BOB@example.com", "guess x", "192.0.2.66")


def test_over_the_budget_the_saslauthd_socket_trickles(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """On the saslauthd socket (no address) guesses past the budget get "try later", and the
    real user's right password gets OK at the next trickle slot, never NO."""
    d = SaslimapDaemon(
        workroot / "trickle",
        {"imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
         "limits": {"failure_budget": 3, "trickle_interval": 1.0}},
    )  # fmt: skip
    with d:
        user = b"alice@example.com"
        for n in range(3):
            reply = saslauthd_client.query(d.socket_path, user, f"g{n}".encode(), b"smtp")
            assert not protocol.reply_is_ok(reply)
        replies = []
        for _ in range(50):  # a trickle slot opens every second: well within 10 s
            try:
                replies.append(saslauthd_client.query(d.socket_path, user, b"alice pw", b"smtp"))
                break
            except saslauthd_client.NoReply:  # "try later" (Postfix: 454), never NO
                time.sleep(0.2)
        assert 1 == len(replies)
        assert protocol.reply_is_ok(replies[0])


def test_a_user_verified_before_a_reload_is_not_held_back_by_guesses(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles
) -> None:
    """SIGHUP flushes the caches and budgets; guesses then spend the budget (no trickle), yet
    the user's password, verified before the reload, reaches IMAP and gets OK at once, while
    a held guess is answered as the wrong password it is."""
    d = SaslimapDaemon(
        workroot / "reload",
        {"imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
         "limits": {"failure_budget": 3, "trickle_interval": 0.0}},
    )  # fmt: skip
    with d:
        user, password = b"spaces@example.com", USERS["spaces@example.com"].encode()
        assert b"OK" == saslauthd_client.query(d.socket_path, user, password, b"smtp")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "caches flushed" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        for n in range(3):
            assert b"NO" == saslauthd_client.query(d.socket_path, user, b"g%d" % n, b"smtp")[:2]
        # Held, and not the password known for the user: a wrong password (counted).
        assert b"NO" == saslauthd_client.query(d.socket_path, user, b"g9", b"smtp")[:2]
        assert b"OK" == saslauthd_client.query(d.socket_path, user, password, b"smtp")
