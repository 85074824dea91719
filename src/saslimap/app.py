"""The daemon's composition root: build, listen, notify, wait, reload, drain.

This is the only place that knows how the pieces fit: config -> IMAP backend
-> authenticator -> mux server.  It owns the process lifecycle: readiness to
systemd, SIGTERM/SIGINT (stop accepting, let checks in progress finish within
``drain_timeout``, then exit), and SIGHUP (re-read and validate the config file;
on error keep the old one and say so).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from saslimap import config as config_mod
from saslimap import sdnotify
from saslimap.config import Config, ConfigError
from saslimap.imap import ImapBackend
from saslimap.server import MuxServer
from saslimap.service import Authenticator

log = logging.getLogger(__name__)


def _warn_about(cfg: Config) -> None:
    target = cfg.imap.target
    if target.scheme == "imap+plaintext" and not target.is_loopback:
        log.warning(
            "imap.url %s sends passwords in clear text to a host that is not loopback", target
        )


class Daemon:
    """The running daemon: one server, and the current authenticator behind it."""

    def __init__(self, cfg: Config, config_path: Path | None, overrides: dict[str, str]) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides
        self.backend = ImapBackend.from_config(cfg.imap)
        self.auth = Authenticator(cfg.users, self.backend)
        self.server: MuxServer | None = None
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit code."""
        loop = asyncio.get_running_loop()
        _warn_about(self.cfg)
        inherited = sdnotify.listen_sockets()
        self.server = MuxServer(self.cfg.server, self.auth.verify)
        await self.server.start(inherited[0] if inherited else None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        log.info("saslimap ready: IMAP server %s", self.cfg.imap.target)
        sdnotify.notify("READY=1\nSTATUS=answering on the mux socket")
        await self.stopping.wait()
        sdnotify.notify("STOPPING=1")
        log.info(
            "stopping: no new connections; draining for up to %g s", self.cfg.server.drain_timeout
        )
        await self.server.drain(self.cfg.server.drain_timeout)
        self.backend.close()
        log.info("stopped")
        return 0

    def reload(self) -> None:
        """SIGHUP: swap in a freshly validated config, or keep the old one."""
        sdnotify.notify("RELOADING=1")
        try:
            new = load_config(self.config_path, self.overrides)
        except ConfigError as err:
            log.error("reload failed, keeping the current configuration: %s", err)
            sdnotify.notify("READY=1")
            return
        if new.server != self.cfg.server:
            log.warning(
                "reload: [server] changes (socket, limits) take effect only after a restart"
            )
        old_backend = self.backend
        self.backend = ImapBackend.from_config(new.imap)
        self.auth = Authenticator(new.users, self.backend)
        if self.server is not None:
            self.server.verify = self.auth.verify
        self.cfg = Config(self.cfg.server, new.imap, new.users, new.logging)
        # Checks already waiting on the old backend finish within its deadline; then it goes.
        asyncio.get_running_loop().call_later(old_backend.deadline + 1, old_backend.close)
        _warn_about(self.cfg)
        log.info("reloaded configuration from %s", self.config_path or "defaults and flags")
        sdnotify.notify("READY=1")


def load_config(path: Path | None, overrides: dict[str, str]) -> Config:
    """The file (or defaults), then command-line flags on top, then whole-config checks."""
    cfg = config_mod.load(path) if path is not None else Config()
    for key, value in overrides.items():
        cfg = config_mod.override(cfg, key, value)
    config_mod.require_complete(cfg)
    return cfg


def serve(cfg: Config, config_path: Path | None, overrides: dict[str, str]) -> int:
    """Run the daemon in a fresh event loop."""
    return asyncio.run(Daemon(cfg, config_path, overrides).run())
