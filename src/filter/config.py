"""mail-filter's configuration: TOML in, frozen dataclasses out.

This module owns the schema of ``conf/filter.toml`` (every key, default and
bounds); the machinery (validators, unknown-key errors naming ``section.key``)
is :mod:`saslimap.confkit`, shared with saslimap.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saslimap import confkit
from saslimap.confkit import ConfigError, boolean, integer, number, opt, split_listen, string

__all__ = ["Config", "ConfigError", "load", "override", "split_listen"]


def _address(key: str, value: object) -> str:
    text = string(key, value)
    if text.startswith("unix:"):
        if not text[5:].startswith("/"):
            raise ConfigError(f"{key}: unix: needs an absolute path; got {text!r}")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: must be host:port or unix:/path; got {text!r}")
    return text


def _hostport(key: str, value: object) -> str:
    text = _address(key, value)
    if text.startswith("unix:"):
        raise ConfigError(f"{key}: must be host:port; got {text!r}")
    return text


def _size(key: str, value: object) -> int:
    return int(integer(0, 2**40)(key, value))


@dataclass(frozen=True)
class ServerConfig:
    """Where Postfix hands mail to the filter, and how much it may hand at once."""

    listen: str = opt("127.0.0.1:10024", _hostport)
    hostname: str = opt("", string)  # for our Received line and X-Virus-Scanned; "" = FQDN
    max_connections: int = opt(32, integer(1, 10_000))
    max_message_size: int = opt(50 * 1024 * 1024, _size)
    message_timeout: float = opt(480.0, number(1, 3600))
    idle_timeout: float = opt(300.0, number(1, 3600))
    drain_timeout: float = opt(60.0, number(0, 3600))

    @property
    def name(self) -> str:
        """The host name we put in headers."""
        return self.hostname or socket.getfqdn()


@dataclass(frozen=True)
class ReinjectConfig:
    """Where scanned mail goes back to Postfix."""

    address: str = opt("127.0.0.1:10025", _hostport)
    timeout: float = opt(120.0, number(1, 3600))
    pool_size: int = opt(8, integer(0, 1000))


@dataclass(frozen=True)
class ClamdConfig:
    """The virus scanner."""

    address: str = opt("unix:/var/run/clamav/clamd.ctl", _address)
    timeout: float = opt(60.0, number(0.1, 3600))
    concurrency: int = opt(8, integer(1, 1000))
    max_stream: int = opt(25 * 1024 * 1024, _size)


@dataclass(frozen=True)
class SpamdConfig:
    """The spam scanner."""

    address: str = opt("127.0.0.1:783", _address)
    enabled: bool = opt(True, boolean)
    timeout: float = opt(120.0, number(0.1, 3600))
    concurrency: int = opt(4, integer(1, 1000))
    max_size: int = opt(500 * 1024, _size)
    user: str = opt("", string)


@dataclass(frozen=True)
class PolicyConfig:
    """What the marks look like and when mail counts as spam."""

    tag_level: float = opt(2.0, number(-1000, 1000))
    tag2_level: float = opt(6.31, number(-1000, 1000))
    subject_prefix: str = opt("***SPAM*** ", string)
    remove_existing_spam_headers: bool = opt(True, boolean)
    scanner_name: str = opt("mail-filter", string)


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    listen: str = opt("127.0.0.1:9102", confkit.listen)


@dataclass(frozen=True)
class LoggingConfig:
    """Log verbosity."""

    level: str = opt("info", confkit.choice("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    """The whole filter configuration: one attribute per TOML table."""

    server: ServerConfig = field(default_factory=ServerConfig)
    reinject: ReinjectConfig = field(default_factory=ReinjectConfig)
    clamd: ClamdConfig = field(default_factory=ClamdConfig)
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def from_mapping(raw: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document and build the configuration."""
    return confkit.from_mapping(Config, raw)


def load(path: Path | None) -> Config:
    """Read and validate a TOML file (defaults when ``path`` is None)."""
    return confkit.load(Config, path) if path is not None else Config()


def override(cfg: Config, key: str, value: object) -> Config:
    """Set ``section.key`` (a command-line flag) with the same checks as the file."""
    return confkit.override(cfg, key, value)
