"""Shared machinery for TOML configuration files: validators, sections, errors.

This module owns how a raw TOML value becomes a checked Python value and how a
table becomes a frozen dataclass: each dataclass field is declared with
:func:`opt` (its default and its validator), unknown keys are refused, and
every error names its ``section.key``.  Both daemons (``saslimap`` and
``mail-filter``) build their schemas from it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


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


def listen(key: str, value: object) -> str:
    text = string(key, value)
    if text:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f'{key}: must be "host:port" (or "" to turn it off); got {text!r}')
    return text


def split_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9101"`` -> ``("127.0.0.1", 9101)``; ``[::1]:9101`` works too."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


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
