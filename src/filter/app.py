"""mail-filter's composition root: build, listen, notify, wait, reload, drain.

Config -> clamd and spamd clients, re-injector -> Filter -> aiosmtpd server,
plus the metrics endpoint.  SIGTERM/SIGINT: stop accepting, let messages in
progress finish within ``drain_timeout`` (Postfix retries anything cut off,
since we never answered it), then exit.  SIGHUP: re-read the file; on error
keep the old configuration and say so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from filter import config as config_mod
from filter.clamd import ClamdClient
from filter.config import Config, ConfigError
from filter.lookup import AddressList, ListError
from filter.metrics import Metrics
from filter.notices import Notices
from filter.policy import Lists
from filter.quarantine import Store
from filter.server import Handler, SmtpListener, start_server
from filter.service import Filter
from filter.smtp_out import Reinjector
from filter.spamd import SpamdClient
from mailgate import config as confkit
from mailgate import lifecycle, metrics_http, sdnotify
from mailgate.lifecycle import ConfigSource
from mailgate.state import load_secret

log = logging.getLogger(__name__)


def load_lists(cfg: Config) -> Lists:
    """Read the list files; a bad line is a ConfigError naming file and line."""
    loaded: dict[str, AddressList | None] = {}
    for name in ("whitelist", "blacklist", "spam_lovers", "unchecked_lovers"):
        path = getattr(cfg.lists, name)
        try:
            loaded[name] = AddressList.load(path) if path is not None else None
        except ListError as err:
            raise ConfigError(f"lists.{name}: {err}") from err
    return Lists(**loaded)


def build_filter(cfg: Config, metrics: Metrics) -> tuple[Filter, Reinjector]:
    """The per-message pipeline for a config (list files read here)."""
    host, port = config_mod.split_listen(cfg.reinject.address)
    reinjector = Reinjector(
        host, port, helo=cfg.server.name, timeout=cfg.reinject.timeout,
        pool_size=cfg.reinject.pool_size,
    )  # fmt: skip
    clamd = ClamdClient(
        cfg.clamd.address, timeout=cfg.clamd.timeout, max_stream=cfg.clamd.max_stream,
        concurrency=cfg.clamd.concurrency, pass_fd=cfg.clamd.pass_fd,
    )  # fmt: skip
    spamd = SpamdClient(
        cfg.spamd.address, timeout=cfg.spamd.timeout, concurrency=cfg.spamd.concurrency,
        user=cfg.spamd.user,
    )  # fmt: skip
    notices = Notices(cfg.notices, reinjector, cfg.server.name)
    service = Filter(
        cfg, clamd, spamd, reinjector, metrics,
        lists=load_lists(cfg), store=Store(cfg.quarantine.directory), notifier=notices,
    )  # fmt: skip
    return service, reinjector


class Daemon:
    """The running filter."""

    def __init__(self, cfg: Config, source: ConfigSource[Config]) -> None:
        self.cfg = cfg
        self.source = source
        self.metrics = Metrics()
        self.service, self.reinjector = build_filter(cfg, self.metrics)
        self.handler = Handler(self.service, cfg.server.max_connections)
        self._closing: set[asyncio.Task[None]] = set()  # old re-injection pools after reloads

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT."""
        metrics_server = metrics_http.start(self.cfg.metrics.listen, self.metrics.registry)
        inherited = sdnotify.listen_sockets()
        host, port = config_mod.split_listen(self.cfg.server.listen)
        server = await start_server(
            self.handler, host, port,
            hostname=self.cfg.server.name,
            data_size_limit=self.cfg.server.max_message_size,
            idle_timeout=self.cfg.server.idle_timeout,
            sock=inherited[0] if inherited else None,
            spool_threshold=self.cfg.server.spool_threshold,
        )  # fmt: skip
        log.info(
            "mail-filter ready on %s; clamd %s, spamd %s, re-injecting to %s",
            self.cfg.server.listen, self.cfg.clamd.address,
            self.cfg.spamd.address if self.cfg.spamd.enabled else "off", self.cfg.reinject.address,
        )  # fmt: skip
        await lifecycle.serve_until_stopped(
            log, [SmtpListener(server, self.handler)],
            drain_timeout=self.cfg.server.drain_timeout, reload=self.reload, status="filtering",
        )  # fmt: skip
        await self.reinjector.close()
        return lifecycle.finished(log, metrics_server)

    def reload(self) -> None:
        """SIGHUP: rebuild the pipeline from a freshly validated config, or keep the old one."""
        new = self.source.reload(self.cfg)
        if new is None:
            return
        old = self.reinjector
        try:
            # Reads the list files again: one may have changed since load_config checked it.
            self.service, self.reinjector = build_filter(
                replace(new, server=self.cfg.server, metrics=self.cfg.metrics), self.metrics
            )
        except ConfigError as err:
            log.error("reload failed, keeping the current configuration: %s", err)
            sdnotify.notify("READY=1")
            return
        self.handler.service = self.service
        self.cfg = new
        closing = asyncio.get_running_loop().create_task(old.close())
        self._closing.add(closing)  # a task nobody references may be collected mid-way
        closing.add_done_callback(self._closing.discard)
        log.info("reloaded configuration from %s", self.source)
        sdnotify.notify("READY=1")


def load_config(path: Path | None, overrides: dict[str, str]) -> Config:
    """The file (or defaults), then command-line flags on top."""
    cfg = config_mod.SCHEMA.load_with_flags(path, overrides)
    confkit.require_event_loop("server.event_loop", cfg.server.event_loop)
    if cfg.server.max_message_size > cfg.clamd.max_stream:
        # Such a message could never be scanned: it would be deferred (451) on every
        # try until Postfix bounces it days later, instead of a 552 at once.
        raise ConfigError(
            f"server.max_message_size ({cfg.server.max_message_size}) exceeds"
            f" clamd.max_stream ({cfg.clamd.max_stream}): larger messages could never be"
            " scanned; lower the first or raise both (and clamd's StreamMaxLength)"
        )
    load_lists(cfg)  # validate the list files now: a bad line is a config error (exit 78)
    confkit.require_state("state", cfg.state)
    if cfg.state.secret_file is not None:
        load_secret(cfg.state.secret_file)  # a weak or readable secret: refuse to start
    return cfg


def serve(cfg: Config, config_path: Path | None, overrides: dict[str, str]) -> int:
    """Run the filter in a fresh event loop (``server.event_loop``: uvloop when installed)."""
    # aiosmtpd logs every SMTP command at INFO; our summary line per message says enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    run = lifecycle.runner(cfg.server.event_loop)
    return run(Daemon(cfg, ConfigSource(load_config, config_path, overrides)).run())
