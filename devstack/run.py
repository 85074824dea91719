"""``make run``: bring up the gateway on this machine, on loopback, until Ctrl-C.

This module owns the demo's composition: a real Dovecot with demo users as
the stand-in internal IMAP server (unless ``IMAP_URL`` names a real one), the
saslimap daemon in front of it, and a Postfix smtpd that authenticates through
saslimap.  It prints what listens where and commands to try, then waits; Ctrl-C
(or SIGTERM) stops everything it started, in reverse order.

Environment: ``IMAP_URL`` (e.g. ``imaps://imap.example.com``) and optionally
``IMAP_CA_FILE`` point saslimap at a real server instead of the demo Dovecot;
``RUN_DIR`` (default ``/tmp/mailgate-run``) holds every daemon's files and logs.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

from devstack.dovecot import Dovecot
from devstack.postfix import Postfix
from devstack.saslimapd import SaslimapDaemon
from devstack.tls import make_tls

DEMO_USERS = {
    "alice@example.com": "alice-demo-pw",
    "bob@example.com": "bob demo pw with spaces",
}


def main() -> int:
    """Start the stack, print how to use it, wait for Ctrl-C."""
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
            dovecot = Dovecot(run_dir / "dovecot", DEMO_USERS, tls=tls)
            dovecot.start()
            stack.callback(dovecot.stop)
            imap_url, ca_file = dovecot.imap_url("imap"), str(tls.ca_cert)
            print(
                f"Dovecot (demo internal IMAP server): {dovecot.imap_url('imap')} (STARTTLS), "
                f"{dovecot.imap_url('imaps')}; log {dovecot.log_path}"
            )
        saslimap = SaslimapDaemon(
            run_dir / "saslimap",
            {"imap": {"url": imap_url, "ca_file": ca_file}, "logging": {"level": "info"}},
        )
        saslimap.start()
        stack.callback(saslimap.stop)
        postfix = Postfix(run_dir / "postfix", sasl_saslauthd_path=saslimap.socket_path)
        postfix.start()
        stack.callback(postfix.stop)

        user, password = next(iter(DEMO_USERS.items()))
        print(
            f"""
saslimap (mux socket):     {saslimap.socket_path}  -> {imap_url}
                           config {saslimap.config_path}, log {saslimap.log_path}
Postfix smtpd (SMTP AUTH): 127.0.0.1:{postfix.smtpd_port}; log {postfix.maillog}

Try it:
  testsaslauthd -f {saslimap.socket_path} -u {user} -p '{password}' -s smtp
  .venv/bin/saslimap test -f {saslimap.socket_path} -u {user} -s smtp     (asks for the password)
  swaks --server 127.0.0.1:{postfix.smtpd_port} --auth PLAIN --auth-user {user} \\
        --auth-password '{password}' --from {user} --to someone@remote.test
Demo users: {", ".join(f"{u} / {p!r}" for u, p in DEMO_USERS.items())}
(relayed mail is discarded by this demo Postfix; nothing leaves the machine)

Ctrl-C stops everything.""",
            flush=True,
        )
        stop.wait()
        print("stopping...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
