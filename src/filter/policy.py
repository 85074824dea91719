"""Per-recipient policy in amavisd-new's terms: categories, levels, lists, destinies.

This module owns the decision for one recipient given what the scanners
found: the category (virus > banned > unchecked > spam at kill level > spammy
at tag2 > bad header > clean), the destiny (pass, discard, reject, bounce), whether the
message is quarantined, and the marks its copy gets.  Pure: no sockets, no
files (list files are parsed by :mod:`filter.lookup` and passed in).

Lists, per recipient, checked against the envelope sender and the From
addresses (a recipient's own allow entries, added in the quarantine portal,
count as that recipient's whitelist): a whitelisted sender is never spam (its
score is lowered by 10 for the marks); a blacklisted one is always spam; for a spam lover a blocking
spam destiny becomes pass, and for an unchecked lover (amavisd-new's
``@unchecked_lovers_maps``) unchecked mail passes, tagged.  Levels come from
``[policy]``, overridden per recipient domain or address
(``[policy.per_recipient]``, amavisd-new lookup order).  Bounces are never
sent for viruses or for spam at or above the DSN cutoff (forged senders must
not get backscatter): those are discarded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from filter.config import PolicyConfig
from filter.lookup import AddressList, lookup_keys
from filter.marks import Fields, spam_headers, unchecked_headers
from filter.spamd import SpamReport
from filter.verdicts import SEVERITY, Category, Destiny

WHITELIST_ADJUST = -10.0
BLACKLIST_ADJUST = 10.0


@dataclass(frozen=True)
class Findings:
    """What the scanners and checks found in one message."""

    virus: str = ""
    banned: str = ""
    unchecked: str = ""  # what could not be inspected (amavisd-new's CC_UNCHECKED)
    report: SpamReport | None = None
    spam_note: str = ""
    bad_header: str = ""


@dataclass(frozen=True)
class Lists:
    """The three list files (each may be absent)."""

    whitelist: AddressList | None = None
    blacklist: AddressList | None = None
    spam_lovers: AddressList | None = None
    unchecked_lovers: AddressList | None = None


@dataclass(frozen=True)
class Treatment:
    """What happens to the message for one recipient."""

    category: Category
    destiny: Destiny
    quarantine: bool
    headers: Fields = ()
    subject_prefix: str = ""
    score: float | None = None
    reason: str = ""
    no_dsn: bool = False  # a virus, or spam at or above the DSN cutoff: never bounce


def _listed(lst: AddressList | None, senders: Sequence[str], rcpt: str) -> bool:
    return lst is not None and any(lst.contains(s, rcpt) for s in senders if s)


def decide(
    policy: PolicyConfig,
    lists: Lists,
    findings: Findings,
    senders: Sequence[str],
    recipient: str,
    *,
    allowed: bool = False,
) -> Treatment:
    """The treatment of the message for one recipient.

    ``senders`` holds the envelope sender and the From addresses; ``allowed``:
    the recipient allowed one of them ("always accept mail from this sender"),
    which counts as a whitelist entry.
    """
    levels = policy.levels_for(lookup_keys(recipient))
    category = Category.CLEAN
    headers: Fields = ()
    prefix = ""
    score: float | None = None
    reason = ""
    report = findings.report
    if report is not None:
        whitelisted = allowed or _listed(lists.whitelist, senders, recipient)
        blacklisted = not whitelisted and _listed(lists.blacklist, senders, recipient)
        adjust = WHITELIST_ADJUST if whitelisted else BLACKLIST_ADJUST if blacklisted else 0.0
        score = report.score + adjust
        note = "whitelisted" if whitelisted else "blacklisted" if blacklisted else ""
        # A whitelisted sender is never spam, whatever the score; a blacklisted one always is.
        spam_at = math.inf if whitelisted else -math.inf if blacklisted else levels.tag2
        if score >= levels.tag or blacklisted:
            headers = spam_headers(score, report.rules, spam_at, levels.tag, levels.tag2, note)
        if blacklisted or (not whitelisted and score >= levels.kill):
            category, reason = Category.SPAM, f"score {score:.3f}{' ' + note if note else ''}"
        elif score >= spam_at:
            category = Category.SPAMMY
        if score >= spam_at:
            prefix = policy.subject_prefix
    elif findings.spam_note:
        headers = (("X-Spam-Skipped", findings.spam_note),)
    if findings.bad_header and category is Category.CLEAN:
        category, reason = Category.BAD_HEADER, findings.bad_header
    if findings.unchecked and SEVERITY[category] > SEVERITY[Category.UNCHECKED]:
        category, reason = Category.UNCHECKED, findings.unchecked
        headers += unchecked_headers(reason)
        prefix = policy.unchecked_subject_prefix + prefix
    if findings.banned:
        category, reason = Category.BANNED, findings.banned
    if findings.virus:
        category, reason = Category.VIRUS, findings.virus
    no_dsn = category is Category.VIRUS or (
        category is Category.SPAM and score is not None and score >= levels.dsn_cutoff
    )
    destiny = _destiny(policy, category, lists, recipient, no_dsn)
    # Unchecked mail may well be legitimate: never drop it unseen, whatever an older
    # config's quarantine list says (it predates the category).
    quarantine = category in policy.quarantine or (
        category is Category.UNCHECKED and destiny in (Destiny.DISCARD, Destiny.BOUNCE)
    )
    return Treatment(category, destiny, quarantine, headers, prefix, score, reason, no_dsn)


def _destiny(
    policy: PolicyConfig, category: Category, lists: Lists, recipient: str, no_dsn: bool
) -> Destiny:
    if category in (Category.CLEAN, Category.SPAMMY):
        return Destiny.PASS
    destiny = policy.destiny(category)
    lover = lists.spam_lovers is not None and lists.spam_lovers.lists_recipient(recipient)
    if category is Category.SPAM and lover:
        return Destiny.PASS
    if category is Category.UNCHECKED and _lover(lists.unchecked_lovers, recipient):
        return Destiny.PASS  # tagged: subject prefix and X-Virus-Unchecked
    if destiny is Destiny.BOUNCE and no_dsn:
        return Destiny.DISCARD  # no backscatter to forged senders
    return destiny


def _lover(lst: AddressList | None, recipient: str) -> bool:
    return lst is not None and lst.lists_recipient(recipient)
