"""A private Postfix instance on 127.0.0.1 for SMTP AUTH and relay tests.

This module owns one throw-away Postfix: its own config_directory (main.cf,
master.cf, sasl/smtpd.conf), queue and data directories under ``workdir``, a
maillog file written by postlogd (there is no syslog here), and its life
cycle through the ``postfix -c DIR`` command.  Mail can never leave the
machine: both default_transport and relay_transport are ``discard`` unless
the caller overrides them.

Layout of ``workdir``::

    etc/            config_directory: main.cf, master.cf, sasl/smtpd.conf
    queue/          queue_directory (pid/master.pid lives here)
    data/           data_directory, owned by postfix
    maillog         every Postfix process logs here

meta_directory is left at Debian's /etc/postfix (postfix-files,
dynamicmaps.cf, postfix-script): ``postfix -c DIR check`` and ``start`` work
with it as is, and map types from add-on packages (pcre, lmdb) keep
registering there.  Copying it would only freeze a snapshot.
"""

from __future__ import annotations

import logging
import os
import pwd
import time
from collections.abc import Mapping
from pathlib import Path

from devstack.ports import LOOPBACK, free_port, wait_for_greeting
from devstack.proc import (
    Launcher,
    check_config_path,
    check_traversable,
    check_unix_path,
    child_pids,
    is_running,
    read_pid,
    run_checked,
    stop_pid,
    tail,
)

__all__ = ["Postfix"]

log = logging.getLogger(__name__)

# The services of Debian's master.cf that a relay-only instance uses, all with
# chroot = n: a chroot would need copies of /etc/resolv.conf, libraries and the
# SASL socket inside the queue directory.  The stock "smtp inet" line is
# deliberately absent (it would bind port 25); start() adds smtpd on our port.
_MASTER_CF_SERVICES = """\
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
# postlogd writes maillog_file; without it (and without syslog) logs are lost.
postlog    unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(Launcher):
    """One Postfix MTA whose smtpd listens on 127.0.0.1:``smtpd_port`` only.

    SASL: pass ``sasl_saslauthd_path`` (libsasl -> saslauthd mux socket, the
    production setup) or ``sasl_dovecot_path`` (Dovecot auth socket), not
    both.  Relaying then requires AUTH: mynetworks contains only 127.0.0.2,
    so the test client at 127.0.0.1 is not trusted by address.  ``main_cf``
    overrides or extends any main.cf parameter; ``master_cf_extra`` is
    appended to master.cf (e.g. a content filter's return smtpd).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        smtpd_port: int | None = None,
        sasl_saslauthd_path: Path | None = None,
        sasl_dovecot_path: Path | None = None,
        main_cf: Mapping[str, str] | None = None,
        master_cf_extra: str = "",
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        if sasl_saslauthd_path is not None and sasl_dovecot_path is not None:
            raise ValueError("pass sasl_saslauthd_path or sasl_dovecot_path, not both")
        for sasl_path in (sasl_saslauthd_path, sasl_dovecot_path):
            if sasl_path is not None:
                check_config_path(sasl_path.absolute())
                check_unix_path(sasl_path.absolute())
        self._smtpd_port = smtpd_port if smtpd_port is not None else free_port()
        self._saslauthd_path = (
            sasl_saslauthd_path.absolute() if sasl_saslauthd_path is not None else None
        )
        self._dovecot_path = sasl_dovecot_path.absolute() if sasl_dovecot_path is not None else None
        self._main_cf_overrides: dict[str, str] = dict(main_cf or {})
        self._master_cf_extra = master_cf_extra
        self.start_seconds: float | None = None
        """Wall time the last start() took, from ``postfix check`` to the 220 greeting."""

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def smtpd_port(self) -> int:
        return self._smtpd_port

    @property
    def config_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.workdir / "queue"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def maillog(self) -> Path:
        return self.workdir / "maillog"

    @property
    def pid(self) -> int | None:
        """Pid of the running master process, or None."""
        pid = read_pid(self.queue_dir / "pid" / "master.pid")
        if pid is None or not is_running(pid):
            return None
        return pid

    def maillog_text(self) -> str:
        """Everything Postfix has logged so far ("" before the first start)."""
        try:
            return self.maillog.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- configuration ------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters this instance is (or will be) started with."""
        params: dict[str, str] = {
            "compatibility_level": "3.7",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            # No syslog here: postlogd writes this file.  `postfix check`
            # exits 1 *silently* unless the file is under one of these
            # prefixes (default: /var, /dev/stdout).
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.workdir),
            # Debian's defaults name /etc/aliases.db, which need not exist.
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "myhostname": "gateway.test",
            "mydomain": "gateway.test",
            "myorigin": "$mydomain",
            # A gateway delivers nothing locally (GATEWAY.md): every domain
            # is remote, and remote means discard below.
            "mydestination": "",
            "local_recipient_maps": "",
            # 127.0.0.1 is where tests connect from, so it must NOT be
            # trusted by address: relaying has to go through AUTH.
            "mynetworks": "127.0.0.2/32",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "default_transport": "discard",
            "relay_transport": "discard",
            # Tests authenticate in clear on loopback; nothing offers STARTTLS.
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "broken_sasl_auth_clients": "no",
            "smtpd_sasl_auth_enable": "no",
            "biff": "no",
        }
        if self._saslauthd_path is not None:
            # Debian's libsasl reads $config_directory/sasl/<smtpd_sasl_path>.conf
            # (written by _write_config), not cyrus_sasl_config_path.
            params.update(
                smtpd_sasl_auth_enable="yes",
                smtpd_sasl_type="cyrus",
                smtpd_sasl_path="smtpd",
            )
        elif self._dovecot_path is not None:
            params.update(
                smtpd_sasl_auth_enable="yes",
                smtpd_sasl_type="dovecot",
                smtpd_sasl_path=str(self._dovecot_path),
            )
        params.update(self._main_cf_overrides)
        return params

    def update_main_cf(self, params: Mapping[str, str]) -> None:
        """Merge ``params`` into main.cf; applied by the next start() or reload()."""
        self._main_cf_overrides.update(params)

    def _master_cf_text(self) -> str:
        smtpd = f"{LOOPBACK}:{self._smtpd_port} inet n - n - - smtpd\n"
        return (
            "# Generated by devstack.postfix; rewritten on every start() and reload().\n"
            + smtpd
            + _MASTER_CF_SERVICES
            + self._master_cf_extra
            + ("\n" if self._master_cf_extra and not self._master_cf_extra.endswith("\n") else "")
        )

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(
            "# Generated by devstack.postfix; rewritten on every start() and reload().\n" + main,
            encoding="utf-8",
        )
        (self.config_dir / "master.cf").write_text(self._master_cf_text(), encoding="utf-8")
        # Postfix re-reads a main.cf modified within the last ~2 seconds every
        # 300 ms until it is older (a guard against half-written files in
        # dict_load_file), which made each `postfix check`/`start` of a fresh
        # config take 1.7-2.6 s instead of 0.13 s.  The files are complete, so
        # they are backdated.
        backdated = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (backdated, backdated))
        sasl_dir = self.config_dir / "sasl"
        sasl_dir.mkdir(exist_ok=True)
        smtpd_conf = sasl_dir / "smtpd.conf"
        if self._saslauthd_path is not None:
            # Without this file libsasl offers every installed mechanism
            # (SCRAM, NTLM...) and AUTH fails with 454.
            smtpd_conf.write_text(
                "pwcheck_method: saslauthd\n"
                "mech_list: PLAIN LOGIN\n"
                f"saslauthd_path: {self._saslauthd_path}\n",
                encoding="ascii",
            )
        elif smtpd_conf.exists():
            smtpd_conf.unlink()

    def _prepare(self) -> None:
        check_traversable(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        if self._saslauthd_path is not None:
            # smtpd runs as 'postfix' and connects to the mux socket itself.
            check_traversable(self._saslauthd_path.parent)
        # `postfix check` chdirs into the queue directory before creating its
        # subdirectories; it must exist and belong to root.
        self.queue_dir.mkdir(exist_ok=True)
        self.queue_dir.chmod(0o755)
        # The master takes its lock in data_directory as mail_owner; postfix
        # check only warns ("not owned by postfix") but the start then fails.
        postfix_user = pwd.getpwnam("postfix")
        self.data_dir.mkdir(exist_ok=True)
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self._write_config()

    def _postfix(self, command: str) -> None:
        run_checked(
            ["postfix", "-c", str(self.config_dir), command],
            what=f"postfix {command}",
            log=self.maillog,
        )

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """``postfix check`` then ``postfix start``; wait for smtpd's 220 greeting."""
        if self.pid is not None:
            raise RuntimeError(f"Postfix already running in {self.workdir} (pid {self.pid})")
        began = time.monotonic()
        self._prepare()
        self._postfix("check")
        self._postfix("start")
        try:
            wait_for_greeting(LOOPBACK, self._smtpd_port, b"220", timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        log.info(
            "postfix %s started in %.3f s (smtpd %d)",
            self.workdir, self.start_seconds, self._smtpd_port,
        )  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        """``postfix stop`` and wait until the master is gone; a no-op if not running."""
        pid = self.pid
        if pid is None:
            return
        try:
            self._postfix("stop")
        except RuntimeError:
            # E.g. config files removed under us: fall back to signalling the
            # master directly, which is what `postfix stop` does anyway.
            log.warning("postfix stop failed; sending SIGTERM to %d\n%s", pid, tail(self.maillog))
        stop_pid(pid, timeout)

    def reload(self, timeout: float = 10.0) -> None:
        """Rewrite the config files and make the running master re-read them.

        Returns once every process that ran the old configuration has exited
        (or ``timeout`` passed: a child serving a client finishes that session
        with the old settings first).  Waiting only for the master's "reload"
        log line is not enough: old idle smtpd processes notice the reload
        asynchronously (their status pipe closes) and one of them may still
        accept the next connection with the old settings, measured here at
        about 1 run in 10.
        """
        master = self.pid
        if master is None:
            raise RuntimeError("Postfix is not running")
        self._write_config()
        old_children = set(child_pids(master))
        before = self.maillog_text().count(" reload -- version ")
        self._postfix("reload")
        deadline = time.monotonic() + timeout
        while self.maillog_text().count(" reload -- version ") <= before:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Postfix did not log a reload within {timeout} s")
            time.sleep(0.01)
        while lingering := old_children & set(child_pids(master)):
            if time.monotonic() >= deadline:
                log.warning("postfix reload: pids %s still run the old configuration", lingering)
                return
            time.sleep(0.01)
