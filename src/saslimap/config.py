"""saslimap's configuration: TOML in, frozen dataclasses out.

This module owns the schema (every key, its type, default and bounds) and the
IMAP target URL syntax.  Unknown keys and bad values raise :class:`ConfigError`
naming the key, so ``saslimap check-config`` and the daemon exit 78 with a
message an administrator can act on.  ``conf/saslimap.toml`` documents the same
keys; a test keeps the two in step.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

Scheme = Literal["imaps", "imap", "imap+plaintext"]
_DEFAULT_PORTS: dict[str, int] = {"imaps": 993, "imap": 143, "imap+plaintext": 143}


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


@dataclass(frozen=True)
class ImapTarget:
    """Where and how to reach the IMAP server, parsed from a URL.

    ``imaps://`` is implicit TLS, ``imap://`` requires STARTTLS, and
    ``imap+plaintext://`` is the explicit opt-in to clear text.
    """

    scheme: Scheme
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        """Whether the host is a loopback address or ``localhost``."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_imap_url(url: str, key: str = "imap.url") -> ImapTarget:
    """Parse ``imaps://host[:993]``, ``imap://host[:143]`` or ``imap+plaintext://host[:143]``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"{key}: {url!r} is not a valid URL ({err})") from err
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(
            f"{key}: scheme must be imaps://, imap:// (STARTTLS) or imap+plaintext://, got {url!r}"
        )
    if not parts.hostname:
        raise ConfigError(f"{key}: {url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{key}: {url!r} must be scheme://host[:port] and nothing more")
    checked: Scheme = scheme  # type: ignore[assignment]  # membership checked above
    return ImapTarget(checked, parts.hostname, port or _DEFAULT_PORTS[scheme])


Check = Callable[[str, object], Any]


def _choice(*choices: str) -> Check:
    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def _number(low: float, high: float) -> Check:
    def check(key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number; got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{key}: must be between {low:g} and {high:g}; got {value!r}")
        return float(value)

    return check


def _integer(low: int, high: int) -> Check:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number; got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{key}: must be between {low} and {high}; got {value!r}")
        return value

    return check


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false; got {value!r}")
    return value


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string; got {value!r}")
    return value


def _mode(key: str, value: object) -> int:
    # TOML has no octal literal that reads naturally to an administrator, so modes are strings.
    text = _string(key, value)
    try:
        mode = int(text, 8)
    except ValueError as err:
        raise ConfigError(f'{key}: must be an octal mode such as "0660"; got {text!r}') from err
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{key}: must be between 0000 and 0777; got {text!r}")
    return mode


def _socket_path(key: str, value: object) -> Path:
    text = _string(key, value)
    if not text.startswith("/"):
        raise ConfigError(f"{key}: must be an absolute path; got {text!r}")
    if len(text.encode()) > 107:
        raise ConfigError(f"{key}: longer than the 107 bytes a Unix socket path holds")
    return Path(text)


def _optional_path(key: str, value: object) -> Path | None:
    text = _string(key, value)
    return Path(text) if text else None


def _url(key: str, value: object) -> str:
    text = _string(key, value)
    if text:
        parse_imap_url(text, key)
    return text


def _domains(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of domain names")
    out = []
    for n, item in enumerate(value):
        text = _string(f"{key}[{n}]", item).strip().lower().rstrip(".")
        if not text or any(c.isspace() or c in "@/\\" or not c.isprintable() for c in text):
            raise ConfigError(f"{key}[{n}]: {item!r} is not a domain name")
        out.append(text)
    return tuple(out)


def _listen(key: str, value: object) -> str:
    text = _string(key, value)
    if text:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f'{key}: must be "host:port" (or "" to turn it off); got {text!r}')
    return text


def split_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9101"`` -> ``("127.0.0.1", 9101)``; ``[::1]:9101`` works too."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _opt(default: Any, check: Check) -> Any:
    """A config field with its default and the function that validates a raw TOML value."""
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class ServerConfig:
    """The mux socket and how requests on it are bounded."""

    # _opt returns a dataclasses.field; Path values are immutable.
    socket: Path = _opt(Path("/run/saslauthd/mux"), _socket_path)  # noqa: RUF009
    socket_mode: int = _opt(0o660, _mode)
    socket_group: str = _opt("", _string)
    create_directory: bool = _opt(True, _boolean)
    max_connections: int = _opt(512, _integer(1, 100_000))
    read_timeout: float = _opt(5.0, _number(0.05, 300))
    max_field_length: int = _opt(256, _integer(16, 65535))
    on_backend_error: Literal["close", "no"] = _opt("close", _choice("close", "no"))
    drain_timeout: float = _opt(10.0, _number(0, 600))
    event_loop: Literal["auto", "asyncio", "uvloop"] = _opt(
        "auto", _choice("auto", "asyncio", "uvloop")
    )


@dataclass(frozen=True)
class ImapConfig:
    """The IMAP server that holds the users' passwords."""

    url: str = _opt("", _url)
    ca_file: Path | None = _opt(None, _optional_path)  # noqa: RUF009  (a field, see ServerConfig)
    connect_timeout: float = _opt(5.0, _number(0.05, 120))
    response_timeout: float = _opt(5.0, _number(0.05, 120))
    max_concurrency: int = _opt(16, _integer(1, 1024))
    max_queue: int = _opt(64, _integer(0, 100_000))
    mechanism: Literal["auto", "plain", "login"] = _opt("auto", _choice("auto", "plain", "login"))
    warm_connections: int = _opt(2, _integer(0, 64))
    warm_max_idle: float = _opt(20.0, _number(1, 3600))

    @property
    def target(self) -> ImapTarget:
        """The parsed URL (validated when the config was loaded)."""
        return parse_imap_url(self.url)


@dataclass(frozen=True)
class UsersConfig:
    """How the login and realm fields become the IMAP user name."""

    realm: Literal["join", "ignore"] = _opt("join", _choice("join", "ignore"))
    lowercase: bool = _opt(False, _boolean)
    allowed_domains: tuple[str, ...] = _opt((), _domains)


@dataclass(frozen=True)
class CacheConfig:
    """What is remembered between checks (see saslimap.cache)."""

    ttl: float = _opt(3600.0, _number(0, 30 * 86400))
    refresh_after: float = _opt(300.0, _number(0, 30 * 86400))
    stale_if_error: float = _opt(4 * 3600.0, _number(0, 30 * 86400))
    max_entries: int = _opt(100_000, _integer(0, 10_000_000))
    negative_ttl: float = _opt(60.0, _number(0, 86400))


@dataclass(frozen=True)
class LimitsConfig:
    """Brute-force limits."""

    failure_budget: int = _opt(10, _integer(0, 1_000_000))
    failure_window: float = _opt(900.0, _number(1, 30 * 86400))
    failure_delay: float = _opt(0.0, _number(0, 30))


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    listen: str = _opt("127.0.0.1:9101", _listen)


@dataclass(frozen=True)
class LoggingConfig:
    """Log verbosity."""

    level: Literal["debug", "info", "warning", "error"] = _opt(
        "info", _choice("debug", "info", "warning", "error")
    )


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


def _build_section(cls: type[Any], name: str, raw: object) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a table ([{name}])")
    checks = {f.name: f.metadata["check"] for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in checks:
            raise ConfigError(f"{name}.{key}: unknown key")
        values[key] = checks[key](f"{name}.{key}", value)
    return cls(**values)


def from_mapping(raw: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document and build the configuration."""
    sections = {f.name: f.default_factory for f in fields(Config)}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sections)})")
    return Config(
        **{
            name: _build_section(cls, name, raw.get(name, {}))  # type: ignore[arg-type]
            for name, cls in sections.items()
        }
    )


def load(path: Path) -> Config:
    """Read and validate a TOML file."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err
    try:
        return from_mapping(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def override(cfg: Config, key: str, value: object) -> Config:
    """Set ``section.key`` (a command-line flag) with the same checks as the file."""
    section, _, name = key.partition(".")
    current = getattr(cfg, section)
    checks = {f.name: f.metadata["check"] for f in fields(current)}
    return replace(cfg, **{section: replace(current, **{name: checks[name](key, value)})})


def require_complete(cfg: Config) -> None:
    """Checks that need the whole picture (after flags were applied)."""
    if cfg.server.event_loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise ConfigError("server.event_loop: uvloop is not installed") from None
    if cfg.cache.refresh_after > cfg.cache.ttl:
        raise ConfigError("cache.refresh_after: must not exceed cache.ttl")
    if not cfg.imap.url:
        raise ConfigError("imap.url: no IMAP server configured (set it in the file or with --imap)")
    if cfg.imap.ca_file is not None and not cfg.imap.ca_file.is_file():
        raise ConfigError(f"imap.ca_file: {cfg.imap.ca_file} is not a readable file")
