"""A real SpamAssassin daemon (spamd) working offline, for tests and benchmarks.

This module owns one throw-away spamd: a site configuration directory of its
own (Debian's ``*.pre`` plugin lists plus a generated ``local.cf`` with every
network test off), a Bayes database, a helper home directory, pid and log
files under a caller-chosen ``workdir``, and its life cycle.  spamd runs in
the foreground as our child process; its master stays root and forks
children that switch to ``debian-spamd``.  Nothing under /etc/spamassassin,
/var/lib/spamassassin or ~root is written.

Layout of ``workdir``::

    etc/           --siteconfigpath: *.pre copied from /etc/spamassassin, local.cf
    bayes/         bayes_path = bayes/bayes (bayes_toks, bayes_seen), owned by debian-spamd
    home/          helper home (-H) and HOME of sa-learn/spamassassin, owned by debian-spamd
    spamd.pid      pid file (-r), removed by spamd on exit
    spamd.log      spamd's log (-s)
    spamd.out      stdout and stderr (spamd copies its log there; early errors too)

The rules are Debian's ``/usr/share/spamassassin`` (4.0.1, body rules
precompiled under /var/lib/spamassassin/compiled): no sa-update is needed or
possible here.  Bayes needs 200 spam and 200 ham learned before it scores.

With ``bayes_redis_dsn`` the Bayes database is a Redis server instead of the
files under bayes/: etc/ then also holds the project's shipped
``conf/spamassassin/bayes-redis.cf`` with that ``bayes_sql_dsn``, exactly as a
gateway host would, so several instances can share one database.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import socket
import time
from pathlib import Path

from devstack.ports import LOOPBACK, free_port
from devstack.proc import (
    ChildLauncher,
    check_config_path,
    check_traversable,
    child_pids,
    run_checked,
    stop_pid,
)

__all__ = ["BAYES_REDIS_CF", "SPAMD_USER", "Spamd", "bayes_redis_cf", "bayes_redis_dsn"]

log = logging.getLogger(__name__)

SPAMD_USER = "debian-spamd"
"""The unprivileged user spamd's children (and our sa-learn calls) run as."""

_DEBIAN_SITE_CONFIG = Path("/etc/spamassassin")

BAYES_REDIS_CF = Path(__file__).resolve().parents[1] / "conf" / "spamassassin" / "bayes-redis.cf"
"""The shipped settings that put every gateway host's Bayes in one Redis database."""

_DSN_LINE = re.compile(r"^bayes_sql_dsn\s.*$", re.M)

_PING = b"PING SPAMC/1.5\r\n\r\n"
_PONG = b"SPAMD/1.5 0 PONG"

# "0.000          0        123          0  non-token data: nspam"
_MAGIC_LINE = re.compile(rb"^\S+\s+\S+\s+(\d+)\s+\S+\s+non-token data: (nspam|nham)\s*$", re.M)


def bayes_redis_dsn(server: str, *, database: int, password: str | None = None) -> str:
    """SpamAssassin's ``bayes_sql_dsn`` for BayesStore::Redis.

    ``server`` is ``host:port`` or a Unix socket's absolute path.  The DSN
    is split on ';' with no quoting, so no value may contain one.
    """
    if database < 0:
        raise ValueError("database must be 0 or more")
    values = [server] + ([password] if password is not None else [])
    if any(";" in value or not value for value in values):
        raise ValueError("server and password must be non-empty and without ';'")
    fields = [f"server={server}"]
    if password is not None:
        fields.append(f"password={password}")
    fields.append(f"database={database}")
    return ";".join(fields)


def bayes_redis_cf(dsn: str) -> str:
    """The shipped conf/spamassassin/bayes-redis.cf with its ``bayes_sql_dsn`` set to ``dsn``."""
    text = BAYES_REDIS_CF.read_text(encoding="utf-8")
    if len(_DSN_LINE.findall(text)) != 1:
        raise ValueError(f"{BAYES_REDIS_CF} no longer has exactly one bayes_sql_dsn line")
    return _DSN_LINE.sub(lambda _: f"bayes_sql_dsn {dsn}", text)


def _ping(port: int, timeout: float) -> bool:
    """One PING round trip; False on any connection problem or unexpected answer."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(_PING)
            answer = sock.makefile("rb").readline(256)
    except OSError:
        return False
    return answer.startswith(_PONG)


class Spamd(ChildLauncher):
    """One spamd on 127.0.0.1:``port`` with ``children`` pre-forked children.

    ``allow_tell`` adds ``--allow-tell`` so clients may learn spam/ham
    (``TELL``, ``spamc -L``).  ``extra_config`` is appended to local.cf, e.g.
    ``"bayes_auto_learn 1"`` or ``"required_score 6.31"``.  ``bayes_redis_dsn``
    (see bayes_redis_dsn()) keeps Bayes in Redis via the shipped bayes-redis.cf.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        children: int = 2,
        allow_tell: bool = True,
        extra_config: str = "",
        bayes_redis_dsn: str | None = None,
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        if children < 1:
            raise ValueError("children must be at least 1")
        self._port = port if port is not None else free_port()
        self._children = children
        self._allow_tell = allow_tell
        self._extra_config = extra_config
        self._bayes_redis_dsn = bayes_redis_dsn
        self._process = None
        self.start_seconds: float | None = None
        """Wall time the last start() took until PING answered PONG."""

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def siteconfig_dir(self) -> Path:
        """The ``--siteconfigpath`` directory (replaces /etc/spamassassin entirely)."""
        return self.workdir / "etc"

    @property
    def bayes_dir(self) -> Path:
        return self.workdir / "bayes"

    @property
    def bayes_path(self) -> Path:
        """The ``bayes_path`` prefix: files are ``bayes_toks``, ``bayes_seen`` next to it."""
        return self.bayes_dir / "bayes"

    @property
    def home_dir(self) -> Path:
        return self.workdir / "home"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "spamd.pid"

    @property
    def log_path(self) -> Path:
        return self.workdir / "spamd.log"

    @property
    def output_path(self) -> Path:
        return self.workdir / "spamd.out"

    # -- configuration ------------------------------------------------------

    def local_cf_text(self) -> str:
        """The local.cf this instance writes on start()."""
        return f"""# Generated by devstack.spamd; rewritten on every start().
# No network here: DNS blocklists, Razor, Pyzor and DCC would each wait for
# timeouts and make scores depend on the machine.
dns_available no
skip_rbl_checks 1
use_razor2 0
use_pyzor 0
# Debian's *.pre do not load the DCC plugin, and --lint fails on an option
# whose plugin is not loaded.
ifplugin Mail::SpamAssassin::Plugin::DCC
  use_dcc 0
endif
# Add X-Spam-* headers to the original instead of wrapping it in a report.
report_safe 0
use_bayes 1
bayes_path {self.bayes_path}
# spamd's children (debian-spamd) and sa-learn must share the database.
bayes_file_mode 0666
# Learning only when a test says so: autolearn would make nspam/nham depend
# on which messages earlier tests happened to check.
bayes_auto_learn 0
{self._extra_config}
"""

    def argv(self) -> list[str]:
        """The spamd command line this instance runs."""
        argv = [
            "spamd",
            f"--siteconfigpath={self.siteconfig_dir}",
            "--listen", f"{LOOPBACK}:{self._port}",
            "--allowed-ips", LOOPBACK,
            "--ipv4-only",
            # All children forked up front: a measurement must not include
            # prefork's on-demand spawning.
            "--max-children", str(self._children),
            "--min-children", str(self._children),
            "--nouser-config",
            "--username", SPAMD_USER,
            f"--helper-home-dir={self.home_dir}",
            "--pidfile", str(self.pid_path),
            "--syslog", str(self.log_path),
        ]  # fmt: skip
        if self._allow_tell:
            argv.append("--allow-tell")
        return argv

    def _prepare(self) -> None:
        # spamd's children and our sa-learn run as debian-spamd and must
        # reach etc/ and bayes/ through the "others" bits.
        check_traversable(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        shutil.rmtree(self.siteconfig_dir, ignore_errors=True)
        self.siteconfig_dir.mkdir()
        for pre in sorted(_DEBIAN_SITE_CONFIG.glob("*.pre")):
            shutil.copyfile(pre, self.siteconfig_dir / pre.name)
        (self.siteconfig_dir / "local.cf").write_text(self.local_cf_text(), encoding="utf-8")
        if self._bayes_redis_dsn is not None:
            # Next to local.cf, as on a gateway host: its bayes_path stays and
            # is ignored once bayes_store_module names the Redis store.
            (self.siteconfig_dir / "bayes-redis.cf").write_text(
                bayes_redis_cf(self._bayes_redis_dsn), encoding="utf-8"
            )
        user = pwd.getpwnam(SPAMD_USER)
        for directory in (self.bayes_dir, self.home_dir):
            directory.mkdir(exist_ok=True)
            os.chown(directory, user.pw_uid, user.pw_gid)
            directory.chmod(0o755)

    # -- life cycle ---------------------------------------------------------

    def ping(self, timeout: float = 2.0) -> bool:
        """True if a child answers ``PING`` with ``SPAMD/1.5 0 PONG``."""
        return _ping(self._port, timeout)

    def start(self, timeout: float = 30.0) -> None:
        """Start spamd as a child process and wait until it answers PING."""
        self._refuse_if_running("spamd")
        began = time.monotonic()
        self._prepare()
        self._spawn(
            self.argv(), name="spamd", output=self.output_path,
            ready=lambda t: self.ping(timeout=t), deadline=began + timeout,
            logs=(self.output_path, self.log_path), pause=0.02,
        )  # fmt: skip
        self.start_seconds = time.monotonic() - began
        log.info(
            "spamd %s started in %.3f s on port %d", self.workdir, self.start_seconds, self._port
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master (it stops its children) and wait for all of them; no-op if stopped."""
        process = self._process
        if process is None:
            return
        children = child_pids(process.pid) if process.poll() is None else []
        self._reap(timeout)
        # A child busy with a long message may outlive the master briefly;
        # the next start() on the same port must not find it still bound.
        for child in children:
            stop_pid(child, timeout, cmdline_contains="spamd")

    def __repr__(self) -> str:
        return f"Spamd({self.workdir}, pid={self.pid}, port={self._port})"

    # -- tools sharing the configuration ------------------------------------

    def _as_spamd_user(self, *argv: str) -> list[str]:
        """``argv`` run as debian-spamd with HOME in our home_dir.

        As root, spamassassin and sa-learn create ~root/.spamassassin, and
        any Bayes file they create would be root's; as debian-spamd with our
        HOME they touch only this instance's directories, like spamd does.
        """
        return [
            "setpriv", f"--reuid={SPAMD_USER}", f"--regid={SPAMD_USER}", "--init-groups",
            "env", f"HOME={self.home_dir}", *argv,
        ]  # fmt: skip

    def lint(self) -> None:
        """Run ``spamassassin --lint`` on the site config; raise RuntimeError with its output."""
        if not self.siteconfig_dir.is_dir():
            self._prepare()
        run_checked(
            self._as_spamd_user(
                "spamassassin",
                f"--siteconfigpath={self.siteconfig_dir}",
                "--nocreate-prefs",
                "--lint",
            ),
            what="spamassassin --lint",
        )

    def learned_counts(self) -> tuple[int, int]:
        """(nspam, nham) learned into this instance's Bayes database so far.

        Runs ``sa-learn --dump magic`` (about 0.6 s: Perl loads the whole
        ruleset) as debian-spamd with the same site config, hence the same
        bayes_path, as spamd.  Before anything was learned there is no
        database and sa-learn fails; that counts as (0, 0).  With Redis the
        counts are the shared database's (sa-learn creates it empty if need
        be), and an unreachable Redis is a RuntimeError.
        """
        if self._bayes_redis_dsn is None and not any(self.bayes_dir.glob("bayes_toks*")):
            return (0, 0)
        result = run_checked(
            self._as_spamd_user(
                "sa-learn", f"--siteconfigpath={self.siteconfig_dir}", "--dump", "magic"
            ),
            what="sa-learn --dump magic",
        )
        counts = {name: int(value) for value, name in _MAGIC_LINE.findall(result.stdout)}
        if set(counts) != {b"nspam", b"nham"}:
            raise RuntimeError(
                f"unexpected sa-learn --dump magic output:\n{result.stdout.decode()}"
            )
        return (counts[b"nspam"], counts[b"nham"])
