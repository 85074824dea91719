"""amavisd-new's settings, as mail-filter's: what carries over, what does not, and why.

This module owns the meaning side of ``mail-filter import-amavis``: given the
variables of an evaluated amavisd-new configuration (:class:`~filter.amavis_perl.Machine`,
amavisd-new's own defaults included), it decides each ``filter.toml`` key it
can (levels, destinies, quarantined categories, subject tags, banned names and
types, white/black lists and spam lovers, notice recipients, and the
listen/re-inject/clamd/spamd addresses), with the amavisd-new source of each,
and a :class:`Note` for every setting it cannot carry, does not need, or carries
with a difference.  Every variable the configuration assigns ends up either
carried or in a note: nothing is dropped silently.  Pure: no files are read or
written here (:mod:`filter.amavis_import` does that).
"""

from __future__ import annotations

import re

from filter.amavis_known import (
    DESTINIES,
    DESTINY_NAMES,
    LEVEL_LIMIT,
    NOT_NEEDED_REASONS,
    OFF_UNLESS,
    ONLY_THROUGH_MAPS,
    OTHER_REASONS,
)
from filter.amavis_lists import carry_banned, carry_bypass, carry_lists
from filter.amavis_notes import (
    CHANGED,
    NOT_CARRIED,
    NOT_NEEDED,
    Carried,
    Mapping,
    Note,
    is_address,
)
from filter.amavis_perl import Machine
from filter.amavis_values import (
    HashV,
    ListV,
    Num,
    Str,
    Undef,
    Unknown,
    Value,
    VarRef,
    number_of,
    show,
    text_of,
    truthy,
)
from filter.config import CATEGORIES

__all__ = ["carry"]


def carry(machine: Machine) -> Carried:
    """What of the evaluated configuration carries over, and a note for everything else."""
    m = Mapping(machine)
    for step in (
        listen,
        scanners,
        levels,
        destinies,
        quarantine,
        marks,
        carry_lists,
        carry_bypass,
        carry_banned,
        notices,
        policy_banks,
        problems,
        leftovers,
    ):
        step(m)
    return m.finish()


def listen(m: Mapping) -> None:
    """Where Postfix hands mail over and gets it back; the host name in our headers."""
    port = m.value("$inet_socket_port")
    bind = m.value("$inet_socket_bind")
    if m.set_by_config("$inet_socket_port"):
        ports = port.items if isinstance(port, ListV) else (port,)
        first = number_of(ports[0]) if ports else None
        host = text_of(bind) if isinstance(bind, Str) else "127.0.0.1"
        if isinstance(bind, ListV):
            host = text_of(bind.items[0]) if bind.items else "127.0.0.1"
        if first is None or not 0 < first < 65536 or not host:
            m.note(NOT_CARRIED, "$inet_socket_port", f"{show(port)}: not a port number")
        else:
            host = host.strip("[]")
            shown = f"[{host}]" if ":" in host else host
            m.setting("server", "listen", f"{shown}:{int(first)}", m.source("$inet_socket_port"))
            if len(ports) > 1:
                others = ", ".join(show(p) for p in ports[1:])
                m.note(
                    NOT_CARRIED,
                    "$inet_socket_port",
                    f"mail-filter listens on one port"
                    f" ({int(first)}); the others ({others}) chose policy banks",
                )
    for key in ("$forward_method", "$notify_method"):
        text = text_of(m.value(key)) or ""
        found = re.fullmatch(r"smtp:\[?([^\]\s]+?)\]?:(\d{1,5})", text)
        if key == "$forward_method" and m.set_by_config(key):
            if found:
                host = found.group(1)
                shown = f"[{host}]" if ":" in host else host
                m.setting("reinject", "address", f"{shown}:{found.group(2)}", m.source(key))
            else:
                m.note(NOT_CARRIED, key, f"{text!r}: only smtp:[host]:port is carried")
        elif key == "$notify_method" and m.set_by_config(key):
            forward = text_of(m.machine.value("$", "forward_method"))
            if text != forward:
                m.note(
                    CHANGED,
                    key,
                    "mail-filter sends notices through the re-injection"
                    " listener ([reinject] address) too",
                )
    hostname = m.value("$myhostname")
    if isinstance(hostname, Str) and m.set_by_config("$myhostname") and hostname.text:
        m.setting("server", "hostname", hostname.text, m.source("$myhostname"))
    elif m.set_by_config("$myhostname"):
        m.note(
            NOT_NEEDED,
            "$myhostname",
            "computed at run time; mail-filter's server.hostname \"\" is this host's name as well",
        )


def scanners(m: Mapping) -> None:
    """clamd's socket from @av_scanners, and what spamd is given at most."""
    scanners = m.value("@av_scanners")
    items = scanners.items if isinstance(scanners, ListV) else ()
    others: list[str] = []
    clamd: str | None = None
    for item in items:
        if not isinstance(item, ListV) or not item.items:
            continue
        name = text_of(item.items[0]) or "?"
        if "clamd" in name.lower() and len(item.items) > 2 and isinstance(item.items[2], ListV):
            args = item.items[2].items
            socket = text_of(args[1]) if len(args) > 1 else None
            clamd = socket
        else:
            others.append(name)
    if clamd:
        address = clamd if re.fullmatch(r"[^/\s]+:\d+", clamd) else f"unix:{clamd}"
        if clamd.startswith("/"):
            m.setting(
                "clamd",
                "address",
                address,
                m.source("@av_scanners", f"[... 'ClamAV-clamd' ... {clamd!r} ...]"),
            )
    elif m.set_by_config("@av_scanners"):
        m.note(
            NOT_CARRIED,
            "@av_scanners",
            "no ClamAV-clamd entry: mail-filter scans with clamd only ([clamd] address)",
        )
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        m.note(
            NOT_NEEDED,
            "@av_scanners",
            f"mail-filter scans with clamd only; the other scanners listed ({shown}) are not used",
        )
    m.value("@av_scanners_backup")
    if m.set_by_config("@av_scanners_backup"):
        m.note(
            NOT_NEEDED,
            "@av_scanners_backup",
            "mail-filter has no backup scanner: with clamd down, mail waits (451) until it answers",
        )
    limit = m.value("$sa_mail_body_size_limit")
    size = number_of(limit)
    if m.set_by_config("$sa_mail_body_size_limit"):
        if size is not None and 0 <= size < 2**40:
            m.setting("spamd", "max_size", int(size), m.source("$sa_mail_body_size_limit"))
        else:
            m.note(NOT_CARRIED, "$sa_mail_body_size_limit", f"{show(limit)}: not a size")


def levels(m: Mapping) -> None:
    """Tag, tag2, kill and DSN cutoff levels, and per-recipient ones from hashes."""
    per_recipient: dict[str, dict[str, float]] = {}
    per_sources: list[str] = []
    for level, key, maps, default, undefined, meaning in (
        (
            "tag",
            "tag_level",
            "@spam_tag_level_maps",
            "$sa_tag_level_deflt",
            -LEVEL_LIMIT,
            "spam headers on every message",
        ),
        (
            "tag2",
            "tag2_level",
            "@spam_tag2_level_maps",
            "$sa_tag2_level_deflt",
            LEVEL_LIMIT,
            "never spammy",
        ),
        (
            "kill",
            "kill_level",
            "@spam_kill_level_maps",
            "$sa_kill_level_deflt",
            LEVEL_LIMIT,
            "never spam",
        ),
        (
            "dsn_cutoff",
            "dsn_cutoff_level",
            "@spam_dsn_cutoff_level_maps",
            "$sa_dsn_cutoff_level",
            LEVEL_LIMIT,
            "no cutoff: bounces whatever the score",
        ),
    ):
        global_value: float | None = None
        global_source = ""
        tables = 0
        for table in m.maps(maps):
            if isinstance(table, (Num, Str)):
                number = number_of(table)
                if number is not None:
                    global_value = number
                    ref = m.machine.value("@", maps[1:])
                    global_source = _level_source(m, ref, default, table)
                break
            if isinstance(table, Undef):
                continue
            if isinstance(table, HashV):
                tables += 1
                per_sources.append(f"{maps} ({m.where(maps)})")
                for entry in table.entries:
                    number = number_of(entry.value)
                    if isinstance(entry.value, Undef):
                        continue
                    if number is None:
                        m.note(
                            NOT_CARRIED,
                            maps,
                            f"{entry.key!r} => {show(entry.value)}: not a level",
                            str(entry.where or ""),
                        )
                        continue
                    per_recipient.setdefault(entry.key.lower(), {})[level] = _bounded(
                        m, number, maps
                    )
                continue
            m.note(
                NOT_CARRIED,
                maps,
                f"{show(table)}: only hashes of recipient => level and one default carry over",
            )
        if tables > 1:
            m.note(
                CHANGED,
                maps,
                "several hashes: amavisd-new took the first hash with"
                " an entry; mail-filter takes the most specific entry of all",
            )
        if global_value is None:
            m.setting("policy", key, undefined, f"{default} is undef: {meaning} in amavisd-new")
        else:
            m.setting("policy", key, _bounded(m, global_value, default), global_source)
    if per_recipient:
        m.setting(
            "policy",
            "per_recipient",
            per_recipient,
            "hashes of recipient => level in " + ", ".join(dict.fromkeys(per_sources)),
        )
    for key, why in (
        ("$sa_tag3_level_deflt", "mail-filter has no third level (tag3)"),
        ("@spam_tag3_level_maps", "mail-filter has no third level (tag3)"),
        ("$sa_quarantine_cutoff_level", "mail-filter quarantines spam whatever its score"),
        (
            "@spam_quarantine_cutoff_level_maps",
            "mail-filter quarantines spam whatever its score",
        ),
        ("$sa_crediblefrom_dsn_cutoff_level", "mail-filter has one DSN cutoff"),
        ("@spam_crediblefrom_dsn_cutoff_level_maps", "mail-filter has one DSN cutoff"),
        ("@spam_crediblefrom_dsn_cutoff_level_bysender_maps", "mail-filter has one DSN cutoff"),
        ("@spam_dsn_cutoff_level_bysender_maps", "mail-filter's DSN cutoff is per recipient"),
        ("@spam_notifyadmin_cutoff_level_maps", "mail-filter notifies for every held spam"),
    ):
        m.only_default(key, why)


def _level_source(m: Mapping, maps: Value, default: str, table: Value) -> str:
    """Where a level's default came from: its $sa_*_deflt, or a constant in the maps."""
    items = maps.items if isinstance(maps, ListV) else ()
    refers = any(isinstance(i, VarRef) and i.sigil + i.name == default for i in items)
    if refers:
        return m.source(default)
    return f"{show(table)} in the maps list"


def _bounded(m: Mapping, number: float, key: str) -> float:
    """A level within [policy]'s bounds (beyond them, the bound means the same)."""
    if abs(number) > LEVEL_LIMIT:
        m.note(
            CHANGED,
            key,
            f"{number:g} is beyond mail-filter's bounds; it becomes"
            f" {LEVEL_LIMIT if number > 0 else -LEVEL_LIMIT:g}, which means the same",
        )
        return LEVEL_LIMIT if number > 0 else -LEVEL_LIMIT
    return float(number)


def destinies(m: Mapping) -> None:
    """What becomes of each category: $final_*_destiny (D_PASS, D_DISCARD...)."""
    m.only_default("%final_destiny_maps_by_ccat", "per-category destiny code")
    m.only_default("%final_destiny_by_ccat", "per-category destiny code")
    for category, key in (
        ("virus", "$final_virus_destiny"),
        ("banned", "$final_banned_destiny"),
        ("unchecked", "$final_unchecked_destiny"),
        ("spam", "$final_spam_destiny"),
        ("bad_header", "$final_bad_header_destiny"),
    ):
        value = m.value(key)
        number = number_of(value)
        name = DESTINY_NAMES.get(number, show(value)) if number is not None else show(value)
        source = m.source(key, name)
        destiny = DESTINIES.get(number) if number is not None else None
        warn = {"banned": "$warnbannedsender", "bad_header": "$warnbadhsender"}.get(category)
        if warn and destiny == "discard" and truthy(m.value(warn)):
            destiny = "bounce"
            source += f"; {warn} is on, so amavisd-new bounced"
        if warn and m.set_by_config(warn):
            m.note(NOT_NEEDED, warn, f"{show(m.value(warn))}: read with {key} (see above)")
        if destiny is None:
            why = "mail-filter has no tempfail destiny" if number == -4.0 else "not a destiny"
            m.note(
                NOT_CARRIED,
                key,
                f"{name}: {why}; mail-filter's default {category}_destiny applies",
            )
            continue
        m.setting("policy", f"{category}_destiny", destiny, source)
    for key in ("$warnvirussender", "$warnspamsender"):
        m.only_default(key, "mail-filter never tells senders of viruses or spam")


def quarantine(m: Mapping) -> None:
    """Which categories are held: a *_quarantine_to with a way to deliver it."""
    held: list[str] = []
    held_by: list[str] = []
    why_not: list[str] = []
    directory = m.value("$QUARANTINEDIR")
    for category, to_key, method_key in (
        ("virus", "$virus_quarantine_to", "$virus_quarantine_method"),
        ("banned", "$banned_quarantine_to", "$banned_files_quarantine_method"),
        ("unchecked", "$unchecked_quarantine_to", "$unchecked_quarantine_method"),
        ("spam", "$spam_quarantine_to", "$spam_quarantine_method"),
        ("bad_header", "$bad_header_quarantine_to", "$bad_header_quarantine_method"),
    ):
        maps = f"@{to_key[1:]}_maps"
        target, origin = m.catch_all(maps)
        method = m.value(method_key)
        to_text = text_of(target)
        method_text = text_of(method)
        if isinstance(target, Unknown) or isinstance(method, Unknown):
            unknown = target if isinstance(target, Unknown) else method
            m.note(
                NOT_CARRIED,
                origin,
                f"whether {category} mail was quarantined is not known: {show(unknown)}",
            )
            continue
        if not to_text:
            why_not.append(f"{category} ({origin} is {show(target)})")
            continue
        if "@" not in to_text:
            if not method_text:
                why_not.append(f"{category} ({method_key} is {show(method)})")
                continue
            if method_text.startswith("local:") and not text_of(directory):
                why_not.append(f"{category} ($QUARANTINEDIR is {show(directory)})")
                continue
        held.append(category)
        held_by.append(f"{origin} = {to_text!r}")
        if "@" in to_text:
            m.note(
                CHANGED,
                origin,
                f"amavisd-new sent {category} mail to {to_text};"
                " mail-filter holds it in its own quarantine ([quarantine])",
            )
        elif method_text and not method_text.startswith("local:"):
            m.note(
                CHANGED,
                method_key,
                f"{method_text}: mail-filter holds {category} mail"
                " in its own quarantine ([quarantine]: a directory or PostgreSQL)",
            )
    source = f"held: {', '.join(held_by)}" if held else "nothing held"
    if why_not:
        source += "; not: " + ", ".join(why_not)
    m.setting("policy", "quarantine", tuple(held), source)
    if m.set_by_config("$QUARANTINEDIR") and text_of(directory):
        m.note(
            NOT_NEEDED,
            "$QUARANTINEDIR",
            f"{show(directory)}: mail-filter keeps its own"
            " quarantine ([quarantine] directory); mail already held there stays"
            " there",
        )
    elif m.set_by_config("$QUARANTINEDIR"):
        m.note(
            NOT_NEEDED,
            "$QUARANTINEDIR",
            f"{show(directory)}: no local quarantine (carried in [policy] quarantine)",
        )
    for key in ("$clean_quarantine_method", "$archive_quarantine_method"):
        m.only_default(key, "mail-filter keeps no copy of clean mail")
    m.only_default("$spam_quarantine_bysender_to", "mail-filter quarantines by recipient")
    m.only_default("@spam_quarantine_bysender_to_maps", "mail-filter quarantines by recipient")


def marks(m: Mapping) -> None:
    """The subject tags and whether a sender's X-Spam-* fields are removed."""
    tag = m.first_scalar("@spam_subject_tag2_maps")
    modifies = m.value("$sa_spam_modifies_subj")
    if isinstance(tag, Unknown):
        m.note(
            NOT_CARRIED,
            "$sa_spam_subject_tag",
            f"{show(tag)}; mail-filter's default subject_prefix applies",
        )
    elif m.set_by_config("$sa_spam_modifies_subj") and truthy(modifies) is False:
        m.setting("policy", "subject_prefix", "", m.source("$sa_spam_modifies_subj"))
    else:
        text = text_of(tag) or ""
        m.handled.add("$sa_spam_subject_tag")
        m.setting("policy", "subject_prefix", text, m.source("$sa_spam_subject_tag"))
    m.only_default("$sa_spam_subject_tag1", "mail-filter marks the subject at tag2 only")
    m.only_default("@spam_subject_tag_maps", "mail-filter marks the subject at tag2 only")
    m.only_default("@spam_subject_tag3_maps", "mail-filter has no third level (tag3)")
    m.only_default("@spam_modifies_subj_maps", "mail-filter marks every recipient's copy")
    unchecked = m.value("$undecipherable_subject_tag")
    m.setting(
        "policy",
        "unchecked_subject_prefix",
        text_of(unchecked) or "",
        m.source("$undecipherable_subject_tag"),
    )
    remove = m.first_scalar("@remove_existing_spam_headers_maps")
    m.handled.add("$remove_existing_spam_headers")
    decided = truthy(remove)
    if decided is None:
        m.note(NOT_CARRIED, "$remove_existing_spam_headers", f"{show(remove)}")
    else:
        m.setting(
            "policy",
            "remove_existing_spam_headers",
            decided,
            m.source("$remove_existing_spam_headers"),
        )


def notices(m: Mapping) -> None:
    """Who hears of held mail: the $*_admin addresses and their categories."""
    by_category: dict[str, list[str]] = {}
    sources: dict[str, list[str]] = {}  # where the admin came from -> its categories
    unknown: dict[str, list[str]] = {}  # variable -> categories whose admin is not known
    for category, maps in (
        ("virus", "@virus_admin_maps"),
        ("banned", "@banned_admin_maps"),
        ("unchecked", "@virus_admin_maps"),
        ("spam", "@spam_admin_maps"),
        ("bad_header", "@bad_header_admin_maps"),
    ):
        admin, origin = m.catch_all(maps)
        if isinstance(admin, Unknown):
            unknown.setdefault(origin, []).append(category)
            continue
        text = text_of(admin)
        if not text:
            if m.set_by_config(origin):
                sources.setdefault(m.source(origin), []).append(category)
            continue
        addresses = [a.strip() for a in re.split(r"[,\s]+", text) if a.strip()]
        good = [a for a in addresses if is_address(a)]
        for bad in (a for a in addresses if not is_address(a)):
            m.note(NOT_CARRIED, origin, f"{bad!r}: not a mail address")
        if good:
            by_category[category] = good
            sources.setdefault(m.source(origin), []).append(category)
    for origin, categories_unknown in unknown.items():
        value = m.machine.value(origin[0], origin[1:])
        reason = value.reason if isinstance(value, Unknown) else show(value)
        m.note(
            NOT_CARRIED,
            origin,
            f"notices of {', '.join(categories_unknown)} went here, and it is not known: {reason}",
        )
    admins = tuple(dict.fromkeys(a for found in by_category.values() for a in found))
    categories = tuple(c for c in CATEGORIES if c in by_category)
    if sources:
        source = "; ".join(f"{', '.join(c)}: {where}" for where, c in sources.items())
    elif unknown:
        source = f"{', '.join(unknown)}: not known (see the end of this file)"
    else:
        source = "no $*_admin is set: amavisd-new sent no notices"
    m.setting("notices", "admins", admins, source)
    if categories:
        m.setting("notices", "categories", categories, source)
        if len({tuple(v) for v in by_category.values()}) > 1:
            m.note(
                CHANGED,
                "$virus_admin",
                "different admins per category in amavisd-new;"
                " with mail-filter every admin listed gets notices of every category"
                " listed",
                "",
            )
    sender = m.value("$mailfrom_notify_admin")
    text = text_of(sender)
    if text and is_address(text):
        m.setting("notices", "sender", text, m.source("$mailfrom_notify_admin"))
    elif m.set_by_config("$mailfrom_notify_admin") and not isinstance(sender, Undef):
        m.note(
            CHANGED,
            "$mailfrom_notify_admin",
            f"{show(sender)}: mail-filter's notices"
            " come from [notices] sender (default mail-filter@<hostname>)",
        )
    m.only_default("$newvirus_admin", "mail-filter does not tell new viruses apart")
    m.only_default("@newvirus_admin_maps", "mail-filter does not tell new viruses apart")
    for key in (
        "$hdrfrom_notify_admin",
        "$hdrfrom_notify_sender",
        "$hdrfrom_notify_recip",
        "$mailfrom_notify_sender",
        "$mailfrom_notify_recip",
        "$mailfrom_notify_spamadmin",
        "$hdrfrom_notify_spamadmin",
    ):
        if m.set_by_config(key):
            m.handled.add(key)
            m.note(NOT_NEEDED, key, "mail-filter's notices have one sender ([notices] sender)")


def policy_banks(m: Mapping) -> None:
    """Policy banks and what chooses them: mail-filter has one policy."""
    banks = m.value("%policy_bank")
    kinds: dict[str, str] = {}
    for entry in banks.entries if isinstance(banks, HashV) else ():
        bank = entry.value
        keys = [e.key for e in bank.entries] if isinstance(bank, HashV) else []
        where = str(entry.where or m.where("%policy_bank"))
        if keys and set(keys) <= {"protocol", "auth_required_release", "inet_acl"}:
            kinds[entry.key] = NOT_NEEDED
            why = (
                f"{entry.key!r} serves amavisd-release (AM.PDP); mail-filter releases with"
                " `mail-filter quarantine release` and its portal"
            )
            m.note(NOT_NEEDED, "%policy_bank", why, where)
            continue
        kinds[entry.key] = NOT_CARRIED
        shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
        why = (
            f"{entry.key!r} ({shown or show(bank)}): mail-filter has one policy for all mail;"
            " merge what matters into filter.toml by hand"
        )
        m.note(NOT_CARRIED, "%policy_bank", why, where)
    for key in ("%interface_policy", "%client_ipaddr_policy"):
        chooser = m.value(key)
        for choice in chooser.entries if isinstance(chooser, HashV) else ():
            name = text_of(choice.value) or show(choice.value)
            why = f"{choice.key!r} => {name!r} chooses a policy bank (see %policy_bank)"
            m.note(kinds.get(name, NOT_CARRIED), key, why, str(choice.where or m.where(key)))
    for key in ("@client_ipaddr_policy", "@author_to_policy_bank_maps",
                "@virus_name_to_policy_bank_maps"):  # fmt: skip
        m.only_default(key, "chooses policy banks, which mail-filter does not have")


def problems(m: Mapping) -> None:
    """Statements not read, and calls made for their effect (templates)."""
    for problem in m.machine.problems:
        m.out.notes.append(
            Note(
                NOT_CARRIED,
                str(problem.where),
                problem.subject or "(statement)",
                f"not read: {problem.reason}",
            )
        )
    for name, where in m.machine.calls:
        if name in ("read_l10n_templates", "read_text"):
            m.out.notes.append(
                Note(NOT_NEEDED, str(where), f"{name}(...)", "mail-filter writes its own notices")
            )
        elif name in ("read_cidr", "dkim_key"):
            m.out.notes.append(
                Note(
                    NOT_CARRIED,
                    str(where),
                    f"{name}(...)",
                    OTHER_REASONS.get(name, "not carried"),
                )
            )


def leftovers(m: Mapping) -> None:
    """Every variable assigned that no step above looked at: why it does not matter."""
    secret = m.machine.made_from(k for k in m.machine.vars if _SECRET.search(k))
    for key, binding in m.machine.vars.items():
        if binding.builtin or key in m.handled or binding.where.path == "--var":
            continue
        name = key[1:]
        if key in NOT_NEEDED_REASONS or name in NOT_NEEDED_REASONS:
            why = NOT_NEEDED_REASONS.get(key) or NOT_NEEDED_REASONS[name]
            m.note(NOT_NEEDED, key, why)
            continue
        off_reason = OFF_UNLESS.get(key) or OFF_UNLESS.get(name)
        if off_reason is not None:
            value = binding.value
            empty = isinstance(value, (ListV, HashV)) and not (
                value.items if isinstance(value, ListV) else value.entries
            )
            if truthy(value) is False or empty:
                m.note(
                    NOT_NEEDED,
                    key,
                    f"{show(value)}: off, nothing to carry (on, it would not carry: {off_reason})",
                )
            else:
                m.note(NOT_CARRIED, key, f"{_shown(secret, key, value)}: {off_reason}")
            continue
        if ONLY_THROUGH_MAPS.fullmatch(name):
            shown = _shown(secret, key, binding.value)
            why = f"{shown}: not used, no @*_maps list refers to it (nor did amavisd-new read it)"
            m.note(NOT_NEEDED, key, why)
            continue
        reason = OTHER_REASONS.get(key) or OTHER_REASONS.get(name)
        if reason is not None:
            m.note(NOT_CARRIED, key, f"{_shown(secret, key, binding.value)}: {reason}")
            continue
        # Its value is never shown: an unknown variable may hold anything (a password).
        m.note(
            NOT_CARRIED,
            key,
            "(value not shown): not a setting this import knows; nothing in filter.toml"
            " comes from it",
        )


_SECRET = re.compile(r"dsn|ldap|passw|secret|key|token|auth", re.I)


def _shown(secret: set[str], key: str, value: Value) -> str:
    """A value for the report, unless it may hold a password: a key named like one (SQL
    DSNs, LDAP binds), or in ``secret``, the variables such keys were made from
    (``$dbpass`` in ``@lookup_sql_dsn = ([..., $dbpass])``)."""
    return "(value not shown)" if key in secret or _SECRET.search(key) else show(value)
