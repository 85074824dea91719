"""saslimap's configuration: TOML in, frozen dataclasses out.

This module owns the schema (every key, its type, default and bounds) and the
IMAP target URL syntax.  Unknown keys and bad values raise :class:`ConfigError`
naming the key, so ``saslimap check-config`` and the daemon exit 78 with a
message an administrator can act on.  ``conf/saslimap.toml`` documents the same
keys; a test keeps the two in step.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailgate import config as confkit
from mailgate.config import (
    ConfigError,
    ImapTarget,
    LoggingConfig,
    MetricsConfig,
    StateConfig,
    boolean,
    choice,
    domains,
    event_loop,
    imap_url,
    integer,
    mode,
    number,
    opt,
    optional_path,
    parse_imap_url,
    split_listen,
    string,
)
from mailgate.state import load_secret

# Re-exported for callers that import them from here.
__all__ = [
    "Config",
    "ConfigError",
    "ImapTarget",
    "LoggingConfig",
    "MetricsConfig",
    "parse_imap_url",
    "split_listen",
]


def _socket_path(key: str, value: object) -> Path:
    text = string(key, value)
    if not text.startswith("/"):
        raise ConfigError(f"{key}: must be an absolute path; got {text!r}")
    if len(text.encode()) > 107:
        raise ConfigError(f"{key}: longer than the 107 bytes a Unix socket path holds")
    return Path(text)


@dataclass(frozen=True)
class ServerConfig:
    """The mux socket and how requests on it are bounded."""

    # _opt returns a dataclasses.field; Path values are immutable.
    socket: Path = opt(Path("/run/saslauthd/mux"), _socket_path)  # noqa: RUF009
    socket_mode: int = opt(0o660, mode)
    socket_group: str = opt("", string)
    create_directory: bool = opt(True, boolean)
    max_connections: int = opt(512, integer(1, 100_000))
    read_timeout: float = opt(5.0, number(0.05, 300))
    max_field_length: int = opt(256, integer(16, 65535))
    on_backend_error: Literal["close", "no"] = opt("close", choice("close", "no"))
    drain_timeout: float = opt(10.0, number(0, 600))
    event_loop: Literal["auto", "asyncio", "uvloop"] = opt("auto", event_loop)


@dataclass(frozen=True)
class ImapConfig:
    """The IMAP server that holds the users' passwords."""

    url: str = opt("", imap_url)
    ca_file: Path | None = opt(None, optional_path)  # noqa: RUF009  (a field, see ServerConfig)
    connect_timeout: float = opt(5.0, number(0.05, 120))
    response_timeout: float = opt(5.0, number(0.05, 120))
    max_concurrency: int = opt(16, integer(1, 1024))
    max_queue: int = opt(64, integer(0, 100_000))
    mechanism: Literal["auto", "plain", "login"] = opt("auto", choice("auto", "plain", "login"))
    warm_connections: int = opt(2, integer(0, 64))
    warm_max_idle: float = opt(20.0, number(1, 3600))
    send_client_address: bool = opt(True, boolean)

    @property
    def target(self) -> ImapTarget:
        """The parsed URL (validated when the config was loaded)."""
        return parse_imap_url(self.url)


@dataclass(frozen=True)
class UsersConfig:
    """How the login and realm fields become the IMAP user name."""

    realm: Literal["join", "ignore"] = opt("join", choice("join", "ignore"))
    lowercase: bool = opt(False, boolean)
    allowed_domains: tuple[str, ...] = opt((), domains)
    name_chars: str = opt("", string)


@dataclass(frozen=True)
class CacheConfig:
    """What is remembered between checks (see saslimap.cache)."""

    ttl: float = opt(3600.0, number(0, 30 * 86400))
    refresh_after: float = opt(300.0, number(0, 30 * 86400))
    stale_if_error: float = opt(4 * 3600.0, number(0, 30 * 86400))
    max_entries: int = opt(100_000, integer(0, 10_000_000))
    negative_ttl: float = opt(60.0, number(0, 86400))


@dataclass(frozen=True)
class LimitsConfig:
    """Brute-force limits per user (see saslimap.limits)."""

    failure_budget: int = opt(10, integer(0, 1_000_000))
    failure_window: float = opt(900.0, number(1, 30 * 86400))
    failure_delay: float = opt(0.0, number(0, 30))
    user_ceiling: int = opt(100, integer(0, 1_000_000))
    trickle_interval: float = opt(5.0, number(0, 3600))
    fold_case: bool = opt(True, boolean)
    remember_verified: float = opt(30 * 86400.0, number(0, 366 * 86400))


def _networks(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f'{key}: must be a list of networks such as "10.0.0.0/8"')
    out = []
    for n, item in enumerate(value):
        try:
            out.append(str(ipaddress.ip_network(string(f"{key}[{n}]", item), strict=False)))
        except ValueError as err:
            raise ConfigError(f"{key}[{n}]: {err}") from None
    return tuple(out)


def _optional_socket(key: str, value: object) -> Path | None:
    text = string(key, value)
    return _socket_path(key, text) if text else None


@dataclass(frozen=True)
class DovecotConfig:
    """The optional second listener speaking Dovecot's auth protocol to Postfix."""

    socket: Path | None = opt(None, _optional_socket)  # noqa: RUF009 - a field
    socket_mode: int = opt(0o660, mode)
    socket_group: str = opt("", string)
    idle_timeout: float = opt(600.0, number(1, 86400))


@dataclass(frozen=True)
class IpLimitsConfig:
    """Per-client-address limits (Dovecot listener only: saslauthd sends no address)."""

    budget: int = opt(30, integer(0, 1_000_000))
    window: float = opt(900.0, number(1, 30 * 86400))
    base_delay: float = opt(1.0, number(0, 60))
    max_delay: float = opt(15.0, number(0, 300))
    exempt_after_success: float = opt(3600.0, number(0, 30 * 86400))
    trusted_networks: tuple[str, ...] = opt((), _networks)


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration: one attribute per TOML table."""

    server: ServerConfig = field(default_factory=ServerConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    users: UsersConfig = field(default_factory=UsersConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    dovecot: DovecotConfig = field(default_factory=DovecotConfig)
    iplimits: IpLimitsConfig = field(default_factory=IpLimitsConfig)
    state: StateConfig = field(default_factory=StateConfig)


SCHEMA = confkit.Schema(Config)
from_mapping = SCHEMA.from_mapping
load = SCHEMA.load
override = SCHEMA.override


def require_complete(cfg: Config) -> None:
    """Checks that need the whole picture (after flags were applied)."""
    confkit.require_event_loop("server.event_loop", cfg.server.event_loop)
    if cfg.cache.refresh_after > cfg.cache.ttl:
        raise ConfigError("cache.refresh_after: must not exceed cache.ttl")
    if not cfg.imap.url:
        raise ConfigError("imap.url: no IMAP server configured (set it in the file or with --imap)")
    if cfg.imap.ca_file is not None and not cfg.imap.ca_file.is_file():
        raise ConfigError(f"imap.ca_file: {cfg.imap.ca_file} is not a readable file")
    confkit.require_state("state", cfg.state)
    if cfg.state.secret_file is not None:
        load_secret(cfg.state.secret_file)
