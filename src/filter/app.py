"""mail-filter's composition root: build, listen, notify, wait, reload, drain.

Config -> clamd and spamd clients, re-injector, the shared store (``[state]``,
if any, for the notice throttle) -> Filter -> aiosmtpd server, plus the
metrics endpoint.  SIGTERM/SIGINT: stop accepting, let messages in progress
finish within ``drain_timeout`` (Postfix retries anything cut off, since we
never answered it), then exit.  SIGHUP: re-read the file; on error keep the
old configuration and say so; the shared store's connection is kept unless
``[state]`` changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from filter import config as config_mod
from filter import qopen
from filter.allowcache import AllowCache
from filter.clamd import ClamdClient
from filter.config import Config, ConfigError
from filter.lookup import AddressList, ListError
from filter.metrics import Metrics
from filter.notices import Notices
from filter.policy import Lists
from filter.qstore import QuarantineStore
from filter.server import Handler, SmtpListener, start_server
from filter.service import Filter
from filter.shared import SharedNotices
from filter.smtp_out import Reinjector
from filter.spamd import SpamdClient
from mailgate import config as confkit
from mailgate import lifecycle, metrics_http, sdnotify
from mailgate.lifecycle import ConfigSource
from mailgate.state import SharedState, load_secret, open_shared

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


def open_state(cfg: Config, metrics: Metrics) -> SharedState | None:
    """The shared store ``[state]`` names (``None``: this host's memory only)."""
    if not cfg.state.enabled:
        return None
    return open_shared(cfg.state, metrics.state_gauge())


def build_filter(
    cfg: Config,
    metrics: Metrics,
    state: SharedState | None = None,
    allow_cache: AllowCache | None = None,
    *,
    same_store: bool = True,
) -> tuple[Filter, Reinjector]:
    """The per-message pipeline for a config (list files read here; ``state``: the store
    shared with other gateway hosts, if one is configured; ``allow_cache``: the copy of
    the allow entries kept across reloads, given the new store here, and emptied unless
    ``same_store``)."""
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
    throttle = SharedNotices(state) if state is not None else None
    notices = Notices(cfg.notices, reinjector, cfg.server.name, shared=throttle)
    # The index waits at most 1 s for a writer (a CLI release, a rebuild's batch):
    # past that the message is held all the same and indexed later (filter.qdir).
    store = qopen.open_store(cfg.quarantine, busy_timeout=1.0)
    if allow_cache is not None:
        allow_cache.attach(store, same_source=same_store)
    service = Filter(
        cfg, clamd, spamd, reinjector, metrics,
        lists=load_lists(cfg), store=store, notifier=notices, allow_cache=allow_cache,
    )  # fmt: skip
    return service, reinjector


class Daemon:
    """The running filter."""

    def __init__(self, cfg: Config, source: ConfigSource[Config]) -> None:
        self.cfg = cfg
        self.source = source
        self.metrics = Metrics()
        self.state = open_state(cfg, self.metrics)
        self.service, self.reinjector = build_filter(cfg, self.metrics, self.state)
        assert self.service.allow_cache is not None  # the filter always has a store
        self.allow_cache = self.service.allow_cache
        self.allow_cache.on_up = self.metrics.quarantine_store_up.set
        self.handler = Handler(self.service, cfg.server.max_connections)
        # Old re-injection pools and shared stores after reloads, closing in the background.
        self._closing: set[asyncio.Task[None]] = set()

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
        if self.state is not None:
            self.state.start()  # in the background: a missing Redis delays nothing
        refresher = asyncio.get_running_loop().create_task(self._refresh_allow_copy())
        log.info(
            "mail-filter ready on %s; clamd %s, spamd %s, re-injecting to %s",
            self.cfg.server.listen, self.cfg.clamd.address,
            self.cfg.spamd.address if self.cfg.spamd.enabled else "off", self.cfg.reinject.address,
        )  # fmt: skip
        await lifecycle.serve_until_stopped(
            log, [SmtpListener(server, self.handler)],
            drain_timeout=self.cfg.server.drain_timeout, reload=self.reload, status="filtering",
        )  # fmt: skip
        refresher.cancel()
        await self.reinjector.close()
        if self.state is not None:
            await self.state.close()
        await asyncio.to_thread(self._store().close)
        return lifecycle.finished(log, metrics_server)

    def _store(self) -> QuarantineStore:
        assert self.service.store is not None  # build_filter always opens one
        return self.service.store

    async def _refresh_allow_copy(self) -> None:
        """Load this host's copy of the allow entries now and every ``allow_refresh`` s."""
        while True:
            try:
                if await asyncio.to_thread(self.allow_cache.reload):
                    self.metrics.allow_copy_entries.set(self.allow_cache.recipients)
            except Exception:  # a bug here must not end the refreshes for good
                log.exception("allow entries' copy not reloaded")
            await asyncio.sleep(self.cfg.quarantine.allow_refresh)

    def reload(self) -> None:
        """SIGHUP: rebuild the pipeline from a freshly validated config, or keep the old one."""
        new = self.source.reload(self.cfg)
        if new is None:
            return
        old, old_state, old_store = self.reinjector, self.state, self._store()
        state = old_state
        same_store = (new.quarantine.store, new.quarantine.directory) == (
            self.cfg.quarantine.store, self.cfg.quarantine.directory,
        )  # fmt: skip
        try:
            if new.state != self.cfg.state:
                state = open_state(new, self.metrics)  # another store (or none)
            # Reads the list files again: one may have changed since load_config checked it.
            self.service, self.reinjector = build_filter(
                replace(new, server=self.cfg.server, metrics=self.cfg.metrics), self.metrics,
                state, self.allow_cache, same_store=same_store,
            )  # fmt: skip
        except ConfigError as err:
            if state is not None and state is not old_state:
                self._background(state.close())
            log.error("reload failed, keeping the current configuration: %s", err)
            sdnotify.notify("READY=1")
            return
        self.handler.service = self.service
        self.cfg = new
        self._background(old.close())
        # Messages under way may still be holding into the old store: closed after the drain.
        self._background(_close_store_later(old_store, self.cfg.server.drain_timeout))
        if state is not old_state:
            self.state = state
            if state is not None:
                state.start()
            if old_state is not None:
                # Notices under way finish within its deadline (else they decide locally).
                self._background(_close_later(old_state, old_state.timeout + 1))
        log.info("reloaded configuration from %s", self.source)
        sdnotify.notify("READY=1")

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)  # a task nobody references may be collected mid-way
        task.add_done_callback(self._closing.discard)


async def _close_later(state: SharedState, delay: float) -> None:
    await asyncio.sleep(delay)
    await state.close()


async def _close_store_later(store: QuarantineStore, delay: float) -> None:
    await asyncio.sleep(delay)
    await asyncio.to_thread(store.close)


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
    qopen.check_at_start(cfg.quarantine)  # a schema it does not know: cannot start
    run = lifecycle.runner(cfg.server.event_loop)
    return run(Daemon(cfg, ConfigSource(load_config, config_path, overrides)).run())
