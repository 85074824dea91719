"""Run our real daemons (``saslimap serve``, ``mail-filter serve``) as child processes.

This module owns writing a config file for one daemon, starting it exactly as
an administrator would (the console script's module), waiting until it
answers, and stopping it with SIGTERM (returning its exit code).  Used by
tests, the ``make run`` demo and the benchmarks.
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

from devstack.ports import free_port
from devstack.proc import Launcher, tail
from filter.config import Config as FilterConfig
from saslimap.config import Config


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml(settings: Mapping[str, Mapping[str, object]], sections: Sequence[str]) -> str:
    lines = []
    for section in sections:
        if section in settings:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in settings[section].items()]
            lines.append("")
    return "\n".join(lines)


class ChildDaemon(Launcher):
    """A daemon of ours run from its config file: start, wait until ready, signal, stop."""

    module = ""  # "saslimap.cli" or "filter.cli"
    subcommand = "serve"  # "portal" for mail-filter's web pages
    sections: tuple[str, ...] = ()
    config_name = "daemon.toml"

    def __init__(
        self,
        workdir: Path,
        settings: Mapping[str, Mapping[str, object]],
        base: dict[str, dict[str, object]],
    ) -> None:
        self.workdir = workdir.absolute()
        for section, values in settings.items():
            base.setdefault(section, {}).update(values)
        self.settings = base
        self.config_path = self.workdir / self.config_name
        self.log_path = self.workdir / self.config_name.replace(".toml", ".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def ready(self) -> bool:
        """Whether the daemon answers (polled after start)."""
        raise NotImplementedError

    def write_config(self) -> None:
        """(Re)write the config file from ``settings`` (then SIGHUP to apply a change)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.config_path.write_text(_toml(self.settings, self.sections))

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon and wait until it answers."""
        self.write_config()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    self.subcommand,
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.module} exited {code}:\n{tail(self.log_path)}")
            if self.ready():
                return
            time.sleep(0.02)
        raise TimeoutError(f"{self.module} not ready within {timeout} s:\n{tail(self.log_path)}")

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal (SIGHUP to reload, SIGKILL to crash it)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        """Everything the daemon logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class SaslimapDaemon(ChildDaemon):
    """One ``saslimap serve`` with its own config, socket and log file.

    ``settings`` is merged over a base that puts the socket at
    ``workdir/run/mux`` with mode 0666 (so a test Postfix can reach it),
    serves metrics on a free loopback port (``metrics_port``), and logs at
    debug level (tests also check no password is logged).
    """

    module = "saslimap.cli"
    sections = tuple(f.name for f in fields(Config))
    config_name = "saslimap.toml"

    def __init__(self, workdir: Path, settings: Mapping[str, Mapping[str, object]]) -> None:
        self.socket_path = workdir.absolute() / "run" / "mux"
        self.metrics_port = free_port()
        base: dict[str, dict[str, object]] = {
            "server": {"socket": str(self.socket_path), "socket_mode": "0666"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"level": "debug"},
        }
        super().__init__(workdir, settings, base)

    def ready(self) -> bool:
        """The mux socket accepts connections."""
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(self.socket_path))
        except OSError:
            return False
        return True


class FilterDaemon(ChildDaemon):
    """One ``mail-filter serve`` with its own config and log file.

    ``settings`` is merged over a base that listens on a free loopback port
    (``port``), serves metrics on another (``metrics_port``) and logs at debug.
    """

    module = "filter.cli"
    sections = tuple(f.name for f in fields(FilterConfig))
    config_name = "filter.toml"

    def __init__(self, workdir: Path, settings: Mapping[str, Mapping[str, object]]) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        base: dict[str, dict[str, object]] = {
            "server": {"listen": f"127.0.0.1:{self.port}", "hostname": "filter.test"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"level": "debug"},
        }
        super().__init__(workdir, settings, base)

    def ready(self) -> bool:
        """The filter greets with 220."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                if probe.recv(64).startswith(b"220"):
                    probe.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        return False


class PortalDaemon(ChildDaemon):
    """One ``mail-filter portal`` (the quarantine's web pages) with its own config and log.

    ``settings`` is merged over a base that serves on a free loopback port
    (``port``), asks saslimap at ``auth_socket``, signs cookies with a fresh
    random ``portal.key`` in ``workdir`` (mode 0600) and logs at debug level.
    Give it ``quarantine.directory`` and ``reinject.address`` to see held mail
    and release it.
    """

    module = "filter.cli"
    subcommand = "portal"
    sections = tuple(f.name for f in fields(FilterConfig))
    config_name = "portal.toml"

    def __init__(
        self, workdir: Path, auth_socket: Path, settings: Mapping[str, Mapping[str, object]]
    ) -> None:
        self.port = free_port()
        self.secret_path = workdir.absolute() / "portal.key"
        base: dict[str, dict[str, object]] = {
            "portal": {
                "listen": f"127.0.0.1:{self.port}",
                "auth_socket": str(auth_socket),
                "secret_file": str(self.secret_path),
            },
            "server": {"hostname": "filter.test"},
            "logging": {"level": "debug"},
        }
        super().__init__(workdir, settings, base)

    @property
    def tls(self) -> bool:
        """Whether it serves HTTPS itself (``portal.tls_cert`` set)."""
        return bool(self.settings["portal"].get("tls_cert"))

    @property
    def url(self) -> str:
        """Where a browser opens the portal."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    def write_config(self) -> None:
        """The config file, and the cookie key on first use (32 random bytes, mode 0600)."""
        super().write_config()
        if not self.secret_path.exists():
            fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as key:
                key.write(secrets.token_bytes(32))

    def ready(self) -> bool:
        """The login page answers 200 (over TLS, any certificate: this only asks "up yet?")."""
        conn: http.client.HTTPConnection
        if self.tls:
            # A readiness probe on loopback: the tests verify the certificate themselves.
            unverified = ssl._create_unverified_context()  # noqa: S323
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=1, context=unverified
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            conn.request("GET", "/login")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()
