"""Lists, checks bypassed, and banned attachments, carried from amavisd-new.

This module owns three parts of ``mail-filter import-amavis``'s mapping:
white/black lists and spam and unchecked lovers (``@*_maps`` of hashes,
access lists and ``new_RE`` tables, ``read_hash`` files) into list files;
``@bypass_*_checks_maps`` and the other lovers (which mail-filter lacks but
for "everyone bypasses spam or banned checks"); and ``$banned_filename_re``
(through ``%banned_rules`` and ``@banned_filename_maps``) into ``[banned]``
names and types, with every exception and untranslatable pattern reported.
Pure: it reads through :class:`~filter.amavis_notes.Mapping`.
"""

from __future__ import annotations

from filter.amavis_notes import (
    CHANGED,
    NOT_CARRIED,
    NOT_NEEDED,
    Mapping,
    covered,
)
from filter.amavis_regex import Untranslatable, banned_translation
from filter.amavis_values import (
    HashV,
    ListV,
    RegexTable,
    Str,
    Undef,
    Value,
    show,
    text_of,
    truthy,
)

__all__ = ["carry_banned", "carry_bypass", "carry_lists"]


def carry_lists(m: Mapping) -> None:
    """White/black lists and spam/unchecked lovers into list files."""
    for name, maps in (
        ("whitelist", "@whitelist_sender_maps"),
        ("blacklist", "@blacklist_sender_maps"),
        ("spam_lovers", "@spam_lovers_maps"),
        ("unchecked_lovers", "@unchecked_lovers_maps"),
    ):
        positives, negatives = m.entries(maps)
        listed = {p.entry for p in positives}
        for entry, source in negatives:
            wider = covered(entry, listed)
            if wider:
                m.note(
                    NOT_CARRIED,
                    maps,
                    f"{entry!r} is an exception to {wider!r}:"
                    f" mail-filter's {name} has no exceptions, so it is listed",
                    source,
                )
            else:
                m.note(
                    NOT_NEEDED,
                    maps,
                    f"{entry!r} is a negative entry nothing else lists",
                    source,
                )
        if positives:
            m.out.lists[name] = positives
            tables = ", ".join(dict.fromkeys(p.table for p in positives))
            m.out.list_sources[name] = f"{maps} ({m.where(maps) or 'default'}): {tables}"
    for key, why in (
        ("$per_recip_whitelist_sender_lookup_tables", "per-recipient white lists"),
        ("$per_recip_blacklist_sender_lookup_tables", "per-recipient black lists"),
    ):
        m.only_default(key, f"{why} are not carried; put SENDER RECIPIENT lines in the list file")
    scores = m.value("@score_sender_maps")
    if m.set_by_config("@score_sender_maps") and isinstance(scores, ListV) and scores.items:
        m.note(
            NOT_CARRIED,
            "@score_sender_maps",
            "score changes per sender are not carried:"
            " mail-filter's whitelist counts -10 and never spam, its blacklist +10 and"
            " always spam",
        )


def carry_bypass(m: Mapping) -> None:
    """Checks bypassed and the other lovers: carried only when everyone bypasses."""
    for maps, what in (
        ("@bypass_spam_checks_maps", "spam"),
        ("@bypass_virus_checks_maps", "virus"),
        ("@bypass_banned_checks_maps", "banned"),
        ("@bypass_header_checks_maps", "header"),
        ("@virus_lovers_maps", "virus lovers"),
        ("@banned_files_lovers_maps", "banned lovers"),
        ("@bad_header_lovers_maps", "bad header lovers"),
    ):
        positives, _ = m.entries(maps)
        everyone = any(p.entry == "." for p in positives)
        where = positives[0].source if positives else m.where(maps)
        if what == "spam":
            if everyone:
                m.setting(
                    "spamd",
                    "enabled",
                    False,
                    f"{maps}: every recipient bypasses spam checks ({where})",
                )
                continue
            if m.set_by_config(maps) or positives:
                m.setting("spamd", "enabled", True, f"{maps}: spam checks on")
        if what == "banned" and everyone:
            m.setting(
                "banned",
                "enabled",
                False,
                f"{maps}: every recipient bypasses banned checks ({where})",
            )
            continue
        if not positives:
            if m.set_by_config(maps) and what != "spam":
                m.note(NOT_NEEDED, maps, f"nobody bypasses {what} checks, as with mail-filter")
            continue
        listed = ", ".join(p.entry for p in positives[:5]) + (" ..." if len(positives) > 5 else "")
        listed += " in " + ", ".join(dict.fromkeys(p.table for p in positives))
        if what == "virus":
            why = (
                "mail-filter scans every message with clamd; amavisd-new scanned none"
                if everyone
                else f"mail-filter scans every recipient's mail ({listed})"
            )
        elif what == "spam":
            why = (
                f"mail-filter checks every recipient's mail for spam ({listed}); to let"
                " their spam through, tagged, list them in [lists] spam_lovers"
            )
        elif what == "header":
            why = f"mail-filter checks every recipient's headers ({listed})"
        elif what == "banned":
            why = f"mail-filter checks every recipient's attachments ({listed})"
        else:
            why = f"mail-filter has no {what} ({listed})"
        m.note(NOT_CARRIED, maps, why, where)


def carry_banned(m: Mapping) -> None:
    """$banned_filename_re (through @banned_filename_maps) into [banned] names and types."""
    tables = _banned_tables(m)
    m.only_default(
        "$banned_namepath_re",
        "the new-style banned table ($banned_namepath_re)"
        " is not translated; use [banned] names and types",
    )
    names: list[str] = []
    types: list[str] = []
    sources: list[str] = []
    seen_rules = False
    for table, source in tables:
        seen_rules = True
        sources.append(source)
        for regex, result in table.entries:
            where = str(regex.where or source)
            verdict = truthy(result)
            if verdict is None:
                m.note(NOT_CARRIED, "$banned_filename_re", f"{regex} => {show(result)}", where)
                continue
            if not verdict:
                m.note(
                    NOT_CARRIED,
                    "$banned_filename_re",
                    f"[{regex} => 0]: an exception"
                    " (amavisd-new allowed what matched, and anything inside such"
                    " archives); mail-filter has none and checks every archive's"
                    " members, so it bans more",
                    where,
                )
                continue
            if regex.interpolates:
                m.note(
                    NOT_CARRIED,
                    "$banned_filename_re",
                    f"{regex}: interpolates a variable",
                    where,
                )
                continue
            try:
                found = banned_translation(regex.pattern, regex.flags)
            except Untranslatable as err:
                m.note(NOT_CARRIED, "$banned_filename_re", f"{regex}: {err}", where)
                continue
            names += found.names
            types += found.types
            for why in found.refused:
                m.note(NOT_CARRIED, "$banned_filename_re", f"{regex}: {why}", where)
            if found.notes:
                m.note(CHANGED, "$banned_filename_re", f"{regex}: {'; '.join(found.notes)}", where)
            if found.undecipherable:
                m.note(
                    CHANGED,
                    "$banned_filename_re",
                    f"{regex}: mail-filter puts what it"
                    " cannot decipher (encrypted archives and documents) in the"
                    " unchecked category ([policy] unchecked_destiny) instead",
                    where,
                )
    if not seen_rules:
        m.note(
            CHANGED,
            "$banned_filename_re",
            "amavisd-new banned nothing here;"
            " mail-filter's default banned names and types stay on (set [banned]"
            " enabled = false to ban nothing)",
        )
        return
    if not names and not types:
        m.note(
            CHANGED,
            "$banned_filename_re",
            "no rule carried over: mail-filter's default banned names and types stay on",
        )
        return
    source = "; ".join(dict.fromkeys(sources))
    m.setting("banned", "names", tuple(dict.fromkeys(names)), source)
    m.setting("banned", "types", tuple(dict.fromkeys(types)), source)


def _banned_tables(m: Mapping) -> list[tuple[RegexTable, str]]:
    """The new_RE tables the banned lookups use, with where each came from."""
    rules = m.value("%banned_rules")
    out: list[tuple[RegexTable, str]] = []

    def named(name: str) -> Value:
        if isinstance(rules, HashV) and rules.entries:
            found = rules.get(name)
            return m.resolve(found) if found is not None else Undef()
        if name == "DEFAULT":
            return m.value("$banned_filename_re")
        return Undef()

    def collect(value: Value, source: str) -> None:
        value = m.resolve(value)
        if isinstance(value, Str):
            value = named(value.text)
            source = m.source("$banned_filename_re") if source == "DEFAULT" else source
        if isinstance(value, RegexTable):
            out.append((value, source))
        elif isinstance(value, ListV):
            for item in value.items:
                collect(item, source)
        elif isinstance(value, HashV):
            everyone = value.get(".")
            if len(value.entries) > (1 if everyone is not None else 0):
                m.note(
                    NOT_CARRIED,
                    "@banned_filename_maps",
                    "banned rules per recipient: mail-filter has one set for everyone",
                )
            if everyone is not None:
                collect(everyone, source)
        elif isinstance(value, Undef):
            return
        else:
            m.note(NOT_CARRIED, "@banned_filename_maps", f"{show(value)}: not a banned rules table")

    for table in m.maps("@banned_filename_maps"):
        label = text_of(table) or m.where("@banned_filename_maps")
        collect(table, label if label != "DEFAULT" else "DEFAULT")
    return out
