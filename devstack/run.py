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

Environment: ``IMAP_URL`` (e.g. ``imaps://imap.example.com``) and optionally
``IMAP_CA_FILE`` point saslimap at a real server (that is the one config change
for a real deployment); ``RUN_DIR`` (default ``/tmp/mailgate-run``) holds every
daemon's files and logs.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import smtplib
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.gateway import MailChain
from devstack.tls import make_tls

DEMO_USERS = {
    "alice@example.com": "alice-demo-pw",
    "bob@example.com": "bob demo pw with spaces",
}


def _show(message: bytes) -> str:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return "\n".join("    " + line for line in head.splitlines())


def main() -> int:
    """Start the stack, show one message going through, wait for Ctrl-C."""
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
        if not imap_url:
            tls = make_tls(run_dir / "tls")
            dovecot = stack.enter_context(Dovecot(run_dir / "dovecot", DEMO_USERS, tls=tls))
            imap_url, ca_file = dovecot.imap_url("imap"), str(tls.ca_cert)
        print("starting saslimap, clamd, spamd, mail-filter and Postfix ...", flush=True)
        saslimap = SaslimapDaemon(
            run_dir / "saslimap",
            {"imap": {"url": imap_url, "ca_file": ca_file}, "logging": {"level": "info"}},
        )
        stack.enter_context(saslimap)
        chain = MailChain(
            run_dir,
            filter_settings={"logging": {"level": "info"}},
            postfix_main_cf={
                "smtpd_relay_restrictions": (
                    "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
                ),
            },
            sasl_saslauthd_path=saslimap.socket_path,
        )
        stack.enter_context(chain)
        postfix, mail_filter, internal = chain.postfix, chain.filter, chain.sink
        clamd, spamd, reinject = chain.clamd, chain.spamd, chain.reinject_port
        assert postfix is not None

        user, password = next(iter(DEMO_USERS.items()))
        print("\nSending one message as a roaming user (SMTP AUTH PLAIN, then relay) ...")
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
        [delivered] = internal.wait_for(1, timeout=60)
        print(f"  delivered to {delivered.rcpt_tos}, with these headers:\n{_show(delivered.data)}")
        print(
            f"""
What listens where (all on 127.0.0.1):
  Postfix smtpd, AUTH via saslimap   :{postfix.smtpd_port}        log {postfix.maillog}
  mail-filter (content filter)       :{mail_filter.port} -> :{reinject}  log {mail_filter.log_path}
  saslimap mux socket                {saslimap.socket_path}   log {saslimap.log_path}
  IMAP server                        {imap_url}
  clamd                              {clamd.address}
  spamd                              :{spamd.port}
  internal mail server (demo sink)   :{internal.port}
  saslimap metrics                   http://127.0.0.1:{saslimap.metrics_port}/metrics
  mail-filter metrics                http://127.0.0.1:{mail_filter.metrics_port}/metrics

Try it (demo users: {", ".join(f"{u} / {p!r}" for u, p in DEMO_USERS.items())}):
  swaks --server 127.0.0.1:{postfix.smtpd_port} --auth PLAIN --auth-user {user} \\
        --auth-password '{password}' --from {user} --to someone@remote.test
  testsaslauthd -f {saslimap.socket_path} -u {user} -p '{password}' -s smtp

Every message delivered to the internal server is shown below. Ctrl-C stops everything.""",
            flush=True,
        )
        shown = 1
        while not stop.wait(0.5):
            for message in internal.messages[shown:]:
                print(f"\n--- delivered to {message.rcpt_tos}:\n{_show(message.data)}", flush=True)
            shown = len(internal.messages)
        print("stopping...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
