"""TOML configuration for both daemons: validators, sections, addresses, shared tables.

This module owns how a raw TOML value becomes a checked Python value and how a
table becomes a frozen dataclass: each dataclass field is declared with
:func:`opt` (its default and its validator), unknown keys are refused, and
every error names its ``section.key``.  Both daemons (``saslimap`` and
``mail-filter``) build their schemas from it.  It also owns the three things
both schemas hold alike: the :class:`Address` syntax (``host:port``,
``[v6]:port``, ``unix:/path``), the ``[logging]`` and ``[metrics]`` tables, and
the IMAP server URL (:func:`parse_imap_url`).
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from mailgate.errors import ConfigError

__all__ = ["Address", "ConfigError", "ImapTarget", "LoggingConfig", "MetricsConfig"]

T = TypeVar("T")


Check = Callable[[str, object], Any]


def choice(*choices: str) -> Check:
    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def number(low: float, high: float) -> Check:
    def check(key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number; got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{key}: must be between {low:g} and {high:g}; got {value!r}")
        return float(value)

    return check


def integer(low: int, high: int) -> Check:
    def check(key: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number; got {value!r}")
        if not low <= value <= high:
            raise ConfigError(f"{key}: must be between {low} and {high}; got {value!r}")
        return value

    return check


def boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false; got {value!r}")
    return value


def string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a string; got {value!r}")
    return value


def mode(key: str, value: object) -> int:
    # TOML has no octal literal that reads naturally to an administrator, so modes are strings.
    text = string(key, value)
    try:
        mode = int(text, 8)
    except ValueError as err:
        raise ConfigError(f'{key}: must be an octal mode such as "0660"; got {text!r}') from err
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{key}: must be between 0000 and 0777; got {text!r}")
    return mode


def optional_path(key: str, value: object) -> Path | None:
    text = string(key, value)
    return Path(text) if text else None


@dataclass(frozen=True)
class Address:
    """Where to connect or listen: a TCP ``host:port`` or a Unix socket path.

    Written ``host:port``, ``[v6]:port`` (a bare IPv6 address with a port needs
    the brackets) or ``unix:/absolute/path``.  ``str()`` gives the written form
    back.
    """

    host: str = ""  # "" for a Unix socket
    port: int = 0
    path: str = ""  # "" for TCP

    @property
    def is_unix(self) -> bool:
        """Whether this names a Unix socket."""
        return bool(self.path)

    @classmethod
    def parse(cls, text: str, key: str = "address", *, unix: bool = True) -> Address:
        """Parse the written form; ``unix=False`` refuses ``unix:`` paths."""
        if text.startswith("unix:"):
            path = text[5:]
            if not unix:
                raise ConfigError(f"{key}: must be host:port; got {text!r}")
            if not path.startswith("/"):
                raise ConfigError(f"{key}: unix: needs an absolute path; got {text!r}")
            return cls(path=path)
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            bracketed = True
        else:
            bracketed = False
        valid = bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
        if valid and ":" in host:
            # "[::1]:25" as RFC 3986 writes it; "::1:25" (the last colon before the
            # port) is accepted too, as it always was.  Brackets around a name or an
            # IPv4 address ("[127.0.0.1]:10025", Postfix's habit) are accepted as well.
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                valid = False
        if valid and bracketed and ("[" in host or "]" in host):
            valid = False
        if not valid:
            form = "host:port, [v6]:port or unix:/path" if unix else "host:port or [v6]:port"
            raise ConfigError(f"{key}: must be {form}; got {text!r}")
        return cls(host=host, port=int(port))

    def where(self) -> tuple[str, str | int]:
        """``("unix", path)`` or ``(host, port)``: what a client connects to."""
        return ("unix", self.path) if self.path else (self.host, self.port)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def address(key: str, value: object) -> str:
    """A ``host:port``, ``[v6]:port`` or ``unix:/path`` string (kept as written)."""
    text = string(key, value)
    Address.parse(text, key)
    return text


def hostport(key: str, value: object) -> str:
    """A ``host:port`` or ``[v6]:port`` string (kept as written)."""
    text = string(key, value)
    Address.parse(text, key, unix=False)
    return text


def listen(key: str, value: object) -> str:
    """A ``host:port`` to listen on, or ``""`` for off."""
    text = string(key, value)
    if text:
        try:
            Address.parse(text, key, unix=False)
        except ConfigError:
            raise ConfigError(
                f'{key}: must be "host:port" (or "" to turn it off); got {text!r}'
            ) from None
    return text


def split_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9101"`` -> ``("127.0.0.1", 9101)``; ``[::1]:9101`` works too."""
    parsed = Address.parse(text, unix=False)
    return parsed.host, parsed.port


def opt(default: Any, check: Check) -> Any:
    """A config field with its default and the function that validates a raw TOML value."""
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"check": check})


def build_section(cls: type[Any], name: str, raw: object) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a table ([{name}])")
    checks = {f.name: f.metadata["check"] for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in checks:
            raise ConfigError(f"{name}.{key}: unknown key")
        values[key] = checks[key](f"{name}.{key}", value)
    return cls(**values)


def from_mapping(cls: type[T], raw: Mapping[str, Any]) -> T:
    """Build a config whose fields are all section dataclasses (``default_factory``)."""
    sections = {f.name: f.default_factory for f in fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in sections:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sections)})")
    return cls(
        **{
            name: build_section(section_cls, name, raw.get(name, {}))  # type: ignore[arg-type]
            for name, section_cls in sections.items()
        }
    )


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into ConfigError."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err


def load(cls: type[T], path: Path) -> T:
    """Read, validate and build; errors are prefixed with the file name."""
    raw = load_toml(path)
    try:
        return from_mapping(cls, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def override(cfg: T, key: str, value: object) -> T:
    """Set ``section.key`` (a command-line flag) with the same checks as the file."""
    section, _, name = key.partition(".")
    current = getattr(cfg, section)
    checks = {f.name: f.metadata["check"] for f in fields(current)}
    return replace(cfg, **{section: replace(current, **{name: checks[name](key, value)})})  # type: ignore[type-var]


class Schema(Generic[T]):
    """A daemon's whole configuration class with its readers: file, table, flags."""

    def __init__(self, cls: type[T]) -> None:
        self.cls = cls

    def from_mapping(self, raw: Mapping[str, Any]) -> T:
        """Validate a parsed TOML document and build the configuration."""
        return from_mapping(self.cls, raw)

    def load(self, path: Path | None) -> T:
        """Read and validate a TOML file (the defaults when ``path`` is None)."""
        return load(self.cls, path) if path is not None else self.cls()

    def override(self, cfg: T, key: str, value: object) -> T:
        """Set ``section.key`` (a command-line flag) with the same checks as the file."""
        return override(cfg, key, value)

    def load_with_flags(self, path: Path | None, flags: Mapping[str, str]) -> T:
        """The file (or the defaults), then command-line flags on top."""
        cfg = self.load(path)
        for key, value in flags.items():
            cfg = override(cfg, key, value)
        return cfg


def domains(key: str, value: object) -> tuple[str, ...]:
    """A list of mail domain names, lower-cased, without a trailing dot."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of domain names")
    out = []
    for n, item in enumerate(value):
        text = string(f"{key}[{n}]", item).strip().lower().rstrip(".")
        if not text or any(c.isspace() or c in "@/\\" or not c.isprintable() for c in text):
            raise ConfigError(f"{key}[{n}]: {item!r} is not a domain name")
        out.append(text)
    return tuple(out)


# -- tables both daemons have -------------------------------------------------


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint (``""`` turns it off)."""

    listen: str = opt("127.0.0.1:9101", listen)


@dataclass(frozen=True)
class LoggingConfig:
    """Log verbosity."""

    level: Literal["debug", "info", "warning", "error"] = opt(
        "info", choice("debug", "info", "warning", "error")
    )


EVENT_LOOPS = ("auto", "asyncio", "uvloop")
EventLoop = Literal["auto", "asyncio", "uvloop"]
event_loop = choice(*EVENT_LOOPS)


def require_event_loop(key: str, value: str) -> None:
    """``uvloop`` chosen explicitly must be importable (``auto`` falls back)."""
    if value == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise ConfigError(f"{key}: uvloop is not installed") from None


# -- the IMAP server URL (saslimap's [imap] and the filter's [learn]) ----------

Scheme = Literal["imaps", "imap", "imap+plaintext"]
_DEFAULT_PORTS: dict[str, int] = {"imaps": 993, "imap": 143, "imap+plaintext": 143}


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
    """Parse ``imaps://host[:993]``, ``imap://host[:143]`` or ``imap+plaintext://host[:143]``.

    No error quotes a ``user:password@`` part back (errors reach journals and tickets).
    """
    shown = _hide_userinfo(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"{key}: {shown!r} is not a valid URL") from err
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ConfigError(
            f"{key}: scheme must be imaps://, imap:// (STARTTLS) or imap+plaintext://,"
            f" got {shown!r}"
        )
    if not parts.hostname:
        raise ConfigError(f"{key}: {shown!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{key}: {shown!r}: no user or password in the URL (saslimap logs in as each user)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{key}: {shown!r} must be scheme://host[:port] and nothing more")
    checked: Scheme = scheme  # type: ignore[assignment]  # membership checked above
    return ImapTarget(checked, parts.hostname, port or _DEFAULT_PORTS[scheme])


def imap_url(key: str, value: object) -> str:
    """An IMAP server URL, or ``""`` for none."""
    text = string(key, value)
    if text:
        parse_imap_url(text, key)
    return text


# -- shared state between gateway hosts (both daemons' [state]) ---------------

_STATE_SCHEMES = ("redis", "rediss", "unix")


def _hide_userinfo(url: str) -> str:
    """``url`` as an error message may quote it: any ``user:password@`` replaced by ``***@``
    (the authority ends at the first ``/``, ``?`` or ``#``, as for urlsplit)."""
    scheme, sep, rest = url.partition("://")
    end = min([i for i in map(rest.find, "/?#") if i >= 0], default=len(rest))
    at = rest.rfind("@", 0, end)
    return url if not sep or at < 0 else f"{scheme}://***{rest[at:]}"


def state_url(key: str, value: object) -> str:
    """``""`` (in-process memory), ``redis://``, ``rediss://`` or ``unix:///path``.

    A password in the URL is refused: config files are read by more people
    than secrets should be; it belongs in ``password_file``.  No message here
    quotes it back either (they reach journals and tickets).
    """
    text = string(key, value)
    if not text:
        return text
    shown = _hide_userinfo(text)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as err:
        raise ConfigError(f"{key}: {shown!r} is not a valid URL ({err})") from err
    if parts.scheme not in _STATE_SCHEMES:
        raise ConfigError(
            f"{key}: must be redis://host[:port][/db], rediss://host[:port][/db] (TLS) "
            f"or unix:///path/redis.sock; got {shown!r}"
        )
    if parts.password is not None:
        raise ConfigError(f"{key}: put the password in state.password_file, not in the URL")
    if parts.scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc:
            raise ConfigError(f"{key}: unix:///absolute/path/redis.sock; got {shown!r}")
    elif not parts.hostname:
        raise ConfigError(f"{key}: {shown!r} names no host")
    db = parts.path.strip("/") if parts.scheme != "unix" else ""
    if db and not db.isdigit():
        raise ConfigError(f"{key}: the database must be a number (redis://host/0); got {db!r}")
    return text


def _hostports(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f'{key}: must be a list such as ["10.0.0.1:26379"]')
    return tuple(hostport(f"{key}[{n}]", item) for n, item in enumerate(value))


def _prefix(key: str, value: object) -> str:
    text = string(key, value)
    if not text or len(text) > 64 or not all(c.isprintable() and not c.isspace() for c in text):
        raise ConfigError(f"{key}: 1 to 64 printable characters without spaces; got {text!r}")
    return text


@dataclass(frozen=True)
class StateConfig:
    """Where state shared by several gateway hosts lives (``url = ""``: in this process)."""

    url: str = opt("", state_url)
    password_file: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    ca_file: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    key_prefix: str = opt("mailgate:", _prefix)
    sentinels: tuple[str, ...] = opt((), _hostports)
    sentinel_service: str = opt("mymaster", string)
    secret_file: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    timeout: float = opt(0.05, number(0.001, 10))
    connect_timeout: float = opt(1.0, number(0.01, 60))
    retry_interval: float = opt(1.0, number(0.05, 300))

    @property
    def enabled(self) -> bool:
        """Whether a shared store is configured at all."""
        return bool(self.url or self.sentinels)


def require_state(key: str, cfg: StateConfig) -> None:
    """Whole-section checks of ``[state]`` (files present; the secret's own checks at start)."""
    if not cfg.enabled:
        return
    if cfg.secret_file is None:
        raise ConfigError(
            f"{key}.secret_file: required with a shared state (32 random bytes, mode 0600, "
            "the same file on every host)"
        )
    for name, path in (("password_file", cfg.password_file), ("ca_file", cfg.ca_file)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{key}.{name}: {path} is not a readable file")
    if cfg.ca_file is not None and not cfg.url.startswith("rediss://"):
        raise ConfigError(f"{key}.ca_file: only used with rediss:// (TLS)")
