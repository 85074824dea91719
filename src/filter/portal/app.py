"""``mail-filter portal``'s composition root: build, listen, notify, wait, reload, drain.

Config (the filter's file, its ``[portal]`` table) -> the session key
(``portal.secret_file``, checked like ``[state]``'s), the quarantine store,
the re-injection client, the saslimap checker -> the Starlette app -> uvicorn
on ``portal.listen`` (or a socket systemd passed), speaking TLS itself when
``tls_cert`` and ``tls_key`` are set.

uvicorn serves, but this module runs its lifecycle, as the other daemons do
(:mod:`mailgate.lifecycle`): readiness to systemd once it listens; SIGTERM or
SIGINT: stop accepting, let requests in progress finish within
``portal.drain_timeout``, cancel the rest; SIGHUP: re-read the file and apply
what is cheap at once (admins, categories users may release, page size,
session times, the default domain, the saslimap socket and deadline,
``[notices]``, ``[reinject]``, and the TLS certificate and key, loaded into the
running context so renewed certificates need no restart).  A changed
``secret_file`` ends every session.  ``listen``, turning TLS on or off, and
the quarantine directory need a restart (a warning says so).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import replace
from pathlib import Path

import uvicorn

from filter import app as filter_app
from filter import qopen
from filter.config import Config, ConfigError, split_listen
from filter.portal.auth import Saslimap
from filter.portal.sessions import Sessions
from filter.portal.web import Portal, build
from filter.smtp_out import Reinjector
from mailgate import lifecycle, sdnotify
from mailgate.lifecycle import ConfigSource
from mailgate.state import load_secret

log = logging.getLogger("filter.portal")


def load_config(path: Path | None, overrides: dict[str, str]) -> Config:
    """The filter's configuration, checked as ``serve`` checks it, plus the portal's needs."""
    cfg = filter_app.load_config(path, overrides)
    portal = cfg.portal
    if portal.secret_file is None:
        raise ConfigError("portal.secret_file: the portal needs a key to sign its cookies")
    load_secret(portal.secret_file, "portal.secret_file")
    for key, file in (("portal.tls_cert", portal.tls_cert), ("portal.tls_key", portal.tls_key)):
        if file is not None and not file.is_file():
            raise ConfigError(f"{key}: {file} is not a readable file")
    return cfg


def _reinjector(cfg: Config) -> Reinjector:
    host, port = split_listen(cfg.reinject.address)
    return Reinjector(host, port, helo=cfg.server.name, timeout=cfg.reinject.timeout)


def _sessions(cfg: Config, secret: bytes) -> Sessions:
    p = cfg.portal
    return Sessions(secret, idle=p.session_idle, max_age=p.session_max, max_sessions=p.max_sessions)


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when the host is one)."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class UvicornListener:
    """uvicorn's server as a :class:`mailgate.lifecycle.Listener`."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        # uvicorn's once-a-second tick keeps its Date header current.
        self.ticker = asyncio.ensure_future(server.main_loop())

    def close(self) -> None:
        """Stop accepting (the tick ends with it)."""
        self.server.should_exit = True
        for listening in self.server.servers:
            listening.close()

    async def drain(self, deadline: float) -> None:
        """Requests in progress get ``deadline`` seconds; uvicorn cancels the rest."""
        await self.ticker
        self.server.config.timeout_graceful_shutdown = int(deadline) or None
        await self.server.shutdown(sockets=[self.sock])


class PortalDaemon:
    """The running portal."""

    def __init__(self, cfg: Config, source: ConfigSource[Config]) -> None:
        self.cfg = cfg
        self.source = source
        assert cfg.portal.secret_file is not None  # load_config refused None
        self.secret = load_secret(cfg.portal.secret_file, "portal.secret_file")
        self.reinjector = _reinjector(cfg)
        self.portal = Portal(
            cfg.portal, cfg.notices, cfg.server.name, qopen.open_store(cfg.quarantine),
            self.reinjector, Saslimap(cfg.portal.auth_socket, cfg.portal.auth_timeout),
            _sessions(cfg, self.secret), self.secret,
        )  # fmt: skip
        self.server: uvicorn.Server | None = None

    def uvicorn_config(self) -> uvicorn.Config:
        """uvicorn's settings: our lifecycle, our logging, proxies we trust, TLS if asked."""
        p = self.cfg.portal
        return uvicorn.Config(
            build(self.portal),
            lifespan="off",
            log_config=None,  # our logging setup (mailgate.logs) stays
            access_log=False,  # one audit line per action instead (filter.qactions)
            server_header=False,
            proxy_headers=bool(p.trusted_proxies),
            forwarded_allow_ips=list(p.trusted_proxies) or None,
            ssl_certfile=str(p.tls_cert) if p.tls_cert else None,
            ssl_keyfile=str(p.tls_key) if p.tls_key else None,
            timeout_graceful_shutdown=int(p.drain_timeout) or None,
            h11_max_incomplete_event_size=64 * 1024,
        )

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT."""
        inherited = sdnotify.listen_sockets()
        sock = inherited[0] if inherited else bind(self.cfg.portal.listen)
        config = self.uvicorn_config()
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self.server = server
        scheme = "https" if self.cfg.portal.tls_cert else "http"
        log.info(
            "mail-filter portal ready on %s://%s; passwords checked by saslimap at %s",
            scheme, self.cfg.portal.listen, self.cfg.portal.auth_socket,
        )  # fmt: skip
        await lifecycle.serve_until_stopped(
            log, [UvicornListener(server, sock)], drain_timeout=self.cfg.portal.drain_timeout,
            reload=self.reload, status="serving the quarantine portal",
        )  # fmt: skip
        await self.reinjector.close()
        self.portal.store.close()
        return lifecycle.finished(log, None)

    def reload(self) -> None:
        """SIGHUP: apply a freshly validated config where that is cheap; say what is not."""
        new = lifecycle.reload_config(self.source.load, self.source.path, self.source.overrides)
        if new is None:
            return
        old = self.cfg
        restart = [
            name
            for name, changed in (
                ("portal.listen", new.portal.listen != old.portal.listen),
                ("TLS on or off", (new.portal.tls_cert is None) != (old.portal.tls_cert is None)),
                (
                    "portal.trusted_proxies",
                    new.portal.trusted_proxies != old.portal.trusted_proxies,
                ),
                ("quarantine.directory", new.quarantine.directory != old.quarantine.directory),
            )
            if changed
        ]
        if restart:
            log.warning("reload: %s change(s) take effect only after a restart", ", ".join(restart))
        assert new.portal.secret_file is not None
        try:
            secret = load_secret(new.portal.secret_file, "portal.secret_file")
            self._reload_certificate(new)
        except (ConfigError, OSError, ssl.SSLError) as err:
            log.error("reload failed, keeping the current configuration: %s", err)
            sdnotify.notify("READY=1")
            return
        if secret != self.secret:
            self.secret = secret
            self.portal.sessions = _sessions(new, secret)
            self.portal.link_secret = secret  # links signed with the old key stop working
            log.warning("reload: portal.secret_file changed; every session has ended")
        elif (new.portal.session_idle, new.portal.session_max, new.portal.max_sessions) != (
            old.portal.session_idle, old.portal.session_max, old.portal.max_sessions,
        ):  # fmt: skip
            sessions = self.portal.sessions
            sessions.idle, sessions.max_age = new.portal.session_idle, new.portal.session_max
            sessions.max_sessions = new.portal.max_sessions
        if new.reinject != old.reinject or new.server.name != old.server.name:
            previous = self.reinjector
            self.reinjector = self.portal.sender = _reinjector(new)
            asyncio.get_running_loop().create_task(previous.close())
        self.portal.cfg = replace(
            new.portal, listen=old.portal.listen, trusted_proxies=old.portal.trusted_proxies
        )
        self.portal.notices = new.notices
        self.portal.hostname = new.server.name
        self.portal.checker = Saslimap(new.portal.auth_socket, new.portal.auth_timeout)
        self.cfg = new
        sdnotify.notify("READY=1")
        log.info("configuration reloaded from %s", self.source)

    def _reload_certificate(self, new: Config) -> None:
        """New handshakes use the certificate and key now in the files (renewals)."""
        server = self.server
        if server is None or new.portal.tls_cert is None or new.portal.tls_key is None:
            return
        context = server.config.ssl
        if isinstance(context, ssl.SSLContext):
            context.load_cert_chain(str(new.portal.tls_cert), str(new.portal.tls_key))


def serve(cfg: Config, config_path: Path | None, overrides: dict[str, str]) -> int:
    """Run the portal in a fresh event loop."""
    # uvicorn's own error lines (a broken request) are kept; its chatter is not.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    qopen.check_at_start(cfg.quarantine)  # a schema it does not know: cannot start
    run = lifecycle.runner(cfg.server.event_loop)
    return run(PortalDaemon(cfg, ConfigSource(load_config, config_path, overrides)).run())
