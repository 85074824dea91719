"""The mail half of the gateway on loopback: clamd, spamd, mail-filter, Postfix, a sink.

This module owns starting that chain (used by ``make run``, the reliability
tests and the fault report) and the faults we inject into it: killing the
filter, stopping a scanner, taking the re-injection target away.

    client -> Postfix smtpd -> smtp-amavis -> mail-filter -> Postfix 127.0.0.1:<reinject>
           -> transport -> SmtpSink (the internal mail server)
"""

from __future__ import annotations

import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from devstack.clamd import Clamd
from devstack.daemons import FilterDaemon
from devstack.ports import free_port
from devstack.postfix import Postfix
from devstack.proc import Launcher
from devstack.sink import SmtpSink
from devstack.spamd import Spamd

# conf/postfix/master.cf's filter wiring, on our ports.
FILTER_MASTER_CF = """\
smtp-amavis unix - - n - {procs} smtp
  -o smtp_data_done_timeout=1200
  -o smtp_send_xforward_command=yes
  -o disable_dns_lookups=yes
127.0.0.1:{reinject} inet n - n - - smtpd
  -o content_filter=
  -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters
  -o mynetworks=127.0.0.0/8
  -o smtpd_recipient_restrictions={recipient_restrictions}
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_sasl_auth_enable=no
"""


class MailChain(Launcher):
    """clamd + spamd + mail-filter between two Postfix listeners, ending in a sink.

    With ``shared_with`` (another gateway host's chain) this chain uses that one's
    clamd, spamd and sink, which that chain starts and stops.
    """

    def __init__(
        self,
        root: Path,
        *,
        filter_settings: dict[str, dict[str, object]] | None = None,
        postfix_main_cf: dict[str, str] | None = None,
        sasl_saslauthd_path: Path | None = None,
        filter_processes: int = 4,
        fast_retry: bool = False,
        reinject_recipient_restrictions: str = "permit_mynetworks,reject",
        shared_with: MailChain | None = None,
    ) -> None:
        self.root = root
        self.reinject_port = free_port()
        other = shared_with
        self.clamd: Clamd = Clamd(root / "clamd") if other is None else other.clamd
        self.spamd: Spamd = Spamd(root / "spamd") if other is None else other.spamd
        self.sink: SmtpSink = SmtpSink() if other is None else other.sink
        # Started and stopped by this chain only if made by it.
        self._own: list[Launcher] = [self.clamd, self.spamd, self.sink] if other is None else []
        settings: dict[str, dict[str, object]] = {
            "reinject": {"address": f"127.0.0.1:{self.reinject_port}"},
            "clamd": {"address": self.clamd.address},
            "spamd": {"address": f"127.0.0.1:{self.spamd.port}"},
            "quarantine": {"directory": str(root / "quarantine")},
        }
        for section, values in (filter_settings or {}).items():
            settings.setdefault(section, {}).update(values)
        self.filter = FilterDaemon(root / "filter", settings)
        self._main_cf = dict(postfix_main_cf or {})
        if fast_retry:  # deferred mail is retried within seconds, not minutes
            self._main_cf.update(
                queue_run_delay="1s", minimal_backoff_time="1s", maximal_backoff_time="2s"
            )
        self._sasl = sasl_saslauthd_path
        self._procs = filter_processes
        self._rcpt_restrictions = reinject_recipient_restrictions
        self.postfix: Postfix | None = None
        self._stack = ExitStack()

    def start(self) -> None:
        """Start every daemon (in dependency order); stop them all if one fails."""
        with ExitStack() as stack:
            for daemon in self._own:
                stack.enter_context(daemon)
            stack.enter_context(self.filter)
            to_internal = f"smtp:[127.0.0.1]:{self.sink.port}"
            main_cf = {
                "relay_domains": "example.com",
                "default_transport": to_internal,
                "relay_transport": to_internal,
                "content_filter": f"smtp-amavis:[127.0.0.1]:{self.filter.port}",
                **self._main_cf,
            }
            self.postfix = Postfix(
                self.root / "postfix",
                sasl_saslauthd_path=self._sasl,
                main_cf=main_cf,
                master_cf_extra=FILTER_MASTER_CF.format(
                    reinject=self.reinject_port,
                    procs=self._procs,
                    recipient_restrictions=self._rcpt_restrictions,
                ),
            )
            stack.enter_context(self.postfix)
            self._stack = stack.pop_all()

    def stop(self) -> None:
        """Stop everything that was started."""
        self._stack.close()

    @property
    def smtpd_port(self) -> int:
        """Where mail enters."""
        assert self.postfix is not None
        return self.postfix.smtpd_port

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now."""
        assert self.postfix is not None
        subprocess.run(
            ["postqueue", "-c", str(self.postfix.config_dir), "-f"], check=True, timeout=30
        )

    def queue_empty(self) -> bool:
        """Whether Postfix holds no message any more."""
        assert self.postfix is not None
        done = subprocess.run(
            ["postqueue", "-c", str(self.postfix.config_dir), "-j"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return done.returncode == 0 and not done.stdout.strip()

    # -- faults -------------------------------------------------------------
    def kill_filter(self) -> None:
        """SIGKILL mail-filter (no drain, no goodbye) and start it again on the same port."""
        self.filter.signal(signal.SIGKILL)
        assert self.filter.proc is not None
        self.filter.proc.wait(10)
        self.filter.start()

    def reinject_to(self, address: str) -> None:
        """Point the filter's re-injection somewhere else (SIGHUP; waits for the reload)."""
        reinject = self.filter.settings["reinject"]
        reinject["address"] = address
        self.filter.write_config()
        before = self.filter.log_text().count("reloaded configuration")
        self.filter.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.filter.log_text().count("reloaded configuration") <= before:
            if time.monotonic() > deadline:
                raise TimeoutError("mail-filter did not reload")
            time.sleep(0.05)
