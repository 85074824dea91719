"""A real Dovecot IMAP server standing in for the company's internal mail server.

This module owns one throw-away Dovecot instance: its configuration file, its
passwd-file of users (SSHA512 hashes computed here), its runtime, state and
mail directories under a caller-chosen ``workdir``, and its life cycle
(``dovecot -c`` to start, SIGTERM to the master to stop).  Everything listens
on 127.0.0.1 only and logs to ``workdir/dovecot.log``; nothing touches
/etc/dovecot or syslog.

Layout of ``workdir`` (keep it short: Dovecot's Unix sockets live in ``run/``)::

    dovecot.conf   generated configuration
    users          passwd-file, root:dovecot 0640
    run/           base_dir (master.pid, sockets)
    state/         state_dir
    mail/%d/%n     users' maildirs, owned by the unprivileged mail user
    dovecot.log    every Dovecot process logs here
"""

from __future__ import annotations

import base64
import grp
import hashlib
import logging
import math
import os
import pwd
import secrets
import ssl
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from devstack.ports import LOOPBACK, free_port, wait_for_greeting
from devstack.proc import (
    UNIX_PATH_MAX,
    Launcher,
    check_config_path,
    check_traversable,
    is_running,
    read_pid,
    run_checked,
    stop_pid,
)
from devstack.tls import TlsFiles

__all__ = ["Dovecot", "ssha512"]

log = logging.getLogger(__name__)

# Mail is stored as 'nobody': an unprivileged uid that owns nothing else, and
# (65534) is above Dovecot's first_valid_uid = 500, which refuses system uids
# such as 'dovecot' (103) unless lowered.  Creating a dedicated vmail user
# would mean editing /etc/passwd for a throw-away instance.
_CONF = Path(__file__).resolve().parents[1] / "conf" / "dovecot"
_PLACEHOLDER = "10.0.0.25"  # the gateway's address in the shipped files
_LISTED_AT = "/etc/dovecot/mailgate-gateways"


def gateway_snippet(directory: Path, gateway: str) -> str:
    """The shipped conf/dovecot/ settings for a gateway at ``gateway``, as ``extra_config``.

    Its address list is written to ``directory`` (readable by Dovecot's auth
    process); the snippet is returned with that path and the address put in.
    """
    listed = directory / "mailgate-gateways"
    addresses = (_CONF / "mailgate-gateways").read_text()
    snippet = (_CONF / "conf.d" / "99-mailgate-gateway.conf").read_text()
    if _PLACEHOLDER not in addresses or _PLACEHOLDER not in snippet or _LISTED_AT not in snippet:
        raise ValueError("conf/dovecot/ no longer holds the placeholders this fills in")
    directory.mkdir(parents=True, exist_ok=True)
    listed.write_text(addresses.replace(_PLACEHOLDER, gateway))
    listed.chmod(0o644)
    return snippet.replace(_PLACEHOLDER, gateway).replace(_LISTED_AT, str(listed))


_MAIL_USER = "nobody"

# Dovecot's auth process runs as default_internal_user = dovecot and must read
# the passwd-file; nobody else needs to.
_AUTH_GROUP = "dovecot"

# Longest socket name Dovecot creates below base_dir ("token-login/tokenlogin"
# is 22 bytes, plus the separator and some slack).
_BASE_DIR_SOCKET_SUFFIX = 25

# The log line written once per SASL authentication request, success or
# failure, when log_debug selects the auth_request_finished event (2.3.x):
#   auth: Debug: auth(alice@example.com,127.0.0.1,<sess>): Auth request finished
_AUTH_FINISHED = b"): Auth request finished"


def ssha512(password: str, salt: bytes | None = None) -> str:
    """Dovecot's ``{SSHA512}`` scheme: base64(sha512(password + salt) + salt).

    Dovecot splits digest and salt by the digest length (64 bytes), so any
    salt length works; 16 random bytes is what doveadm pw uses.
    """
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.sha512(password.encode("utf-8") + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode("ascii")


def _check_credentials(user: str, password: str) -> None:
    """Refuse what a passwd-file line or Dovecot's auth protocol cannot carry."""
    # ':' separates passwd-file fields; TAB/CR/LF/NUL break the line format
    # and Dovecot's tab-separated auth protocol (it rejects TAB in passwords).
    forbidden = "\t\r\n\0"
    if not user or any(c in user for c in forbidden + ":"):
        raise ValueError(f"user name must be non-empty without ':', TAB, CR, LF, NUL: {user!r}")
    if any(c in password for c in forbidden):
        raise ValueError("password must not contain TAB, CR, LF or NUL")


def _lookup_key(user: str) -> str:
    """The form in which Dovecot looks ``user`` up in the passwd-file.

    auth_username_format defaults to %Lu, which lowercases ASCII letters only
    before the lookup, so the file must hold the same form or mixed-case
    entries would never match.
    """
    return user.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"))


class Dovecot(Launcher):
    """One Dovecot IMAP server on 127.0.0.1 with passwd-file users.

    ``users`` maps login names (``alice@example.com``) to clear-text passwords.
    With ``tls`` the plain IMAP port offers STARTTLS and an implicit-TLS IMAPS
    port is opened as well.  ``fast_failures`` trades Dovecot's brute-force
    protections for test speed (see ``_auth_config``).  ``extra_config`` is
    appended verbatim to dovecot.conf for settings this class does not model.
    """

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        *,
        tls: TlsFiles | None = None,
        imap_port: int | None = None,
        imaps_port: int | None = None,
        fast_failures: bool = True,
        extra_config: str = "",
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        if len(os.fsencode(self.workdir / "run")) + _BASE_DIR_SOCKET_SUFFIX > UNIX_PATH_MAX:
            raise ValueError(f"workdir too long for Dovecot's Unix sockets: {self.workdir}")
        for user, password in users.items():
            _check_credentials(user, password)
        if tls is not None:
            for path in (tls.cert, tls.key, tls.ca_cert):
                check_config_path(path.absolute())
        self._users: dict[str, str] = dict(users)
        self._tls = tls
        self._imap_port = imap_port if imap_port is not None else free_port()
        self._imaps_port: int | None = None
        if tls is not None:
            self._imaps_port = imaps_port if imaps_port is not None else free_port()
        self._fast_failures = fast_failures
        self._extra_config = extra_config
        self._passwd_mtime = 0
        self._known_folders: set[tuple[str, str]] = set()
        self.start_seconds: float | None = None
        """Wall time the last start() took until every port greeted."""

    # -- properties ---------------------------------------------------------

    @property
    def host(self) -> str:
        """Address every listener is bound to."""
        return LOOPBACK

    @property
    def imap_port(self) -> int:
        """Plain IMAP port (STARTTLS offered when TLS is configured)."""
        return self._imap_port

    @property
    def imaps_port(self) -> int | None:
        """Implicit-TLS IMAPS port, or None without TLS."""
        return self._imaps_port

    @property
    def ca_file(self) -> Path | None:
        """CA certificate that verifies the server certificate, or None without TLS."""
        return self._tls.ca_cert if self._tls is not None else None

    @property
    def config_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    @property
    def passwd_path(self) -> Path:
        return self.workdir / "users"

    @property
    def base_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def mail_dir(self) -> Path:
        """Root of the maildirs: ``mail_dir/<domain>/<user>``."""
        return self.workdir / "mail"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dovecot.log"

    @property
    def users(self) -> dict[str, str]:
        """A copy of the login -> clear-text password map as currently written."""
        return dict(self._users)

    @property
    def pid(self) -> int | None:
        """Pid of the running master process, or None."""
        pid = read_pid(self.base_dir / "master.pid")
        if pid is None or not is_running(pid, cmdline_contains=str(self.config_path)):
            return None
        return pid

    def imap_url(self, scheme: str) -> str:
        """URL of this server for ``imap``, ``imaps`` or ``imap+plaintext``.

        ``imap+plaintext`` names the plain port used without STARTTLS, which
        a client may only do on loopback.
        """
        if scheme in ("imap", "imap+plaintext"):
            return f"{scheme}://{LOOPBACK}:{self._imap_port}"
        if scheme == "imaps":
            if self._imaps_port is None:
                raise ValueError("imaps:// needs a Dovecot started with tls=")
            return f"imaps://{LOOPBACK}:{self._imaps_port}"
        raise ValueError(f"unknown scheme {scheme!r}")

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts exactly this server's CA."""
        if self._tls is None:
            raise ValueError("Dovecot was created without tls=")
        return ssl.create_default_context(cafile=str(self._tls.ca_cert))

    # -- configuration ------------------------------------------------------

    def _auth_config(self) -> str:
        users = self.passwd_path
        if not self._fast_failures:
            # Dovecot's defaults: auth_failure_delay = 2 s and the per-IP auth
            # penalty (2-15 s after a failure from the same address).  Settings
            # in extra_config (conf/dovecot/'s gateway snippet) come after this
            # passdb, as a conf.d file comes after Debian's 10-auth.conf.
            return f"""
passdb {{
  driver = passwd-file
  args = scheme=SSHA512 {users}
}}
"""
        # Measured here (2.3.19.1, loopback, imaplib): with only
        # auth_failure_delay = 0 a wrong password still answers after ~0.5 s,
        # because failures are flushed by a fixed 500 ms timer, and the per-IP
        # penalty then delays the *next* login from 127.0.0.1 by 4 s, 8 s, ...
        #
        # Disabling the penalty through anvil (unix_listener
        # anvil-auth-penalty { mode = 0 }) only works cleanly in a fresh
        # base_dir: the listener is then not created, the auth process gets
        # ENOENT and silently disables penalties (greeting in 25 ms).  If a
        # socket file from an earlier run is still there, the auth process
        # gets ECONNREFUSED and retries it for 5 s before the first greeting,
        # which is the "5 s start" the recipe observed.
        #
        # Cheaper and stateless: a failure that carries the passdb field
        # "nodelay" skips both the 500 ms failure queue and the penalty
        # update (auth-request-handler.c: the nodelay branch returns before
        # auth_penalty_update), so the penalty stays 0 and anvil is left
        # alone.  The field must be present on the *failed* request: tried
        # and measured useless, as a per-user passwd-file extra field and as
        # override_fields (both are dropped on a mismatch, still 0.5 s).  So
        # it comes from a second, catch-all passdb that denies whoever the
        # first one rejected.  Measured: wrong password
        # or unknown user ~48 ms round trip (same as a success), no delay on
        # following logins, first greeting ~25 ms after start.  Clients see
        # the usual "NO [AUTHENTICATIONFAILED] Authentication failed."; only
        # Dovecot's own log says "user disabled" instead of "auth failed".
        return f"""
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=SSHA512 {users}
  # On a mismatch or unknown user, fall through to the deny passdb below;
  # an unreadable file must stay a temporary failure, not become "denied".
  result_failure = continue-fail
  result_internalfail = return-fail
}}
passdb {{
  driver = static
  args = nodelay=yes
  deny = yes
}}
"""

    def config_text(self) -> str:
        """The dovecot.conf this instance writes on start()."""
        mail_user = pwd.getpwnam(_MAIL_USER)
        mail_root = self.mail_dir
        if self._tls is not None:
            tls = f"""
ssl = yes
ssl_cert = <{self._tls.cert.absolute()}
ssl_key = <{self._tls.key.absolute()}
"""
            imaps = f"""
  inet_listener imaps {{
    address = {LOOPBACK}
    port = {self._imaps_port}
    ssl = yes
  }}"""
        else:
            tls = "\nssl = no\n"
            imaps = ""
        return f"""# Generated by devstack.dovecot; rewritten on every start().
base_dir = {self.base_dir}
state_dir = {self.workdir / "state"}
# One file for error, info and debug lines (info/debug_log_path default to it).
log_path = {self.log_path}
protocols = imap
listen = {LOOPBACK}
{tls}
auth_mechanisms = plain login
# disable_plaintext_auth stays at its default (yes): Dovecot treats a
# connection from 127.0.0.1 to 127.0.0.1 as secured, so LOGIN and AUTH=PLAIN
# work on the plain port here (verified by tests/test_devstack.py).
#
# auth_verbose logs why each failure failed ("Password mismatch", "unknown
# user"); the log_debug filter adds exactly one "Auth request finished" line
# per SASL request, success or failure, which is what auth_attempts() counts.
auth_verbose = yes
log_debug = event=auth_request_finished
{self._auth_config()}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail_root}/%d/%n
}}
mail_location = maildir:{mail_root}/%d/%n
service imap-login {{
  inet_listener imap {{
    address = {LOOPBACK}
    port = {self._imap_port}
  }}{imaps}
}}
{self._extra_config}
"""

    def _write_passwd_file(self) -> None:
        """Replace the passwd-file atomically and make sure Dovecot will notice.

        Dovecot re-reads a passwd-file when its mtime (whole seconds) or size
        differs from the loaded copy.  A password change keeps the line length
        (fixed-size hash), and two writes can fall in the same second, so the
        new file gets an mtime strictly greater than the previous one.
        """
        lines = [
            f"{_lookup_key(user)}:{ssha512(password)}\n" for user, password in self._users.items()
        ]
        tmp = self.passwd_path.with_name(".users.tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.chown(tmp, 0, grp.getgrnam(_AUTH_GROUP).gr_gid)
        os.chmod(tmp, 0o640)
        self._passwd_mtime = max(math.floor(time.time()), self._passwd_mtime + 1)
        os.utime(tmp, (self._passwd_mtime, self._passwd_mtime))
        os.replace(tmp, self.passwd_path)

    def _prepare(self) -> None:
        check_traversable(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        mail_user = pwd.getpwnam(_MAIL_USER)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, mail_user.pw_uid, mail_user.pw_gid)
        self.mail_dir.chmod(0o755)
        self._write_passwd_file()
        self.config_path.write_text(self.config_text(), encoding="utf-8")

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Start the master (it daemonizes) and wait for a real greeting on every port."""
        if self.pid is not None:
            raise RuntimeError(f"Dovecot already running in {self.workdir} (pid {self.pid})")
        began = time.monotonic()
        self._prepare()
        run_checked(
            ["dovecot", "-c", str(self.config_path)], what="dovecot start", log=self.log_path
        )
        try:
            wait_for_greeting(LOOPBACK, self._imap_port, b"* OK", timeout)
            if self._imaps_port is not None:
                remaining = max(0.1, timeout - (time.monotonic() - began))
                wait_for_greeting(
                    LOOPBACK, self._imaps_port, b"* OK", remaining, self.client_context()
                )
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        log.info(
            "dovecot %s started in %.3f s (imap %d, imaps %s)",
            self.workdir, self.start_seconds, self._imap_port, self._imaps_port,
        )  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master and wait until it is gone; a no-op if not running."""
        pid = self.pid
        if pid is None:
            return
        # The master stops its children and removes master.pid itself (~1 s).
        stop_pid(pid, timeout, cmdline_contains=str(self.config_path))

    # -- users and mail -----------------------------------------------------

    def set_password(self, user: str, password: str) -> None:
        """Add ``user`` or change their password; effective when this returns.

        No restart is needed and there is no auth cache (auth_cache_size = 0
        by default), but the auth process stats the passwd-file at most once
        per second of wall-clock time (ioloop_time): a lookup earlier in the
        current second hides our change until the next second begins.  While
        Dovecot runs we therefore wait for that boundary (0-1 s, measured).
        Use set_passwords() to change several users for one wait.
        """
        self.set_passwords({user: password})

    def set_passwords(self, changes: Mapping[str, str]) -> None:
        """set_password() for several users with a single rewrite and wait."""
        for user, password in changes.items():
            _check_credentials(user, password)
        self._users.update(changes)
        self._write_passwd_file()
        if self.pid is not None:
            now = time.time()
            time.sleep(math.floor(now) + 1 - now + 0.005)

    def auth_attempts(self) -> int:
        """Authentication requests Dovecot has finished so far, success or failure.

        Counts "Auth request finished" lines (one per SASL request: IMAP
        LOGIN, AUTHENTICATE PLAIN/LOGIN, ``doveadm auth test``).  The userdb
        lookup that follows a successful login is not a separate line.  The
        log is written by Dovecot's log process, so a just-finished attempt
        can take a few milliseconds to show up.
        """
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return 0
        return data.count(_AUTH_FINISHED)

    def penalties(self) -> dict[str, int]:
        """The auth penalty anvil holds per client address now (``doveadm penalty``).

        An address appears at its first failure that raised a penalty (IPv6 as
        its /48), and stays, at 0 once a success reset it, until anvil expires
        it.  Each step doubles the delay before that address's next login is
        even looked at: 1 = 2 s, 2 = 4 s, 3 = 8 s, 4 = 15 s (auth-penalty.h).
        """
        out = self._doveadm("penalty").stdout.decode("utf-8", "replace")
        rows = (line.split() for line in out.splitlines()[1:])  # after the header
        return {row[0]: int(row[1]) for row in rows if len(row) >= 2}

    def _doveadm(
        self, *args: str, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return run_checked(
            ["doveadm", "-c", str(self.config_path), *args],
            what=f"doveadm {args[0]}",
            input=input,
        )

    def append_message(self, user: str, folder: str, message: bytes) -> None:
        """Store ``message`` in ``user``'s ``folder``, creating (and subscribing) it if missing.

        Uses ``doveadm save`` as root; Dovecot switches to the mail uid itself.
        """
        if folder.upper() != "INBOX" and (user, folder) not in self._known_folders:
            try:
                self._doveadm("mailbox", "create", "-s", "-u", user, folder)
            except RuntimeError as err:
                if "already exists" not in str(err):
                    raise
            self._known_folders.add((user, folder))
        self._doveadm("save", "-u", user, "-m", folder, input=message)
