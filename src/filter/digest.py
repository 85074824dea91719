"""The daily digest: each recipient's one message listing their newly held spam, with release links.

This module owns which entries a run lists for whom (:func:`run`) and the
digest's text (:func:`compose`, pure).  The store (:mod:`filter.qstore`)
remembers what was listed; the links are :mod:`filter.release_links` tokens,
opened by the portal (``{portal_url}/release/{token}``: a confirmation page,
and only its POST releases, :func:`filter.qactions.release_link`); digests go
out through the re-injection listener like notices, unscanned.

Which entries: those of ``[digest] categories`` (spam by default), not
released, received since the run's start, that no earlier digest to that
recipient listed.  The start is where the previous run left off, an hour back
(a message is held a moment after its receipt time is taken, and gateway
hosts' clocks differ a little), or 24 hours back on the first run, or
``--since``.  Marks per (recipient, entry), rather than one "last sent" time
per recipient, are what keep a message from being listed twice or never: the
hour's overlap and a late-indexed entry both stay correct.  A recipient whose
digest fails is not marked, and the next run starts early enough to list their
entries again.

Everything shown from a message (sender, subject) is made inert first
(:func:`inert`): controls, line breaks, bidi and zero-width characters come out
as ``\\x..``/``\\u....`` escapes, length is bounded, and ``://`` and ``www.``
are broken (``[:]//``, ``www[.]``) so a mail client does not turn a spammer's
URL into a link inside a message from the company's own gateway.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import email.utils
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from filter import qactions, release_links
from filter.qstore import Actor, QuarantineStore, Query, Skip, ignore
from filter.quarantine import Entry, QuarantineError

log = logging.getLogger(__name__)

# The audit line's "by" for what a digest run does.
DIGEST_ACTOR = Actor("digest", "local")
FIRST_RUN = 24 * 3600.0
# Overlap with the previous run: receipt time is taken before the hold is written,
# and several gateway hosts' clocks differ by a little.
OVERLAP = 3600.0
PAGE = 1000
MAX_SUBJECT = 200
MAX_SENDER = 120

_LABELS = {
    ("spam",): "as spam",
    ("bad_header",): "for bad headers",
    ("bad_header", "spam"): "as spam or for bad headers",
}
_DEFANG = re.compile(r"://|(?i:\bwww)\.")


def escaped(char: str) -> str:
    """One character as a Python literal writes it: ``\\x1b``, ``\\u202e``, ``\\U0001f600``."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def inert(text: str, limit: int) -> str:
    """``text`` on one line, as data: non-printable characters escaped, at most about ``limit``.

    ``str.isprintable`` is False for C0/C1 controls (CR, LF, NUL, ESC), format
    characters (bidi overrides and isolates, zero-width ones), lone surrogates
    (bytes that were not UTF-8) and separators other than ' '; letters of every
    script stay.  Only the first ``limit`` characters' worth is looked at.
    """
    out: list[str] = []
    size = 0
    for char in text:
        piece = char if char.isprintable() else escaped(char)
        if size + len(piece) > limit:
            out.append("...")
            break
        out.append(piece)
        size += len(piece)
    return _DEFANG.sub(lambda m: "[:]//" if m[0] == "://" else m[0][:-1] + "[.]", "".join(out))


def plausible_recipient(address: str) -> bool:
    """Whether a digest can be addressed to ``address``: plain ASCII user@domain, no controls."""
    local, _, domain = address.rpartition("@")
    return (
        0 < len(address) <= release_links.MAX_RECIPIENT_BYTES
        and address.isascii() and address.isprintable()
        and bool(local) and bool(domain)
        and not any(c in address for c in ' <>()",;:\\[]')
    )  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One listed entry and its release link's token."""

    entry: Entry
    token: str


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def subject_line(count: int, categories: Sequence[str]) -> str:
    """``3 messages held as spam for you``."""
    label = _LABELS.get(tuple(sorted(set(categories))), "")
    noun = "message" if count == 1 else "messages"
    return f"{count} {noun} held {label} for you" if label else f"{count} {noun} held for you"


def compose(
    recipient: str,
    items: Sequence[Item],
    more: int,
    *,
    sender: str,
    portal_url: str,
    hostname: str,
    categories: Sequence[str],
    expires_at: float,
    now: float,
) -> bytes:
    """The digest for ``recipient`` (RFC 5322, text/plain UTF-8): ``items`` and ``more`` unlisted.

    ASCII text goes as 7bit (links on one line); anything else as quoted-printable,
    which every path carries.  ``recipient`` and ``sender`` must be plain
    addresses (:func:`plausible_recipient`); ValueError otherwise.
    """
    total = len(items) + more
    label = _LABELS.get(tuple(sorted(set(categories))), "")
    lines = [
        f"Mail held {label} for {recipient} since the last digest:"
        f" {total} {'message' if total == 1 else 'messages'}.",
        "None of it was delivered to you.",
        "",
        "To have one delivered after all, open its release link: a page asks you",
        "to confirm, then delivers it to your mailbox. Each link works once, until",
        f"{time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(expires_at))}.",
        "",
    ]
    for n, item in enumerate(items, 1):
        entry = item.entry
        mail_from = inert(entry.mail_from, MAX_SENDER) if entry.mail_from else "(no sender)"
        subject = inert(entry.subject, MAX_SUBJECT) if entry.subject else "(no subject)"
        lines += [
            f"{n}. {_when(entry.received_at)}  From: {mail_from}",
            f"   Subject: {subject}",
            f"   Release: {portal_url}/release/{item.token}"
            if item.token
            else "   Held for others too: ask an administrator from the portal to release it.",
            "",
        ]
    if more:
        lines += [f"... and {more} more, not listed here.", ""]
    lines += [
        f"All mail held for you: {portal_url}/",
        "",
        f"-- \nSent automatically by mail-filter on {hostname}; replies are not read.",
    ]
    body = "\n".join(lines) + "\n"
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr(("mail-filter", sender))
    msg["To"] = recipient
    msg["Subject"] = subject_line(total, categories)
    msg["Date"] = email.utils.formatdate(now, localtime=True)
    msg["Message-ID"] = f"<digest.{int(now)}.{secrets.token_hex(6)}@{hostname}>"
    # RFC 3834: no auto-replies to this; Exchange's own header for the same.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    plain = body.isascii() and max(len(line) for line in lines) <= 990
    msg.set_content(body, charset="utf-8", cte="7bit" if plain else "quoted-printable")
    return bytes(msg)


@dataclass(frozen=True)
class Settings:
    """What a run needs besides the store and the sender (from ``[digest]`` and the host)."""

    portal_url: str
    sender: str
    hostname: str
    secret: bytes
    categories: tuple[str, ...] = ("spam",)
    domains: tuple[str, ...] = ()  # () in tests: every domain; the command requires some
    max_items: int = 100
    link_days: float = 7.0
    # Marks of mail received longer ago are forgotten (it has expired from the quarantine).
    keep_marks_days: float = 31.0


@dataclass
class Summary:
    """What a run did, for its one summary line and its exit code."""

    start: float
    recipients: int = 0
    sent: int = 0
    listed: int = 0
    failed: int = 0
    skipped: int = 0

    def line(self, dry_run: bool = False) -> str:
        """``digest: 2 sent, 0 failed, 0 skipped; 5 new message(s) for 2 recipient(s) held ...``."""
        verb = "would send" if dry_run else "sent"
        return (
            f"digest: {self.sent} {verb}, {self.failed} failed, {self.skipped} skipped;"
            f" {self.listed} new message(s) for {self.recipients} recipient(s)"
            f" held since {_when(self.start)}"
        )


async def _pending(
    store: QuarantineStore, categories: Sequence[str], start: float, now: float, on_skip: Skip
) -> dict[str, list[Entry]]:
    """Unreleased entries of ``categories`` received in [start, now), by lower-cased recipient."""
    found: dict[str, list[Entry]] = {}
    for category in categories:
        query = Query(category=category, since=start, until=now, oldest_first=True)
        cursor: str | None = None
        while True:
            page = await asyncio.to_thread(store.search, query, PAGE, cursor, on_skip)
            for entry in page.entries:
                if entry.released:
                    continue
                for rcpt in dict.fromkeys(r.lower() for r in entry.recipients):
                    found.setdefault(rcpt, []).append(entry)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return found


async def run(
    store: QuarantineStore,
    sender: qactions.Sender,
    settings: Settings,
    *,
    now: float | None = None,
    since_hours: float | None = None,
    dry_run: bool = False,
    report: Callable[[str], None] = lambda _line: None,
    on_skip: Skip = ignore,
) -> Summary:
    """Send each recipient with new held mail one digest; mark what each listed.

    ``report`` gets one line per recipient in a dry run (which sends, marks
    and records nothing).  Raises QuarantineError only when the store cannot be
    searched at all; a digest that cannot be sent or recorded is counted in
    ``failed`` and tried again by the next run.
    """
    now = time.time() if now is None else now
    if since_hours is not None:
        start = now - since_hours * 3600
    else:
        previous = await asyncio.to_thread(store.digest_start)
        start = now - FIRST_RUN if previous is None else min(previous, now) - OVERLAP
    summary = Summary(start)
    pending = await _pending(store, settings.categories, start, now, on_skip)
    expires_at = int(now + settings.link_days * 86400)
    retry_from = now
    for rcpt, entries in sorted(pending.items()):
        done = await asyncio.to_thread(store.digest_marks, rcpt, [e.id for e in entries])
        new = sorted((e for e in entries if e.id not in done), key=lambda e: -e.received_at)
        if not new:
            continue
        summary.recipients += 1
        summary.listed += len(new)
        if not plausible_recipient(rcpt):
            summary.skipped += 1
            log.warning("digest: %r is not an address a digest can go to; skipped", rcpt[:300])
            continue
        domain = rcpt.rpartition("@")[2].lower().rstrip(".")
        if settings.domains and domain not in settings.domains:
            summary.skipped += 1  # outside mail held for an inside sender: no digest
            log.info("digest: %s is outside [digest] domains; skipped", rcpt)
            continue
        if dry_run:
            summary.sent += 1
            report(f"{rcpt}: {len(new)} message(s)")
            continue
        if not await _send(store, sender, settings, rcpt, new, expires_at, now):
            summary.failed += 1
            retry_from = min(retry_from, new[-1].received_at)
            continue
        summary.sent += 1
    if not dry_run:
        try:
            await asyncio.to_thread(
                store.finish_digest, retry_from, now - settings.keep_marks_days * 86400
            )
        except QuarantineError as err:
            summary.failed += 1
            log.error("digest: where the next run starts was not recorded: %s", err)
    return summary


async def _send(
    store: QuarantineStore,
    sender: qactions.Sender,
    settings: Settings,
    rcpt: str,
    new: Sequence[Entry],
    expires_at: int,
    now: float,
) -> bool:
    """Compose, send and mark one recipient's digest; one audit line; True if it went out."""
    listed = new[: settings.max_items]
    # No link for mail held for several recipients: one recipient's release would use
    # up the others' copy (qactions.release_link refuses it, as the portal does).
    items = [
        Item(e, release_links.make_token(settings.secret, e.id, rcpt, expires_at))
        if len(e.recipients) == 1
        else Item(e, "")
        for e in listed
    ]
    data = compose(
        rcpt, items, len(new) - len(listed), sender=settings.sender,
        portal_url=settings.portal_url, hostname=settings.hostname,
        categories=settings.categories, expires_at=expires_at, now=now,
    )  # fmt: skip
    delivery = await sender.send(settings.sender, [rcpt], data)
    if delivery.error or delivery.data is None or not delivery.data.ok:
        reply = delivery.data or delivery.recipients.get(rcpt)
        why = delivery.error or (str(reply) if reply is not None else "refused")
        qactions.audit("digest", DIGEST_ACTOR, "failed", to=rcpt, held=len(new), why=why)
        log.warning("digest to %s not sent (%s); the next run tries again", rcpt, why)
        return False
    try:
        await asyncio.to_thread(
            store.mark_digested, rcpt, [(e.id, e.received_at) for e in new], now
        )
    except QuarantineError as err:
        qactions.audit("digest", DIGEST_ACTOR, "unrecorded", to=rcpt, held=len(new), why=str(err))
        log.error("digest to %s sent but not recorded (%s); the next run sends it again", rcpt, err)
        return False
    qactions.audit("digest", DIGEST_ACTOR, to=rcpt, listed=len(listed), held=len(new))
    return True
