"""Values of amavisd-new's Perl configuration, as :mod:`filter.amavis_perl` computes them.

This module owns the shapes a configuration's variables can take once read
(strings, numbers, undef, lists, hashes, ``qr`` regular expressions,
``new_RE`` tables, references to variables, and :class:`Unknown` for what only
running Perl could tell), where each came from (:class:`Where`), how Perl reads
them as text, number and truth, and the bounds every reading keeps to
(:class:`Limits`).  Pure data: nothing here reads a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Where:
    """A place in a configuration file (line 0: amavisd-new's built-in default)."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


BUILTIN = Where("amavisd-new's built-in default", 0)


@dataclass(frozen=True)
class Undef:
    """Perl's undef."""


@dataclass(frozen=True)
class Str:
    """A string scalar."""

    text: str
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Num:
    """A numeric scalar (amavisd-new's D_* and CC_* constants are numbers too)."""

    value: float
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Regex:
    """A ``qr`` regular expression: its pattern as written, and its flags."""

    pattern: str
    flags: str = ""
    where: Where | None = field(default=None, compare=False)
    # Written with a delimiter other than ' and holding $name or @name: Perl would
    # interpolate variables into it, so the pattern as written is not the one used.
    interpolates: bool = False

    def __str__(self) -> str:
        return f"qr'{self.pattern}'{self.flags}"


@dataclass(frozen=True)
class Entry:
    """One key of a hash, with its value and where it was set."""

    key: str
    value: Value
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HashV:
    """A hash or a hash reference; ``origin`` names the file ``read_hash`` read it from."""

    entries: tuple[Entry, ...] = ()
    origin: str = ""

    def get(self, key: str) -> Value | None:
        """The value of ``key``, or None when absent."""
        for entry in self.entries:
            if entry.key == key:
                return entry.value
        return None


@dataclass(frozen=True)
class ListV:
    """An array or an array reference; ``origin`` names the file ``read_array`` read it from."""

    items: tuple[Value, ...] = ()
    origin: str = ""
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RegexTable:
    """``new_RE(...)``: regular expressions tried in order, each with its value."""

    entries: tuple[tuple[Regex, Value], ...]
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True)
class VarRef:
    """``\\$x``, ``\\@x`` or ``\\%x``: resolved when looked at, as amavisd-new's maps are."""

    sigil: str
    name: str
    where: Where | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"\\{self.sigil}{self.name}"


@dataclass(frozen=True)
class Code:
    """Perl code (``sub {...}``, ``\\&name``): never run."""

    name: str
    where: Where | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Unknown:
    """A value that cannot be known without running Perl or a command, and why."""

    reason: str
    where: Where | None = field(default=None, compare=False)


Value = Undef | Str | Num | Regex | ListV | HashV | RegexTable | VarRef | Code | Unknown


@dataclass(frozen=True)
class Problem:
    """A statement or construct that was not evaluated, where, and why."""

    where: Where
    subject: str
    reason: str


@dataclass(frozen=True)
class Binding:
    """A variable's value and the assignment that gave it (``BUILTIN``: amavisd-new's default)."""

    value: Value
    where: Where

    @property
    def builtin(self) -> bool:
        """Whether the value is amavisd-new's own default, not set by the configuration."""
        return self.where == BUILTIN


@dataclass(frozen=True)
class Limits:
    """Bounds on what one import may cost, whatever the files hold."""

    max_tokens: int = 500_000  # per file
    max_depth: int = 60  # brackets and expressions nested in each other
    max_string: int = 1 << 20  # characters in one string value
    max_items: int = 200_000  # items in one list or hash
    max_statements: int = 100_000  # per file
    max_includes: int = 8  # include_config_files nested in each other
    # Steps of evaluation for all files together (a step: a character made or an item
    # copied). Real configurations take well under a million; a file made to take
    # quadratic time (100,000 element assignments to one hash) stops here instead.
    max_work: int = 20_000_000
    max_problems: int = 200  # reported per file; past it, one line counts the rest


class Trouble(Exception):
    """A construct this module does not evaluate; the statement holding it is skipped."""

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


class Exhausted(Trouble):
    """The evaluation's work budget (:attr:`Limits.max_work`) is spent: stop reading."""


# The D_* destinies and CC_* content categories of Amavis::Conf (2.13).
CONSTANTS = {
    "D_TEMPFAIL": -4.0, "D_REJECT": -3.0, "D_BOUNCE": -2.0, "D_DISCARD": 0.0, "D_PASS": 1.0,
    "CC_CATCHALL": 0.0, "CC_CLEAN": 1.0, "CC_MTA": 2.0, "CC_OVERSIZED": 3.0, "CC_BADH": 4.0,
    "CC_SPAMMY": 5.0, "CC_SPAM": 6.0, "CC_UNCHECKED": 7.0, "CC_BANNED": 8.0, "CC_VIRUS": 9.0,
}  # fmt: skip


def truthy(value: Value) -> bool | None:
    """Perl truth (undef, "", "0" and 0 are false); None when it cannot be known."""
    if isinstance(value, Unknown):
        return None
    if isinstance(value, Undef):
        return False
    if isinstance(value, Str):
        return value.text not in ("", "0")
    if isinstance(value, Num):
        return value.value != 0
    return True  # references are true


def _format_number(number: float) -> str:
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return format(number, ".15g")


def text_of(value: Value) -> str | None:
    """The value as Perl would print it; None for undef, unknowns and references."""
    if isinstance(value, Str):
        return value.text
    if isinstance(value, Num):
        return _format_number(value.value)
    return None


_NUMERIC = re.compile(r"\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))")


def number_of(value: Value) -> float | None:
    """The value as Perl would read it as a number; None for undef, unknowns and references."""
    if isinstance(value, Num):
        return value.value
    if isinstance(value, Str):
        found = _NUMERIC.match(value.text)
        return float(found.group(1)) if found else 0.0
    return None


def where_of(value: Value) -> Where | None:
    """Where a value was written, when it knows."""
    return getattr(value, "where", None)


def show(value: Value) -> str:
    """A short description of a value for reports."""
    if isinstance(value, Str):
        shown = value.text if len(value.text) <= 60 else value.text[:57] + "..."
        return repr(shown)
    if isinstance(value, Num):
        return _format_number(value.value)
    if isinstance(value, Regex):
        return str(value)
    if isinstance(value, VarRef):
        return str(value)
    if isinstance(value, Undef):
        return "undef"
    if isinstance(value, Unknown):
        return f"(unknown: {value.reason})"
    if isinstance(value, Code):
        return value.name
    if isinstance(value, HashV):
        pairs = [f"{e.key!r} => {show(e.value)}" for e in value.entries[:3]]
        more = ", ..." if len(value.entries) > 3 else ""
        return "{" + ", ".join(pairs) + more + "}"
    if isinstance(value, ListV):
        more = ", ..." if len(value.items) > 3 else ""
        return "(" + ", ".join(show(i) for i in value.items[:3]) + more + ")"
    return "new_RE(...)"
