"""What a front end does with held mail, each action with its one audit line.

This module owns the actions the CLI and the portal share on top of any
:class:`filter.qstore.QuarantineStore`: show, release (claim, re-inject,
confirm), delete (one or many), expire, release requests, allow entries,
reindex.  Each writes exactly one line on the ``filter.audit`` logger, whether
it succeeded or was refused:

    quarantine action=release id=20261201-... by=alice@example.com from=203.0.113.5 \
to=alice@example.com result=ok

Who (``by``), what (``action``, ``id``), from which address (``from``), and the
outcome; never a message's body, a subject or a password.  Values that are not
plain tokens are JSON-quoted (``\\u``-escaped), so a hostile address cannot
forge a second line or another field.  Listing and searching are not audited:
they show metadata the actor is entitled to, and the portal calls them on every
page; ``show`` (a message's content) is.

The store's blocking calls run in a thread here (``asyncio.to_thread``), so
the portal's event loop never waits on SQLite or fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from filter import release_links
from filter.qstore import (
    Actor,
    AllowEntry,
    QuarantineStore,
    Release,
    ReleaseRequest,
    Skip,
    ignore,
)
from filter.quarantine import Entry, QuarantineError
from filter.smtp_out import Delivery

audit_log = logging.getLogger("filter.audit")

_TOKEN = re.compile(r"[A-Za-z0-9@._:+,/=-]{1,200}")
_IDS = re.compile(r"[0-9a-f-]{1,64}(?:,[0-9a-f-]{1,64})*")
# The ids a bulk delete names (the portal's is at most 1000): each one, never cut to 500.
MAX_IDS_CHARS = 66_000


def _value(value: object, limit: int = 500) -> str:
    text = str(value)
    return text if _TOKEN.fullmatch(text) else json.dumps(text[:limit])


def _ids(value: object) -> str:
    text = str(value)
    if len(text) <= MAX_IDS_CHARS and _IDS.fullmatch(text):
        return text
    return _value(text, MAX_IDS_CHARS)


def audit(action: str, actor: Actor, result: str = "ok", **fields: object) -> None:
    """Write one audit line: ``quarantine action=... by=... from=... <fields> result=...``."""
    parts = [f"action={_value(action)}"]
    if "id" in fields:
        parts.append(f"id={_ids(fields.pop('id'))}")
    parts += [f"by={_value(actor.name)}", f"from={_value(actor.address)}"]
    parts += [f"{name}={_value(value)}" for name, value in fields.items() if value is not None]
    parts.append(f"result={_value(result)}")
    audit_log.info("quarantine %s", " ".join(parts))


def _refused(action: str, actor: Actor, err: QuarantineError, **fields: object) -> None:
    audit(action, actor, "refused", **fields, why=str(err))


class Sender(Protocol):
    """Delivers a message with an envelope (the re-injection client, or a fake)."""

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> Delivery:
        """Deliver; never raises for SMTP or network trouble (see ``Delivery.error``)."""
        ...


def show(store: QuarantineStore, entry_id: str, actor: Actor) -> tuple[Entry, bytes]:
    """An entry's metadata and its message, both read before either is returned."""
    try:
        entry = store.get(entry_id)
        message = store.message(entry.id)
    except QuarantineError as err:
        _refused("show", actor, err, id=entry_id)
        raise
    audit("show", actor, id=entry.id)
    return entry, message


@dataclass(frozen=True)
class Released:
    """A finished release: the record and what the server said about refused recipients."""

    entry: Entry
    release: Release
    refused: list[str]


async def release(
    store: QuarantineStore,
    sender: Sender,
    entry_id: str,
    actor: Actor,
    to: Sequence[str] | None = None,
    *,
    retry_unconfirmed: bool = False,
) -> Released:
    """Claim, re-inject with the original envelope (or to ``to``), confirm; once only.

    The claim is recorded before anything is sent, so two releases at once
    deliver once.  When the server accepted nobody, or refused the data, the
    claim is dropped and the entry can be released again.  When the exchange
    broke off after some recipient was accepted, the outcome is unknown: the
    claim stays (unconfirmed), since a second release could deliver twice.
    """
    where = ", ".join(to) if to else None
    try:
        claim = await asyncio.to_thread(
            store.claim_release, entry_id, actor, to, retry_unconfirmed=retry_unconfirmed
        )
    except QuarantineError as err:
        _refused("release", actor, err, id=entry_id, to=where)
        raise
    entry, recipients = claim.entry, list(claim.release.to)
    try:
        message = await asyncio.to_thread(store.message, entry.id)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(store.abandon_release, claim))
        raise
    try:
        delivery = await sender.send(entry.mail_from, recipients, message)
    except BaseException:
        # Cancelled mid-way (send itself never raises for SMTP trouble): it may have
        # gone out, so the claim stays.
        audit("release", actor, "unknown", id=entry.id, to=", ".join(recipients))
        raise
    maybe_delivered = bool(delivery.accepted) and (
        delivery.error != "" or (delivery.data is not None and delivery.data.ok)
    )
    if not maybe_delivered:
        await asyncio.to_thread(store.abandon_release, claim)
        if delivery.error:
            why = f"release failed: {delivery.error}"
        elif delivery.data is None:
            why = "release refused: no recipient accepted"
        else:
            why = f"release refused: {delivery.data}"
        audit("release", actor, "failed", id=entry.id, to=", ".join(recipients), why=why)
        raise QuarantineError(why)
    if delivery.error:
        why = (
            f"release interrupted: {delivery.error}; it may have been delivered, so it stays"
            " claimed (--retry-unconfirmed to deliver it anyway)"
        )
        audit("release", actor, "unknown", id=entry.id, to=", ".join(recipients), why=why)
        raise QuarantineError(why)
    assert delivery.data is not None
    # What was delivered is recorded even if some recipients were refused, so a second
    # release cannot deliver twice to the others.
    record = await asyncio.to_thread(
        store.confirm_release, claim, delivery.accepted, str(delivery.data)
    )
    refused = [f"<{r}>: {reply}" for r, reply in delivery.recipients.items() if not reply.ok]
    audit(
        "release", actor, id=entry.id, to=", ".join(record.to),
        refused=", ".join(r for r, reply in delivery.recipients.items() if not reply.ok) or None,
    )  # fmt: skip
    return Released(entry, record, refused)


# Who releases through a digest's link (the audit line's ``by``; ``to`` names the recipient).
DIGEST = "digest"


class LinkUsed(QuarantineError):
    """A release link was used before (it is single-use)."""


async def release_link(
    store: QuarantineStore,
    sender: Sender,
    secret: bytes,
    token: object,
    address: str,
    categories: Sequence[str] = ("spam", "bad_header"),
    now: float | None = None,
) -> Released:
    """Release the entry a digest's link names to the recipient it names; once; audited.

    For the portal's POST (its GET shows :func:`filter.release_links.check_token`'s
    answer and a button, and changes nothing: mail scanners fetch links).
    ``secret``: the portal's secret; ``address``: the client's IP address;
    ``categories``: what users may release themselves.  Raises
    :class:`filter.release_links.LinkRefused` (malformed, forged, expired),
    :class:`LinkUsed`, :class:`filter.qstore.AlreadyReleased`, or :class:`QuarantineError`
    (not held any more, not one of the entry's recipients, a category users may
    not release, delivery failed); each writes one ``release`` audit line.

    The link is spent before anything is sent, so two clicks deliver once; if
    the release then delivered nothing (the claim was dropped), the link is
    given back and may be used again.
    """
    actor = Actor(DIGEST, address)
    when = time.time() if now is None else now
    try:
        link = release_links.check_token(secret, token, when)
    except release_links.LinkRefused as err:
        audit("release", actor, "refused", why=str(err))  # the token itself is never logged
        raise
    try:
        entry = await asyncio.to_thread(store.get, link.entry_id)
        wanted = link.recipient.lower()
        to = next((r for r in entry.recipients if r.lower() == wanted), None)
        if to is None:
            raise QuarantineError(f"{entry.id}: {link.recipient} is not one of its recipients")
        if entry.category not in categories:
            raise QuarantineError(f"{entry.id}: {entry.category} is released by an administrator")
        if len(entry.recipients) > 1:
            # As in the portal: one recipient's release would use up the others' copy.
            raise QuarantineError(f"{entry.id}: held for several recipients; ask an administrator")
        if not await asyncio.to_thread(store.spend_link, link.nonce, link.expires_at, when):
            raise LinkUsed(f"{entry.id}: this release link was used already")
    except QuarantineError as err:
        _refused("release", actor, err, id=link.entry_id, to=link.recipient)
        raise
    try:
        return await release(store, sender, entry.id, actor, [to])
    except QuarantineError:
        # Given back only if nothing went out: the entry is not claimed (any more).
        with contextlib.suppress(QuarantineError):
            if not (await asyncio.to_thread(store.get, entry.id)).releases:
                await asyncio.to_thread(store.unspend_link, link.nonce)
        raise


def delete(store: QuarantineStore, entry_ids: Sequence[str], actor: Actor, on_skip: Skip) -> int:
    """Delete one entry or many; one audit line naming every id asked for."""
    refused: list[QuarantineError] = []

    def skip(err: QuarantineError) -> None:
        refused.append(err)
        on_skip(err)

    deleted = store.delete_many(entry_ids, skip)
    ids = ",".join(entry_ids)
    if refused:
        audit("delete", actor, "refused" if not deleted else "partial", id=ids, deleted=deleted,
              why="; ".join(str(e) for e in refused[:5]))  # fmt: skip
    else:
        audit("delete", actor, id=ids, deleted=deleted)
    return deleted


def expire(store: QuarantineStore, days: float, actor: Actor, on_skip: Skip = ignore) -> int:
    """Delete entries older than ``days``; one line with the count and how many were kept."""
    kept: list[QuarantineError] = []

    def skip(err: QuarantineError) -> None:
        kept.append(err)
        on_skip(err)

    deleted = store.expire(days, on_skip=skip)
    audit("expire", actor, "partial" if kept else "ok", older_than_days=f"{days:g}",
          deleted=deleted, kept=len(kept))  # fmt: skip
    return deleted


def request_release(
    store: QuarantineStore, entry_id: str, actor: Actor, note: str = ""
) -> ReleaseRequest:
    """Ask an administrator to release an entry (the note is stored, not logged)."""
    try:
        request = store.request_release(entry_id, actor, note)
    except QuarantineError as err:
        _refused("request", actor, err, id=entry_id)
        raise
    audit("request", actor, id=entry_id)
    return request


def allow(store: QuarantineStore, recipient: str, sender: str, actor: Actor) -> AllowEntry:
    """Add an allow entry for ``recipient``."""
    entry = store.allow(recipient, sender, actor)
    audit("allow", actor, recipient=entry.recipient, sender=entry.sender)
    return entry


def disallow(store: QuarantineStore, recipient: str, sender: str, actor: Actor) -> bool:
    """Remove an allow entry; False if there was none."""
    removed = store.disallow(recipient, sender)
    audit("disallow", actor, "ok" if removed else "none", recipient=recipient, sender=sender)
    return removed
