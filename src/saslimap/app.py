"""The daemon's composition root: build, listen, notify, wait, reload, drain.

This is the only place that knows how the pieces fit: config -> IMAP backend
-> authenticator (caches, budgets, per-IP limits) -> mux server and Dovecot
listener, on the sockets systemd passed (:mod:`saslimap.activation`) or on
sockets of its own, plus the metrics endpoint.  It owns the process
lifecycle: readiness to systemd, SIGTERM/SIGINT (stop accepting, let checks
in progress finish within ``drain_timeout``, then exit), and SIGHUP (re-read
and validate the config file; on error keep the old one and say so; on
success rebuild the backend and authenticator, which flushes every cache and
limit).  Metrics live for the whole process, across reloads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import replace
from pathlib import Path

from mailgate import lifecycle, metrics_http, sdnotify
from mailgate.lifecycle import ConfigSource, Listener
from mailgate.metrics_http import MetricsServer
from mailgate.sockets import bind_unix_socket, unlink_if_ours
from mailgate.state import SharedState, open_shared
from saslimap import activation
from saslimap import config as config_mod
from saslimap.activation import Adopted
from saslimap.config import Config
from saslimap.dovecot_server import DovecotAuthServer
from saslimap.imap import ImapBackend
from saslimap.limits import Verified
from saslimap.metrics import Metrics
from saslimap.server import MuxServer
from saslimap.service import Authenticator
from saslimap.shared import SharedChecks

log = logging.getLogger(__name__)


def _warn_about(cfg: Config) -> None:
    target = cfg.imap.target
    if target.scheme == "imap+plaintext" and not target.is_loopback:
        log.warning(
            "imap.url %s sends passwords in clear text to a host that is not loopback", target
        )


def build_authenticator(
    cfg: Config,
    backend: ImapBackend,
    metrics: Metrics,
    verified: Verified | None = None,
    state: SharedState | None = None,
) -> Authenticator:
    """The policy object for a config (fresh caches every time; ``verified``, the last
    verified password per user, is kept across a reload: it never answers a check;
    ``state``: the store shared with other gateway hosts, if one is configured)."""
    shared = (
        None if state is None
        else SharedChecks(state, cfg.cache, cfg.limits, cfg.iplimits, backend.deadline)
    )  # fmt: skip
    return Authenticator(
        cfg.users, backend, cache=cfg.cache, limits=cfg.limits, metrics=metrics,
        iplimits=cfg.iplimits, verified=verified, shared=shared,
    )  # fmt: skip


def open_state(cfg: Config, metrics: Metrics) -> SharedState | None:
    """The shared store ``[state]`` names (``None``: this host's memory only)."""
    if not cfg.state.enabled:
        return None
    return open_shared(cfg.state, metrics.state_gauge())


class Daemon:
    """The running daemon: one server, and the current authenticator behind it."""

    def __init__(
        self, cfg: Config, source: ConfigSource[Config], sockets: Adopted | None = None
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.sockets = sockets or Adopted()  # passed by systemd; None each: bind our own
        self.metrics = Metrics()
        self.backend = ImapBackend.from_config(cfg.imap)
        self.state = open_state(cfg, self.metrics)
        self.auth = build_authenticator(cfg, self.backend, self.metrics, state=self.state)
        self.metrics.watch_cache_sizes(lambda: self.auth.cache_sizes())
        self.server: MuxServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.dovecot: DovecotAuthServer | None = None
        self.dovecot_socket: tuple[Path, int] | None = None  # path and inode we bound
        self._closing: asyncio.TimerHandle | None = None

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit code."""
        _warn_about(self.cfg)
        self.metrics_server = metrics_http.start(self.cfg.metrics.listen, self.metrics.registry)
        self.server = MuxServer(self.cfg.server, self.auth, self.metrics)
        await self.server.start(self.sockets.mux)
        listeners: list[Listener] = [self.server]
        if self.cfg.dovecot.socket is not None:
            self.dovecot = DovecotAuthServer(
                self.auth, self.metrics, self.cfg.server.max_connections,
                read_timeout=self.cfg.server.read_timeout,
                idle_timeout=self.cfg.dovecot.idle_timeout,
            )  # fmt: skip
            await self.dovecot.start(self._dovecot_socket())
            listeners.append(self.dovecot)
        self.backend.start()
        if self.state is not None:
            self.state.start()  # in the background: a missing Redis delays nothing
        log.info("saslimap ready: IMAP server %s", self.cfg.imap.target)
        # Both listeners stop accepting at once and share one drain deadline.
        await lifecycle.serve_until_stopped(
            log, listeners, drain_timeout=self.cfg.server.drain_timeout,
            reload=self.reload, status="answering on the mux socket",
        )  # fmt: skip
        if self.dovecot_socket is not None:
            unlink_if_ours(*self.dovecot_socket)
        self.auth.close()
        self.backend.close()
        if self.state is not None:
            await self.state.close()
        return lifecycle.finished(log, self.metrics_server)

    def _dovecot_socket(self) -> socket.socket:
        """The Dovecot-protocol listener's socket: the one systemd passed, else our own."""
        d = self.cfg.dovecot
        assert d.socket is not None
        if self.sockets.dovecot is not None:
            # The unit's path, mode and group win over dovecot.socket's.
            sock = self.sockets.dovecot
            log.info("Dovecot-protocol listener on %s (passed by systemd)", sdnotify.describe(sock))
            return sock
        try:
            sock = bind_unix_socket(d.socket, d.socket_mode, d.socket_group)
        except OSError as err:
            if self.sockets.mux is None:
                raise
            # Under systemd, the hardened unit cannot create it in Postfix's spool.
            raise OSError(
                err.errno,
                f"{d.socket}: {err.strerror or err}; under systemd, enable "
                f"{activation.UNITS[activation.DOVECOT]}, which passes this socket",
            ) from err
        self.dovecot_socket = (d.socket, os.stat(d.socket).st_ino)
        log.info("Dovecot-protocol listener on %s", d.socket)
        return sock

    def reload(self) -> None:
        """SIGHUP: swap in a freshly validated config, or keep the old one."""
        new = self.source.reload(self.cfg)
        if new is None:
            return
        old_backend, old_auth, old_state = self.backend, self.auth, self.state
        self.backend = ImapBackend.from_config(new.imap)
        if new.state != self.cfg.state:
            # Another store (or none): the old one's connections go once checks using it end.
            self.state = open_state(new, self.metrics)
            if self.state is not None:
                self.state.start()
        self.auth = build_authenticator(
            new, self.backend, self.metrics, old_auth.verified, self.state
        )
        if self.server is not None:
            self.server.checker = self.auth
        if self.dovecot is not None:
            self.dovecot.checker = self.auth  # with fresh per-IP limits, as caches are fresh
        # Listeners and the metrics endpoint stay as they are until a restart.
        old = self.cfg
        self.cfg = replace(new, server=old.server, metrics=old.metrics, dovecot=old.dovecot)
        loop = asyncio.get_running_loop()
        self.backend.start()
        old_auth.close()
        # Checks already waiting on the old backend finish within its deadline; then it goes.
        loop.call_later(old_backend.deadline + 1, old_backend.close)
        if old_state is not None and old_state is not self.state:
            self._closing = loop.call_later(
                old_backend.deadline + 1, lambda: loop.create_task(old_state.close())
            )
        _warn_about(self.cfg)
        log.info(
            "reloaded configuration from %s; this host's caches flushed%s", self.source,
            " (the shared ones are kept: saslimap flush)" if self.state is not None else "",
        )  # fmt: skip
        sdnotify.notify("READY=1")


def load_config(path: Path | None, overrides: dict[str, str]) -> Config:
    """The file (or defaults), then command-line flags on top, then whole-config checks."""
    cfg = config_mod.SCHEMA.load_with_flags(path, overrides)
    config_mod.require_complete(cfg)
    return cfg


def serve(cfg: Config, config_path: Path | None, overrides: dict[str, str]) -> int:
    """Run the daemon in a fresh event loop, on the sockets systemd passed if any
    (ConfigError when they do not fit the config)."""
    sockets = activation.adopt(sdnotify.passed_sockets(), cfg.dovecot)
    run = lifecycle.runner(cfg.server.event_loop)
    return run(Daemon(cfg, ConfigSource(load_config, config_path, overrides), sockets).run())
