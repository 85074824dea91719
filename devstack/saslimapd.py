"""Run the real ``saslimap serve`` as a child process, for tests, demos and benchmarks.

This module owns writing a config file for one daemon, starting it exactly as
an administrator would (the console script's entry point), waiting until its
socket answers, and stopping it with SIGTERM (checking it exits 0).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from types import TracebackType

from devstack.ports import free_port
from devstack.proc import tail
from saslimap.config import Config

_SECTIONS = tuple(f.name for f in fields(Config))


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


def write_config(path: Path, settings: Mapping[str, Mapping[str, object]]) -> None:
    """Write ``{"section": {"key": value}}`` as a TOML file."""
    lines = []
    for section in _SECTIONS:
        if section in settings:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in settings[section].items()]
            lines.append("")
    path.write_text("\n".join(lines))


class SaslimapDaemon:
    """One ``saslimap serve`` process with its own config file, socket and log file.

    ``settings`` is merged over a base that puts the socket at
    ``workdir/run/mux`` with mode 0666 (so a test Postfix can reach it),
    serves metrics on a free loopback port (``metrics_port``), and logs at
    debug level (tests also check no password is logged).
    """

    def __init__(self, workdir: Path, settings: Mapping[str, Mapping[str, object]]) -> None:
        self.workdir = workdir.absolute()
        self.socket_path = self.workdir / "run" / "mux"
        self.metrics_port = free_port()
        base: dict[str, dict[str, object]] = {
            "server": {"socket": str(self.socket_path), "socket_mode": "0666"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"level": "debug"},
        }
        for section, values in settings.items():
            base.setdefault(section, {}).update(values)
        self.settings = base
        self.config_path = self.workdir / "saslimap.toml"
        self.log_path = self.workdir / "saslimap.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon and wait until its socket accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        write_config(self.config_path, self.settings)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "saslimap.cli", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"saslimap exited {code}:\n{tail(self.log_path)}")
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket_path))
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"saslimap did not listen within {timeout} s:\n{tail(self.log_path)}")

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal (SIGHUP to reload)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
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

    def __enter__(self) -> SaslimapDaemon:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
