"""``make run``: bring up the whole gateway on this machine, on loopback, until Ctrl-C.

This module owns the demo's composition: a real Dovecot with demo users as the
stand-in internal IMAP server (unless ``IMAP_URL`` names a real one), saslimap
in front of it, clamd (with the project's test signatures) and spamd, the
content filter, and Postfix as the gateway's door: SMTP AUTH through saslimap,
content_filter to mail-filter, the re-injection listener, and a transport
that hands everything to a local sink standing in for the internal mail
server, which prints each delivered message's header.  It sends one message
as a roaming user, shows it arriving with its headers, prints what listens
where and a swaks line to try, then waits; Ctrl-C stops everything it started.

The quarantine portal (``mail-filter portal``) runs beside them on a loopback
port of its own, logging in through saslimap.  The demo's filter holds spam
(as a site running the portal would) and the demo sends a GTUBE spam and an
EICAR virus to alice and a spam to bob at the gateway's door, so there is held
mail to see, preview and release (released mail reaches the sink and is shown
like any other delivery); it prints the portal's URL and the demo logins, a
demo administrator's among them.

``GATEWAYS=2`` starts two gateway hosts instead, as companies run them: each
its own saslimap, mail-filter and Postfix on its own loopback ports, both using
one Dovecot, one clamd, one spamd and one sink, and one Redis (password, no
persistence) as every daemon's ``[state]``.  After a message through each host
it shows the shared budget at work: a password verified through one host is
answered by the other with no IMAP login, and wrong passwords alternating
between the hosts reach Dovecot at most the budget's number of times in all.
Each host runs its own portal over its own quarantine: held mail lives in a
directory on the host that held it, so a portal sees only its host's (a
shared store is issue 18); the demo messages go through both hosts.

Environment: ``IMAP_URL`` (e.g. ``imaps://imap.example.com``) and optionally
``IMAP_CA_FILE`` point saslimap at a real server (that is the one config change
for a real deployment); ``RUN_DIR`` (default ``/tmp/mailgate-run``) holds every
daemon's files and logs; ``GATEWAYS`` is 1 (the default) or 2;
``PORTAL_ADMINS`` (comma-separated logins, default the demo administrator)
names the portal's administrators, for use with ``IMAP_URL``.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import smtplib
import sys
import threading
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from devstack import heldmail
from devstack.daemons import PortalDaemon, SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.gateway import MailChain
from devstack.redis import Redis
from devstack.tls import make_tls
from saslimap import protocol, saslauthd_client
from saslimap.config import LimitsConfig

DEMO_USERS = {
    "alice@example.com": "alice-demo-pw",
    "bob@example.com": "bob demo pw with spaces",
}
# The portal's administrator: a mailbox like any other, named in [portal] admins.
DEMO_ADMIN = ("postmaster@example.com", "postmaster-demo-pw")
GUESSES = 100  # wrong passwords sent to show the shared budget
SPAMMER = "offers@spam.test"
# What each host holds for the portal to show: (recipient, category, subject).
DEMO_HELD = (
    ("alice@example.com", "spam", "Cheap watches, 90% off"),
    ("alice@example.com", "virus", "Your invoice"),
    ("bob@example.com", "spam", "You have won the lottery"),
)

Settings = dict[str, dict[str, object]]


@dataclass
class Host:
    """One gateway host of the demo: its saslimap and its mail chain (named if several)."""

    name: str
    saslimap: SaslimapDaemon
    chain: MailChain
    portal: PortalDaemon | None = None


def _gateways() -> int:
    value = os.environ.get("GATEWAYS") or "1"
    if value not in ("1", "2"):
        raise SystemExit(f"GATEWAYS={value}: the demo runs 1 gateway host (the default) or 2")
    if value == "2" and os.environ.get("IMAP_URL"):
        # The demo sends wrong passwords on purpose: never to a real server.
        raise SystemExit("GATEWAYS=2 shows the shared budget with the demo Dovecot: unset IMAP_URL")
    return int(value)


def _shared_state(stack: ExitStack, run_dir: Path) -> tuple[Redis, Settings]:
    """Start Redis and write the secret every host shares; the ``[state]`` they all get."""
    redis = stack.enter_context(Redis(run_dir / "redis", password=secrets.token_urlsafe(24)))
    secret = run_dir / "state.key"
    secret.touch(mode=0o600)
    secret.write_bytes(os.urandom(32))
    state: dict[str, object] = {
        "url": redis.url, "password_file": str(redis.password_file),
        "secret_file": str(secret), "key_prefix": "demo:",
    }  # fmt: skip
    return redis, {"state": state}


def _start_host(
    stack: ExitStack, root: Path, name: str, settings: Settings, shared_with: Host | None
) -> Host:
    """saslimap, mail-filter and Postfix of one gateway host (clamd, spamd, sink too if first)."""
    saslimap = SaslimapDaemon(root / "saslimap", settings)
    stack.enter_context(saslimap)
    chain = MailChain(
        root,
        filter_settings={k: v for k, v in settings.items() if k != "imap"},
        postfix_main_cf={
            "smtpd_relay_restrictions": (
                "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
            ),
            **({"myhostname": f"{name}.gateway.test"} if name else {}),
        },
        sasl_saslauthd_path=saslimap.socket_path,
        shared_with=None if shared_with is None else shared_with.chain,
    )
    stack.enter_context(chain)
    return Host(name, saslimap, chain)


def _start_portal(stack: ExitStack, host: Host, root: Path, admins: list[str]) -> None:
    """The quarantine portal over this host's quarantine, asking this host's saslimap."""
    chain = host.chain
    host.portal = PortalDaemon(
        root / "portal", host.saslimap.socket_path,
        {"portal": {"admins": admins},
         "quarantine": {"directory": str(chain.root / "quarantine")},
         "reinject": {"address": f"127.0.0.1:{chain.reinject_port}"},
         "notices": {"admins": admins}, "logging": {"level": "info"}},
    )  # fmt: skip
    stack.enter_context(host.portal)


def _hold_demo_mail(host: Host) -> None:
    """Spam and a virus sent in at this host's door, until its quarantine lists them."""
    for recipient, category, subject in DEMO_HELD:
        make = heldmail.spam if category == "spam" else heldmail.virus
        heldmail.send(host.chain.smtpd_port, SPAMMER, recipient, make(SPAMMER, recipient, subject))
    heldmail.wait_held(host.chain.root / "quarantine", len(DEMO_HELD), nudge=host.chain.flush)


def _portal_text(hosts: list[Host], admins: list[str], demo_logins: bool) -> str:
    """Where the portal is, what it holds, who may log in, and how to hold more."""
    portals = [(h.name, h.portal.url) for h in hosts if h.portal]
    if len(portals) == 1:
        where = f"Quarantine portal: {portals[0][1]}"
    else:  # each host's quarantine is a directory on that host
        where = "Quarantine portals, one per host over its own held mail: " + "   ".join(
            f"{name} {url}" for name, url in portals
        )
    by_rcpt: dict[str, list[str]] = {}
    for rcpt, category, _ in DEMO_HELD:
        by_rcpt.setdefault(rcpt, []).append(
            {"spam": "GTUBE spam", "virus": "EICAR virus"}[category]
        )
    held = "; ".join(f"{' and '.join(what)} for {rcpt}" for rcpt, what in by_rcpt.items())
    if demo_logins:
        users = " or ".join(f"{u} / {p!r}" for u, p in DEMO_USERS.items())
        logins = (
            f"  log in as {users} (their own held mail),\n"
            f"  or {DEMO_ADMIN[0]} / {DEMO_ADMIN[1]!r} (administrator: everyone's, the chart)"
        )
    else:
        logins = f"  log in with a mailbox's own password; administrators: {', '.join(admins)}"
    smtpd = hosts[0].chain.smtpd_port
    return (
        f"{where}\n  held for the demo: {held}\n{logins}\n  hold another:"
        f" swaks --server 127.0.0.1:{smtpd} --from {SPAMMER} --to bob@example.com \\\n"
        f"        --body '{heldmail.GTUBE.decode()}'"
    )


def _show(message: bytes) -> str:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return "\n".join("    " + line for line in head.splitlines())


def _send_one(host: Host, user: str, password: str) -> None:
    """One message as a roaming user through this host's Postfix, shown as delivered."""
    postfix, internal = host.chain.postfix, host.chain.sink
    assert postfix is not None
    through = f" through {host.name}" if host.name else ""
    print(f"\nSending one message as a roaming user{through} (SMTP AUTH PLAIN, then relay) ...")
    before = len(internal.messages)
    with smtplib.SMTP("127.0.0.1", postfix.smtpd_port, timeout=30) as smtp:
        smtp.ehlo("laptop.example.org")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, text = smtp.docmd("AUTH", "PLAIN " + token)
        print(f"  AUTH: {code} {text.decode()}")
        smtp.sendmail(
            user,
            ["partner@remote.test"],
            f"From: {user}\r\nTo: partner@remote.test\r\n"
            "Subject: hello from the gateway demo\r\n\r\n"
            "This went through saslimap, mail-filter, clamd and spamd.\r\n".encode(),
        )
    delivered = internal.wait_for(before + 1, timeout=60)[before]
    print(f"  delivered to {delivered.rcpt_tos}, with these headers:\n{_show(delivered.data)}")


def _state_up(port: int, gauge: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        return f"{gauge} 1.0" in page.read().decode()


def _check(host: Host, user: str, password: str) -> str:
    """What Postfix would hear from this host's saslimap: OK, NO, or no reply (454)."""
    try:
        reply = saslauthd_client.query(
            host.saslimap.socket_path, user.encode(), password.encode(), b"smtp"
        )
    except saslauthd_client.NoReply:
        return "no reply"
    return "OK" if protocol.reply_is_ok(reply) else "NO"


def _wait_until_sharing(hosts: list[Host], seconds: float = 15.0) -> None:
    """Until every daemon of every host has reached Redis (they connect in the background)."""
    deadline = time.monotonic() + seconds
    while not all(
        _state_up(h.saslimap.metrics_port, "saslimap_state_up")
        and _state_up(h.chain.filter.metrics_port, "mailfilter_state_up")
        for h in hosts
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway hosts did not reach Redis within {seconds:g} s")
        time.sleep(0.05)


def _show_shared_budget(hosts: list[Host], dovecot: Dovecot) -> None:
    """A login through one host, then the other; guesses through both; the user again."""
    _wait_until_sharing(hosts)
    user, limits = "bob@example.com", LimitsConfig()
    password, seen = DEMO_USERS[user], dovecot.auth_attempts()
    print(f"\nShared state at work, for {user} (saslauthd requests as Postfix sends them):")

    def step(what: str, answers: list[str], note: str = "") -> None:
        nonlocal seen
        time.sleep(0.3)  # Dovecot's log process writes just after answering
        now = dovecot.auth_attempts()
        said = ", ".join(f"{a} x{n}" if n > 1 else a for a, n in Counter(answers).items())
        print(f"  {what:<42} {said:<9} logins at Dovecot: {now - seen}{note}")
        seen = now

    gw1, gw2 = hosts
    step(f"right password through {gw1.name}", [_check(gw1, user, password)])
    step(f"right password through {gw2.name}", [_check(gw2, user, password)],
         f" ({gw1.name}'s success, found in Redis)")  # fmt: skip
    guesses = [_check(hosts[n % 2], user, f"guess {n}") for n in range(GUESSES)]
    step(f"{GUESSES} wrong passwords, {gw1.name} and {gw2.name} in turn", guesses,
         f" of {GUESSES} (the budget, {limits.failure_budget}, for both hosts together;"
         f" then one per {limits.trickle_interval:g} s)")  # fmt: skip
    step("right password through each host", [_check(h, user, password) for h in hosts])


def _where(host: Host) -> list[str]:
    """What one host's own daemons listen on."""
    chain, sasl, postfix = host.chain, host.saslimap, host.chain.postfix
    assert postfix is not None
    return [
        f"Postfix smtpd, AUTH via saslimap   :{postfix.smtpd_port}        log {postfix.maillog}",
        f"mail-filter (content filter)       :{chain.filter.port} -> :{chain.reinject_port}"
        f"  log {chain.filter.log_path}",
        f"saslimap mux socket                {sasl.socket_path}   log {sasl.log_path}",
        f"saslimap metrics                   http://127.0.0.1:{sasl.metrics_port}/metrics",
        f"mail-filter metrics                http://127.0.0.1:{chain.filter.metrics_port}/metrics",
        *(
            [f"quarantine portal                  {host.portal.url}  log {host.portal.log_path}"]
            if host.portal
            else []
        ),
    ]


def _listing(hosts: list[Host], imap_url: str, redis: Redis | None) -> str:
    """What listens where: each host's own daemons and what the hosts share."""
    first = hosts[0].chain
    shared = [
        f"IMAP server                        {imap_url}",
        f"clamd                              {first.clamd.address}",
        f"spamd                              :{first.spamd.port}",
        f"internal mail server (demo sink)   :{first.sink.port}",
    ]
    if redis is None:  # one host, in the order the demo always printed
        own = _where(hosts[0])
        rows = [*own[:3], *shared, *own[3:]]
    else:
        shared.append(f"Redis, every daemon's [state]      {redis.url}  "
                      f"password in {redis.password_file}")  # fmt: skip
        blocks = [(f"{h.name}:", _where(h)) for h in hosts] + [("shared:", shared)]
        rows = [row for title, own in blocks for row in (title, *("  " + r for r in own))]
    return "\n".join("  " + row for row in rows)


def main() -> int:
    """Start the stack, show one message going through each host, wait for Ctrl-C."""
    gateways = _gateways()
    run_dir = Path(os.environ.get("RUN_DIR", "/tmp/mailgate-run"))
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o755)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    with ExitStack() as stack:
        imap_url = os.environ.get("IMAP_URL", "")
        ca_file = os.environ.get("IMAP_CA_FILE", "")
        dovecot = None
        if not imap_url:
            tls = make_tls(run_dir / "tls")
            mailboxes = DEMO_USERS | dict([DEMO_ADMIN])
            dovecot = stack.enter_context(Dovecot(run_dir / "dovecot", mailboxes, tls=tls))
            imap_url, ca_file = dovecot.imap_url("imap"), str(tls.ca_cert)
        admins = os.environ.get("PORTAL_ADMINS", DEMO_ADMIN[0]).replace(",", " ").split()
        settings: Settings = {
            "imap": {"url": imap_url, "ca_file": ca_file}, "logging": {"level": "info"},
            "policy": heldmail.HOLD_SPAM, "notices": {"admins": admins},
        }  # fmt: skip
        redis, names = None, [""]
        if gateways == 2:
            print("starting Redis, then gw1 and gw2, each with its own saslimap, mail-filter "
                  "and Postfix (one clamd and one spamd for both) ...", flush=True)  # fmt: skip
            redis, state = _shared_state(stack, run_dir)
            settings |= state
            names = ["gw1", "gw2"]
        else:
            print("starting saslimap, clamd, spamd, mail-filter, Postfix and the quarantine "
                  "portal ...", flush=True)  # fmt: skip
        hosts: list[Host] = []
        for name in names:
            root = run_dir / name if name else run_dir
            hosts.append(_start_host(stack, root, name, settings, hosts[0] if hosts else None))
            _start_portal(stack, hosts[-1], root, admins)
        internal = hosts[0].chain.sink
        user, password = next(iter(DEMO_USERS.items()))
        for host in hosts:
            _send_one(host, user, password)
        if redis is not None:
            assert dovecot is not None  # _gateways() refuses IMAP_URL with two hosts
            _show_shared_budget(hosts, dovecot)
        print("\nHolding demo mail for the quarantine portal (GTUBE spam, an EICAR virus) ...")
        for host in hosts:
            _hold_demo_mail(host)
        tries = "\n".join(
            f"  swaks --server 127.0.0.1:{h.chain.smtpd_port} --auth PLAIN --auth-user {user} \\\n"
            f"        --auth-password '{password}' --from {user} --to someone@remote.test\n"
            f"  testsaslauthd -f {h.saslimap.socket_path} -u {user} -p '{password}' -s smtp"
            for h in hosts
        )
        print(
            f"""
What listens where (all on 127.0.0.1):
{_listing(hosts, imap_url, redis)}

Try it (demo users: {", ".join(f"{u} / {p!r}" for u, p in DEMO_USERS.items())}):
{tries}

{_portal_text(hosts, admins, dovecot is not None)}

Every message delivered to the internal server is shown below. Ctrl-C stops everything.""",
            flush=True,
        )
        shown = len(internal.messages)
        while not stop.wait(0.5):
            for message in internal.messages[shown:]:
                print(f"\n--- delivered to {message.rcpt_tos}:\n{_show(message.data)}", flush=True)
            shown = len(internal.messages)
        print("stopping...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
