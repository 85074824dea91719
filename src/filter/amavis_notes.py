"""The bookkeeping of ``mail-filter import-amavis``: settings carried, notes, and lookups.

This module owns what an import produces (:class:`Setting` for each
``filter.toml`` key with its amavisd-new source, :class:`ListEntry` for each list
file line, :class:`Note` for each setting not carried, not needed, or carried
with a difference, all in :class:`Carried`) and :class:`Mapping`, the helper
the mapping modules share: reading a variable marks it handled (so that
whatever no rule handles can be reported), following ``\\$x`` references as
amavisd-new's lookups do, and reading amavisd-new's lookup tables (hashes,
access lists, ``new_RE``) as list entries.  Pure.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from filter.amavis_perl import Machine
from filter.amavis_regex import Untranslatable, address_entries
from filter.amavis_values import (
    HashV,
    ListV,
    Num,
    RegexTable,
    Str,
    Undef,
    Value,
    VarRef,
    show,
    text_of,
    truthy,
)
from filter.lookup import lookup_keys

__all__ = [
    "CHANGED",
    "NOT_CARRIED",
    "NOT_NEEDED",
    "Carried",
    "ListEntry",
    "Mapping",
    "Note",
    "Setting",
    "TomlValue",
    "is_address",
]

NOT_CARRIED = "not carried"  # mail would be handled differently, and nothing here can say so
CHANGED = "changed"  # carried over, with a difference worth knowing
NOT_NEEDED = "not needed"  # no effect with mail-filter, or mail-filter does it its own way


TomlValue = bool | int | float | str | tuple[str, ...] | dict[str, dict[str, float]]


@dataclass(frozen=True)
class Note:
    """One line of the report: a setting, where it was set, what became of it and why."""

    kind: str
    where: str
    setting: str
    text: str


@dataclass(frozen=True)
class Setting:
    """One ``filter.toml`` key with its value and the amavisd-new source it comes from."""

    section: str
    key: str
    value: TomlValue
    source: str


@dataclass(frozen=True)
class ListEntry:
    """A list file line, where amavisd-new had it, and the variable holding it."""

    entry: str
    source: str
    table: str = ""


@dataclass
class Carried:
    """Everything one import produced: settings, list files' entries, and the notes."""

    settings: list[Setting] = field(default_factory=list)
    lists: dict[str, list[ListEntry]] = field(default_factory=dict)
    list_sources: dict[str, str] = field(default_factory=dict)  # list name -> @*_maps
    notes: list[Note] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every setting was carried over (no "not carried" note)."""
        return not any(note.kind == NOT_CARRIED for note in self.notes)


MAX_NOTES = 50  # report lines about one setting (a list file of 100,000 bad lines...)
_MAIL_ADDRESS = re.compile(r"[^\s@<>()\",;:\\\[\]]+@[^\s@<>()\",;:\\\[\]]+")
# No "#": a list file takes the rest of a line after it as a comment, so ".#x" would
# be read as "." (every sender).
ENTRY_OK = re.compile(r"[^\s@#]*@?[^\s@#]*")


def is_address(text: str) -> bool:
    """Whether ``text`` is one plain mail address (what [notices] takes)."""
    return len(text) <= 254 and text.isascii() and _MAIL_ADDRESS.fullmatch(text) is not None


class Mapping:
    """Reads an evaluated configuration's variables; every variable read counts as handled."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.out = Carried()
        self.handled: set[str] = set()
        self.noted: Counter[tuple[str, str]] = Counter()

    def value(self, key: str) -> Value:
        """The value of ``key`` (sigil + name: "$sa_tag_level_deflt"); marks it handled."""
        self.handled.add(key)
        return self.machine.value(key[0], key[1:])

    def set_by_config(self, key: str) -> bool:
        """Whether the configuration itself assigned ``key`` (not amavisd-new's default)."""
        binding = self.machine.vars.get(key)
        return binding is not None and not binding.builtin

    def where(self, key: str) -> str:
        """Where ``key`` was last assigned ("" if never)."""
        binding = self.machine.vars.get(key)
        return str(binding.where) if binding is not None else ""

    def source(self, key: str, shown: str | None = None) -> str:
        """``$name = value (file:line)``, or amavisd-new's default for it."""
        binding = self.machine.vars.get(key)
        value = shown if shown is not None else (show(binding.value) if binding else "undef")
        if binding is None or binding.builtin:
            return f"{key} is not set: amavisd-new's default {value}"
        return f"{key} = {value} ({binding.where})"

    def note(self, kind: str, key: str, text: str, where: str | None = None) -> None:
        """A report line about ``key`` (where: its assignment, unless given)."""
        self.noted[(kind, key)] += 1
        if self.noted[(kind, key)] > MAX_NOTES:
            return  # counted; finish() says how many more
        self.out.notes.append(Note(kind, self.where(key) if where is None else where, key, text))

    def finish(self) -> Carried:
        """The result, with one line for each setting whose notes were too many to list."""
        for (kind, key), count in self.noted.items():
            if count > MAX_NOTES:
                more = f"{count - MAX_NOTES} more like these (only {MAX_NOTES} are listed)"
                self.out.notes.append(Note(kind, self.where(key), key, more))
        return self.out

    def setting(self, section: str, key: str, value: TomlValue, source: str) -> None:
        """A filter.toml key carried over, with the amavisd-new source to name beside it."""
        self.out.settings.append(Setting(section, key, value, source))

    def resolve(self, value: Value) -> Value:
        """A reference's variable's value (marked handled), or the value itself."""
        if isinstance(value, VarRef):
            self.handled.add(value.sigil + value.name)
        return self.machine.resolve(value)

    def maps(self, key: str) -> list[Value]:
        """The tables of an ``@*_maps`` list, references followed."""
        value = self.value(key)
        items = value.items if isinstance(value, ListV) else (value,)
        return [self.resolve(item) for item in items]

    def only_default(self, key: str, why: str) -> None:
        """A setting mail-filter lacks: a note when the configuration sets it to something."""
        self.handled.add(key)
        if not self.set_by_config(key):
            return
        value = self.machine.value(key[0], key[1:])
        if key.startswith("@"):
            items = value.items if isinstance(value, ListV) else ()
            empty = all(isinstance(self.resolve(i), Undef) for i in items)
        else:
            empty = isinstance(value, Undef)
        if empty:
            self.note(NOT_NEEDED, key, f"{show(value)}: off, as with mail-filter")
        else:
            self.note(NOT_CARRIED, key, f"{show(value)}: {why}")

    def first_scalar(self, maps: str) -> Value:
        """The catch-all value of a maps list (per-recipient tables are reported)."""
        return self.catch_all(maps)[0]

    def catch_all(self, maps: str) -> tuple[Value, str]:
        """The catch-all value of a maps list and the variable it came from."""
        listed = self.value(maps)
        unset = maps  # when nothing answers: the first variable that could have
        for item in listed.items if isinstance(listed, ListV) else (listed,):
            origin = item.sigil + item.name if isinstance(item, VarRef) else maps
            if unset == maps and isinstance(item, VarRef) and item.sigil == "$":
                unset = origin
            table = self.resolve(item)
            if isinstance(table, HashV):
                everyone = table.get(".")
                if len(table.entries) > (1 if everyone is not None else 0):
                    self.note(
                        NOT_CARRIED,
                        origin,
                        "per-recipient values: mail-filter has one for everyone",
                    )
                if everyone is not None:
                    return everyone, origin
                continue
            if isinstance(table, (ListV, RegexTable)):
                self.note(NOT_CARRIED, maps, f"{show(table)}: per-recipient values")
                continue
            if isinstance(table, Undef):
                continue
            return table, origin
        return Undef(), unset

    def entries(self, maps: str) -> tuple[list[ListEntry], list[tuple[str, str]]]:
        """A boolean lookup list's entries: (positive, negative)."""
        positives: list[ListEntry] = []
        negatives: list[tuple[str, str]] = []
        listed = self.value(maps)
        for item in listed.items if isinstance(listed, ListV) else (listed,):
            name = item.sigil + item.name if isinstance(item, VarRef) else maps
            table = self.resolve(item)
            for entry, yes, where in self.table_entries(maps, table):
                if not ENTRY_OK.fullmatch(entry) or not entry or not entry.isprintable():
                    self.note(
                        NOT_CARRIED,
                        maps,
                        f"{entry!r}: not an entry mail-filter's lists"
                        " take (user@domain, user@, domain, .domain)",
                        where,
                    )
                elif yes:
                    positives.append(ListEntry(entry, where, name))
                else:
                    negatives.append((entry, where))
            if isinstance(table, (Num, Str)):
                break  # a constant answers every lookup: later tables are never asked
        unique = list({p.entry: p for p in reversed(positives)}.values())[::-1]
        return unique, negatives

    def table_entries(self, maps: str, table: Value) -> Iterator[tuple[str, bool, str]]:
        where = self.where(maps)
        if isinstance(table, HashV):
            for entry in table.entries:
                if isinstance(entry.value, Undef):
                    continue
                yes = truthy(entry.value)
                if yes is None:
                    self.note(
                        NOT_CARRIED,
                        maps,
                        f"{entry.key!r} => {show(entry.value)}",
                        str(entry.where or where),
                    )
                    continue
                source = str(entry.where or where)
                yield entry.key.lower(), yes, source
        elif isinstance(table, ListV):
            origin = f" ({table.origin})" if table.origin else ""
            for item in table.items:
                text = text_of(item)
                source = str(getattr(item, "where", None) or where) + origin
                if text is None:
                    self.note(NOT_CARRIED, maps, f"{show(item)}: not an address", source)
                    continue
                negative = text.startswith("!")
                yield text.removeprefix("!").lower(), not negative, source
        elif isinstance(table, RegexTable):
            for regex, result in table.entries:
                source = str(regex.where or where)
                yes = truthy(result)
                if regex.interpolates or yes is None:
                    self.note(NOT_CARRIED, maps, f"{regex}: not an exact address", source)
                    continue
                try:
                    found, refused = address_entries(regex.pattern, regex.flags)
                except Untranslatable as err:
                    self.note(NOT_CARRIED, maps, f"{regex}: {err}", source)
                    continue
                for why in refused:
                    self.note(NOT_CARRIED, maps, f"{regex}: {why}", source)
                for address in found:
                    yield address, yes, source
        elif isinstance(table, (Num, Str)):
            yes = truthy(table)
            if yes:
                yield ".", True, str(getattr(table, "where", None) or where)
        elif isinstance(table, Undef):
            return
        else:
            self.note(NOT_CARRIED, maps, f"{show(table)}: not a table mail-filter can read")


def covered(entry: str, positives: Collection[str]) -> str | None:
    """A positive entry that lists what the negative ``entry`` excepted, if any."""
    if "@" in entry:
        example = entry + "example.invalid" if entry.endswith("@") else entry
    else:
        example = "someone@" + entry.lstrip(".")
    for key in lookup_keys(example):
        if key != entry and key in positives:
            return key
    return None
