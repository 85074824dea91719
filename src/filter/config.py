"""mail-filter's configuration: TOML in, frozen dataclasses out.

This module owns the schema of ``conf/filter.toml`` (every key, default and
bounds); the machinery (validators, unknown-key errors naming ``section.key``)
is :mod:`mailgate.config`, shared with saslimap.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from filter.banned import DEFAULT_NAMES, DEFAULT_TYPES, Limits
from filter.verdicts import Category, Destiny
from mailgate import config as confkit
from mailgate.config import (
    ConfigError,
    LoggingConfig,
    StateConfig,
    boolean,
    choice,
    event_loop,
    integer,
    number,
    opt,
    optional_path,
    split_listen,
    string,
)

__all__ = ["Config", "ConfigError", "load", "override", "split_listen"]


def _size(key: str, value: object) -> int:
    return int(integer(0, 2**40)(key, value))


@dataclass(frozen=True)
class ServerConfig:
    """Where Postfix hands mail to the filter, and how much it may hand at once."""

    listen: str = opt("127.0.0.1:10024", confkit.hostport)
    hostname: str = opt("", string)  # for our Received line and X-Virus-Scanned; "" = FQDN
    max_connections: int = opt(32, integer(1, 10_000))
    max_message_size: int = opt(25 * 1024 * 1024, _size)  # at most clamd.max_stream
    spool_threshold: int = opt(1024 * 1024, _size)  # larger messages go to a file; 0 = never
    message_timeout: float = opt(480.0, number(1, 3600))
    idle_timeout: float = opt(300.0, number(1, 3600))
    drain_timeout: float = opt(60.0, number(0, 3600))
    event_loop: Literal["auto", "asyncio", "uvloop"] = opt("auto", event_loop)

    @property
    def name(self) -> str:
        """The host name we put in headers."""
        return self.hostname or socket.getfqdn()


@dataclass(frozen=True)
class ReinjectConfig:
    """Where scanned mail goes back to Postfix."""

    address: str = opt("127.0.0.1:10025", confkit.hostport)
    timeout: float = opt(120.0, number(1, 3600))
    pool_size: int = opt(8, integer(0, 1000))


@dataclass(frozen=True)
class ClamdConfig:
    """The virus scanner."""

    address: str = opt("unix:/var/run/clamav/clamd.ctl", confkit.address)
    timeout: float = opt(60.0, number(0.1, 3600))
    concurrency: int = opt(8, integer(1, 1000))
    max_stream: int = opt(25 * 1024 * 1024, _size)
    pass_fd: bool = opt(True, boolean)


@dataclass(frozen=True)
class SpamdConfig:
    """The spam scanner."""

    address: str = opt("127.0.0.1:783", confkit.address)
    enabled: bool = opt(True, boolean)
    timeout: float = opt(120.0, number(0.1, 3600))
    concurrency: int = opt(4, integer(1, 1000))
    max_size: int = opt(500 * 1024, _size)
    user: str = opt("", string)


DESTINIES = tuple(destiny.value for destiny in Destiny)
CATEGORIES = ("virus", "banned", "unchecked", "spam", "bad_header")


@dataclass(frozen=True)
class Levels:
    """Spam score levels (amavisd-new's tag, tag2, kill and DSN cutoff)."""

    tag: float = 2.0
    tag2: float = 6.31
    kill: float = 6.31
    dsn_cutoff: float = 10.0


LevelOverrides = tuple[tuple[str, tuple[tuple[str, float], ...]], ...]


def _per_recipient_levels(key: str, value: object) -> LevelOverrides:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table of lookup key = {{ tag2 = 5.0, ... }}")
    out = []
    for lookup, levels in value.items():
        if not isinstance(levels, dict):
            raise ConfigError(f"{key}.{lookup}: must be a table such as {{ tag2 = 5.0 }}")
        known = ("tag", "tag2", "kill", "dsn_cutoff")
        for name in levels:
            if name not in known:
                raise ConfigError(f"{key}.{lookup}.{name}: unknown level ({', '.join(known)})")
        checked = tuple(
            (n, float(number(-100_000, 100_000)(f"{key}.{lookup}.{n}", v)))
            for n, v in levels.items()
        )
        out.append((str(lookup).lower(), checked))
    return tuple(out)


def _categories(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of categories ({', '.join(CATEGORIES)})")
    for n, item in enumerate(value):
        if item not in CATEGORIES:
            raise ConfigError(f"{key}[{n}]: {item!r} is not one of {', '.join(CATEGORIES)}")
    return tuple(value)


def _destiny(key: str, value: object) -> Destiny:
    """The written destiny (``"pass"``, ...) as the enum the pipeline compares."""
    return Destiny(choice(*DESTINIES)(key, value))


def _quarantined(key: str, value: object) -> tuple[Category, ...]:
    return tuple(Category(name) for name in _categories(key, value))


def _strings(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of strings")
    return tuple(string(f"{key}[{n}]", item) for n, item in enumerate(value))


@dataclass(frozen=True)
class PolicyConfig:
    """Categories, levels, destinies and what the marks look like (amavisd-new semantics)."""

    tag_level: float = opt(2.0, number(-100_000, 100_000))
    tag2_level: float = opt(6.31, number(-100_000, 100_000))
    kill_level: float = opt(6.31, number(-100_000, 100_000))
    dsn_cutoff_level: float = opt(10.0, number(-100_000, 100_000))
    per_recipient: LevelOverrides = opt((), _per_recipient_levels)  # noqa: RUF009 - a field
    virus_destiny: Destiny = opt(Destiny.DISCARD, _destiny)  # noqa: RUF009 - a field
    banned_destiny: Destiny = opt(Destiny.DISCARD, _destiny)  # noqa: RUF009 - a field
    unchecked_destiny: Destiny = opt(Destiny.DISCARD, _destiny)  # noqa: RUF009 - a field
    spam_destiny: Destiny = opt(Destiny.PASS, _destiny)  # noqa: RUF009 - a field
    bad_header_destiny: Destiny = opt(Destiny.PASS, _destiny)  # noqa: RUF009 - a field
    quarantine: tuple[Category, ...] = opt(
        (Category.VIRUS, Category.BANNED, Category.UNCHECKED), _quarantined
    )
    subject_prefix: str = opt("***SPAM*** ", string)
    unchecked_subject_prefix: str = opt("***UNCHECKED*** ", string)
    remove_existing_spam_headers: bool = opt(True, boolean)
    scanner_name: str = opt("mail-filter", string)

    def __post_init__(self) -> None:
        # The pipeline compares destinies and categories by identity; a config built in
        # code with plain strings ("pass") must not silently miss every comparison.
        for name in (
            "virus_destiny", "banned_destiny", "spam_destiny", "bad_header_destiny",
            "unchecked_destiny",
        ):  # fmt: skip
            object.__setattr__(self, name, Destiny(getattr(self, name)))
        object.__setattr__(self, "quarantine", tuple(Category(c) for c in self.quarantine))

    def destiny(self, category: Category) -> Destiny:
        """The configured destiny of a category (virus, banned, unchecked, spam or bad_header)."""
        destiny: Destiny = getattr(self, f"{category.value}_destiny")
        return destiny

    def levels_for(self, keys: Sequence[str]) -> Levels:
        """The levels for a recipient: global ones, overridden by its most specific entry.

        ``keys`` are the recipient's lookup keys, most specific first.
        """
        levels = Levels(self.tag_level, self.tag2_level, self.kill_level, self.dsn_cutoff_level)
        overrides = dict(self.per_recipient)
        for key in keys:
            if key in overrides:
                return replace(levels, **dict(overrides[key]))
        return levels


@dataclass(frozen=True)
class ListsConfig:
    """Sender white/black lists and spam lovers (files, reloaded on SIGHUP)."""

    whitelist: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    blacklist: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    spam_lovers: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    unchecked_lovers: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field


@dataclass(frozen=True)
class BannedConfig:
    """Banned attachments."""

    enabled: bool = opt(True, boolean)
    names: tuple[str, ...] = opt(DEFAULT_NAMES, _strings)
    types: tuple[str, ...] = opt(DEFAULT_TYPES, _strings)
    max_depth: int = opt(Limits.max_depth, integer(1, 100))
    max_mime_depth: int = opt(Limits.max_mime_depth, integer(1, 1000))
    max_parts: int = opt(Limits.max_parts, integer(1, 1_000_000))
    max_members: int = opt(Limits.max_members, integer(1, 1_000_000))
    max_unpacked: int = opt(Limits.max_unpacked, _size)
    max_seconds: float = opt(Limits.max_seconds, number(0.1, 3600))

    @property
    def limits(self) -> Limits:
        """The inspection limits as :mod:`filter.banned` takes them."""
        return Limits(
            self.max_depth, self.max_mime_depth, self.max_parts, self.max_members,
            self.max_unpacked, self.max_seconds,
        )  # fmt: skip


def _database_url(key: str, value: object) -> str:
    """ "" or ``postgresql://user@host[:port]/database``: never with a password in it."""
    text = string(key, value)
    if not text:
        return ""
    parts = urlsplit(text)
    if (
        parts.scheme not in ("postgresql", "postgres") or not parts.hostname
        or not parts.path.strip("/") or not text.isascii() or not text.isprintable()
        or " " in text or parts.fragment
    ):  # fmt: skip
        raise ConfigError(
            f'{key}: must be "" (the directory) or a URL like postgresql://user@host:5432/db'
        )
    if parts.password is not None or "password=" in parts.query:
        # A URL is shown in errors and process listings; the password has its own file.
        raise ConfigError(f"{key}: no password in the URL; put it in quarantine.password_file")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"{key}: bad port in {text!r}") from None
    return text


@dataclass(frozen=True)
class QuarantineConfig:
    """Where held messages are kept, and for how long."""

    directory: Path = opt(Path("/var/lib/mail-filter/quarantine"), optional_path)  # noqa: RUF009
    max_age_days: float = opt(30.0, number(0, 3650))
    # Where `mail-filter quarantine` writes its audit lines: "syslog" (/dev/log, the
    # journal; stderr where there is none), "stderr", or a file appended to.
    audit_log: str = opt("syslog", string)
    # "" = the directory above; "postgresql://user@host:port/db" = shared by every host.
    store: str = opt("", _database_url)
    password_file: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    ca_file: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    timeout: float = opt(5.0, number(0.1, 300))
    # How often each host reloads its copy of the allow entries, which answers while
    # the store cannot (filter.allowcache).
    allow_refresh: float = opt(60.0, number(1, 86400))


@dataclass(frozen=True)
class NoticesConfig:
    """Short notices to administrators about held mail."""

    admins: tuple[str, ...] = opt((), _strings)
    categories: tuple[str, ...] = opt(("virus", "banned"), _categories)
    sender: str = opt("", string)  # "" = mail-filter@<hostname>
    max_per_hour: int = opt(20, integer(0, 100_000))


def _address(key: str, value: object) -> str:
    """A plain ASCII mail address (or ""), for headers we write: no spaces, brackets, controls."""
    text = string(key, value)
    if text and not (
        len(text) <= 254 and text.count("@") == 1 and text.isascii() and text.isprintable()
        and not any(c in text for c in ' <>()",;:\\[]')
        and all(text.split("@"))
    ):  # fmt: skip
        raise ConfigError(f"{key}: {text[:80]!r} is not a mail address like user@example.com")
    return text


def _portal_url(key: str, value: object) -> str:
    """The portal's public base URL (http or https), without a trailing slash."""
    text = string(key, value)
    if not text:
        return ""
    parts = urlsplit(text)
    if (
        parts.scheme not in ("https", "http") or not parts.hostname or parts.query
        or parts.fragment or not text.isascii() or not text.isprintable() or " " in text
    ):  # fmt: skip
        raise ConfigError(f"{key}: must be an http(s) URL like https://quarantine.example.com")
    return text.rstrip("/")


def _user_categories(key: str, value: object) -> tuple[str, ...]:
    chosen = _categories(key, value)
    for n, item in enumerate(chosen):
        if item not in ("spam", "bad_header"):
            raise ConfigError(f"{key}[{n}]: {item!r}: users release only spam and bad_header")
    return chosen


@dataclass(frozen=True)
class DigestConfig:
    """``mail-filter quarantine digest``: each recipient's daily list of held spam, with links."""

    portal_url: str = opt("", _portal_url)  # "" = not configured: the digest refuses to run
    # The company's mail domains: digests go to recipients there only (never to outside
    # addresses a compromised account's outbound spam was held for). Required.
    domains: tuple[str, ...] = opt((), confkit.domains)
    sender: str = opt("", _address)  # "" = [notices] sender, else mail-filter@<hostname>
    categories: tuple[str, ...] = opt(("spam",), _user_categories)
    max_items: int = opt(100, integer(1, 1000))
    link_days: float = opt(7.0, number(0.01, 365))
    # The portal's secret (the same file as [portal] secret_file): it signs the links.
    secret_file: Path | None = opt(Path("/etc/mail-filter/portal.key"), optional_path)  # noqa: RUF009


@dataclass(frozen=True)
class LearnConfig:
    """mail-filter learn: the admin mailbox and how its folders teach Bayes."""

    imap_url: str = opt("", confkit.imap_url)
    ca_file: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    username: str = opt("", string)
    password: str = opt("", string)
    password_file: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    spam_folder: str = opt("spam", string)
    ham_folder: str = opt("ham", string)
    state_file: Path = opt(Path("/var/lib/mail-filter/learn-state.json"), optional_path)  # noqa: RUF009
    method: str = opt("spamd", choice("spamd", "sa-learn"))
    sa_learn_dbpath: str = opt("", string)
    after: str = opt("leave", choice("leave", "flag", "move", "delete"))
    flag_keyword: str = opt("$Learned", string)
    move_to: str = opt("learned", string)
    batch_size: int = opt(100, integer(1, 10_000))
    timeout: float = opt(60.0, number(1, 3600))
    # The whole run, IMAP waits and teaching included; under the timer's hour and
    # systemd's TimeoutStartSec=1h, so a run ends on its own, with its error.
    run_timeout: float = opt(1800.0, number(1, 86_400))
    # Bytes the IMAP server may send in answer to one command (memory held at once);
    # at least 1 MiB, which imaplib's own line limit (1,000,000 bytes) fits in.
    max_response: int = opt(64 * 1024 * 1024, integer(1024 * 1024, 2**40))


@dataclass(frozen=True)
class MetricsConfig(confkit.MetricsConfig):
    """The Prometheus endpoint: the shared table, on the filter's own default port."""

    listen: str = opt("127.0.0.1:9102", confkit.listen)


def _names(key: str, value: object) -> tuple[str, ...]:
    """A list of login names, compared without case (as the IMAP server sees them)."""
    return tuple(name.strip().lower() for name in _strings(key, value) if name.strip())


def _absolute_path(key: str, value: object) -> Path:
    text = string(key, value)
    if not text.startswith("/"):
        raise ConfigError(f"{key}: must be an absolute path; got {text!r}")
    return Path(text)


def _addresses(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be a list of IP addresses")
    for n, item in enumerate(value):
        text = string(f"{key}[{n}]", item)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise ConfigError(f"{key}[{n}]: {text!r} is not an IP address") from None
    return tuple(value)


@dataclass(frozen=True)
class PortalConfig:
    """``mail-filter portal``: the quarantine's web pages for users and administrators."""

    listen: str = opt("127.0.0.1:8025", confkit.hostport)
    # saslimap's saslauthd "mux" socket: the portal checks passwords by asking it.
    auth_socket: Path = opt(  # noqa: RUF009 - a field
        Path("/var/spool/postfix/var/run/saslauthd/mux"), _absolute_path
    )
    auth_timeout: float = opt(10.0, number(0.1, 300))
    secret_file: Path | None = opt(Path("/etc/mail-filter/portal.key"), optional_path)  # noqa: RUF009
    admins: tuple[str, ...] = opt((), _names)
    default_domain: str = opt("", string)
    tls_cert: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    tls_key: Path | None = opt(None, optional_path)  # noqa: RUF009 - a field
    trusted_proxies: tuple[str, ...] = opt(("127.0.0.1", "::1"), _addresses)
    session_idle: float = opt(1800.0, number(60, 86_400))
    session_max: float = opt(43_200.0, number(60, 30 * 86_400))
    max_sessions: int = opt(10_000, integer(1, 10_000_000))
    user_release: tuple[str, ...] = opt(("spam", "bad_header"), _categories)
    page_size: int = opt(50, integer(5, 500))
    drain_timeout: float = opt(10.0, number(0, 3600))

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("portal.tls_cert and portal.tls_key: set both or neither")


@dataclass(frozen=True)
class Config:
    """The whole filter configuration: one attribute per TOML table."""

    server: ServerConfig = field(default_factory=ServerConfig)
    reinject: ReinjectConfig = field(default_factory=ReinjectConfig)
    clamd: ClamdConfig = field(default_factory=ClamdConfig)
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    lists: ListsConfig = field(default_factory=ListsConfig)
    banned: BannedConfig = field(default_factory=BannedConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    notices: NoticesConfig = field(default_factory=NoticesConfig)
    digest: DigestConfig = field(default_factory=DigestConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    state: StateConfig = field(default_factory=StateConfig)
    portal: PortalConfig = field(default_factory=PortalConfig)


SCHEMA = confkit.Schema(Config)
from_mapping = SCHEMA.from_mapping
load = SCHEMA.load
override = SCHEMA.override
