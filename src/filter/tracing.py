"""Following messages through the gateway's logs: the correlating half of ``mail-filter trace``.

This module owns turning a stream of :class:`filter.maillog.Event` (in time
order, from every source merged) into one :class:`Timeline` per message that
matches a :class:`Criteria`, without I/O and in bounded memory.

A message is a *group* of keys: Postfix queue ids, ``q:<quarantine id>`` and
``f:<filter id>``.  Events join keys into one group as they link them:

- the front Postfix queues the message as A; its delivery to the filter is
  answered ``... queued as B`` (and the filter's own summary line says so), and
  the re-injection listener logs B with ``orig_queue_id=A`` (XFORWARD): A and B;
- the filter's summary line names A, its id and the quarantine id it held;
- bounce's ``sender non-delivery notification: C``: B and its notice C;
- a release recorded in the quarantine (``lookup``) answered ``queued as D``.

Groups stay in memory while a queue id of theirs is in Postfix's queue, and
:data:`LINGER` seconds (of log time) after it left, so lines from another file
written a moment later still find them; then a group that matched is kept and
any other is dropped.  :data:`MAX_GROUPS` bounds what is in flight (the oldest
unmatched are dropped first), :data:`MAX_EVENTS` a group's events, and
``limit`` the timelines kept.

Nothing here trusts what a line says (addresses and replies are the sender's
choice): the texts are data, escaped by whoever prints them.
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from filter.maillog import QUARANTINE_ID, Event, Kind, normal_message_id

LINGER = 120.0
"""Seconds of log time a group is kept after its last queue id left the queue (the sources
are merged by time, so the filter's lines come within a second or two of Postfix's)."""
STALE = 7 * 86400.0
"""A group with no line for this long (log time) is dropped, even if still queued (lost lines)."""
MAX_GROUPS = 20_000
"""Groups in flight at most (about 10 KiB each: 200 MB); past it the oldest unmatched are
dropped.  In flight: the messages deferred in Postfix's queue, and LINGER's worth of the rest."""
MAX_EVENTS = 500
"""Events kept per message; a message deferred for days logs a line per retry."""
SWEEP_EVERY = 5_000
"""Events between two looks for groups to drop."""

DEFAULT_FILTER_PORT = "10024"
"""The port of the filter's default ``server.listen`` (and of Postfix's content filter
convention): the filter hop on a loopback address when no configuration says otherwise."""

# mail-filter's replies to Postfix all carry its id for the message (filter.replies).
_FILTER_REPLY = re.compile(r"\bid=[0-9a-f]{12}\b")
_RELAY = re.compile(r"(?P<name>[^\[\]]*)\[(?P<addr>[^\]]*)\](?::(?P<port>\d+))?")

Lookup = Callable[[str], Sequence[Event]]
"""What the quarantine knows about a quarantine id: HELD and RELEASED events (maybe none)."""


@dataclass(frozen=True)
class Criteria:
    """Which messages: any of ``ids``, ``message_ids``, ``quarantine_ids`` and ``addresses``
    (when some are given), and a sender among ``senders`` and a recipient among
    ``recipients`` (when given), with a line in ``[since, until)``.

    Addresses compare without case; one starting with ``@`` is a whole domain.
    ``ids`` are Postfix queue ids of this gateway, or of the next hop (``queued as``).
    ``addresses`` match a sender, a recipient or a SASL login.
    """

    ids: frozenset[str] = frozenset()
    message_ids: frozenset[str] = frozenset()
    quarantine_ids: frozenset[str] = frozenset()
    addresses: tuple[str, ...] = ()
    senders: tuple[str, ...] = ()
    recipients: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    @property
    def empty(self) -> bool:
        """Whether nothing narrows the search (every message would match)."""
        return not (
            self.ids or self.message_ids or self.quarantine_ids or self.addresses
            or self.senders or self.recipients
        )  # fmt: skip

    def in_range(self, at: float) -> bool:
        """Whether ``at`` lies in ``[since, until)``."""
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)


def criteria_for(query: str) -> Criteria:
    """What a QUERY names: a quarantine id, a ``<Message-ID>``, an address (or a Message-ID
    without brackets), ``@domain``, or else a queue id (this gateway's or the next hop's).
    Nothing but space names nothing (:attr:`Criteria.empty`)."""
    text = query.strip()
    if not text:
        return Criteria()
    if QUARANTINE_ID.fullmatch(text):
        return Criteria(quarantine_ids=frozenset([text]))
    if text.startswith("<") and text.endswith(">"):
        return Criteria(message_ids=frozenset([normal_message_id(text).lower()]))
    if "@" in text:
        ids = frozenset([text.lower()]) if not text.startswith("@") else frozenset()
        return Criteria(message_ids=ids, addresses=(text.lower(),))
    return Criteria(ids=frozenset([text]))


def _address_in(wanted: Iterable[str], found: set[str]) -> bool:
    for want in wanted:
        if want.startswith("@"):
            if any(addr.endswith(want) for addr in found):
                return True
        elif want in found:
            return True
    return False


@dataclass(eq=False)
class Group:
    """One message's events so far and what they say (the facts criteria look at)."""

    keys: set[str] = field(default_factory=set)
    queued: set[str] = field(default_factory=set)
    """Its queue ids still in Postfix's queue (seen, not yet removed)."""
    events: list[Event] = field(default_factory=list)
    seen: set[tuple[str, int, str]] = field(default_factory=set)
    first: float = float("inf")
    last: float = float("-inf")
    in_range: bool = False
    senders: set[str] = field(default_factory=set)
    recipients: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    message_ids: set[str] = field(default_factory=set)
    remote_ids: set[str] = field(default_factory=set)
    roles: dict[str, str] = field(default_factory=dict)
    """How a queue id joined: "filtered" (re-injected by the filter), "notice", "release"."""
    resolved: set[str] = field(default_factory=set)
    kept: bool = False
    over: bool = False
    """It matched after ``limit`` others: counted, not kept."""
    dropped: int = 0

    def absorb(self, other: Group) -> None:
        """Take ``other``'s keys, events and facts (the two turned out one message)."""
        self.keys |= other.keys
        self.queued |= other.queued
        for event in other.events:
            self._append(event)
        self.dropped += other.dropped
        self.seen |= other.seen
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)
        self.in_range |= other.in_range
        for mine, theirs in (
            (self.senders, other.senders), (self.recipients, other.recipients),
            (self.users, other.users), (self.message_ids, other.message_ids),
            (self.remote_ids, other.remote_ids), (self.resolved, other.resolved),
        ):  # fmt: skip
            mine |= theirs
        for key, role in other.roles.items():
            self.roles.setdefault(key, role)
        self.kept |= other.kept
        self.over |= other.over

    def _append(self, event: Event) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
        else:
            self.dropped += 1

    def add(self, event: Event, criteria: Criteria) -> bool:
        """Record ``event``; False if it repeats one already here (the same line read twice)."""
        mark = (event.program, event.pid, event.line)
        if event.line and mark in self.seen:
            return False
        if len(self.seen) < 2 * MAX_EVENTS:  # past that, lines are only counted anyway
            self.seen.add(mark)
        if event.kind is not Kind.REMOVED or event.program == "postsuper":
            self._append(event)  # qmgr's "removed" shows nowhere: only the queued set keeps it
        self.first, self.last = min(self.first, event.at), max(self.last, event.at)
        self.in_range = self.in_range or criteria.in_range(event.at)
        if event.sender is not None:
            self.senders.add(event.sender.lower())
        self.recipients.update(r.lower() for r in event.recipients)
        if event.user and event.kind is Kind.CLIENT:
            self.users.add(event.user.lower())
        if event.message_id:
            self.message_ids.add(event.message_id.lower())
        if event.kind is Kind.DELIVERY and event.next_id:
            self.remote_ids.add(event.next_id)
        return True

    def matches(self, criteria: Criteria) -> bool:
        """Whether this message is one the criteria ask for (so far: facts only grow)."""
        if not self.in_range:
            return False
        if criteria.senders and not _address_in(criteria.senders, self.senders):
            return False
        if criteria.recipients and not _address_in(criteria.recipients, self.recipients):
            return False
        if not (
            criteria.ids or criteria.message_ids or criteria.quarantine_ids or criteria.addresses
        ):
            return True
        return (
            not criteria.ids.isdisjoint(self.keys)
            or not criteria.ids.isdisjoint(self.remote_ids)
            or not criteria.message_ids.isdisjoint(self.message_ids)
            or any(f"q:{held}" in self.keys for held in criteria.quarantine_ids)
            or _address_in(criteria.addresses, self.senders)
            or _address_in(criteria.addresses, self.recipients)
            or _address_in(criteria.addresses, self.users)
        )


class Tracer:
    """Feed it events in time order (:meth:`add`), then take the timelines (:meth:`finish`).

    ``filter_addresses``: where Postfix hands mail to the filter (``host:port``,
    ``server.listen``); a delivery there is the filter hop, whose ``queued as``
    is the re-injected copy.  Without them (no configuration to read), a
    delivery to a loopback address is the hop when it is to the default port
    (:data:`DEFAULT_FILTER_PORT`) or answered in the filter's shape (``id=`` and
    twelve hex digits): the reply alone proves nothing, since any server mail
    is delivered to chooses its reply.
    ``lookup``: the quarantine, asked about each held message that matched.
    """

    def __init__(
        self,
        criteria: Criteria,
        *,
        filter_addresses: Sequence[str] | None = None,
        lookup: Lookup | None = None,
        limit: int = 1000,
    ) -> None:
        self.criteria = criteria
        self.lookup = lookup
        self.limit = limit
        self.more = 0
        """Messages that matched after ``limit`` were found (not shown)."""
        self.now = float("-inf")
        self._filters = [_host_port(a) for a in filter_addresses or ()]
        self._by_key: dict[str, Group] = {}
        self._live: set[Group] = set()
        self._kept: list[Group] = []
        self._count = 0
        self._loose = 0

    # -- feeding ------------------------------------------------------------------------

    def add(self, event: Event) -> None:
        """Take one event (events come in time order, roughly: sources are merged by time)."""
        self.now = max(self.now, event.at)
        self._count += 1
        if self._count % SWEEP_EVERY == 0:
            self.sweep()
        if event.kind is Kind.AUDIT:
            for held in event.quarantine_ids:  # a bulk delete names many: never one group
                self._into(self._group_for([f"q:{held}"]), event, [])
            return
        if event.kind is Kind.REJECT and not event.queue_id:
            self._loose += 1
            group = self._group_for([f"r:{self._loose}"])
            self._into(group, event, [])
            if not group.kept:
                self._forget(group)
            return
        keys, links = self._keys(event)
        if not keys:
            return
        group = self._group_for(keys)
        self._into(group, event, links)

    def seed(self, events: Iterable[Event]) -> None:
        """Take what is known before reading (the quarantine's entry for a quarantine id
        asked for): its message is found even if its lines are gone, and its queue ids
        pull their lines in when they come."""
        for event in events:
            keys, links = self._keys(event)
            self._into(self._group_for(keys), event, links)

    def _keys(self, event: Event) -> tuple[list[str], list[tuple[str, str]]]:
        """The keys an event belongs to, and the queue ids it links in (with their role)."""
        keys = [event.queue_id] if event.queue_id else []
        links: list[tuple[str, str]] = []
        if event.kind is Kind.SCANNED:
            keys.append(f"f:{event.filter_id}")
            if event.next_id:
                links.append((event.next_id, "filtered"))
        elif event.kind is Kind.CLIENT and event.prev_id:
            links.append((event.prev_id, ""))
        elif event.kind is Kind.DELIVERY and event.next_id and self.filter_hop(event):
            links.append((event.next_id, "filtered"))
        elif event.kind is Kind.NOTIFICATION and event.next_id:
            links.append((event.next_id, "notice"))
        elif event.kind is Kind.RELEASED and event.next_id:
            links.append((event.next_id, "release"))
        keys += [f"q:{held}" for held in event.quarantine_ids]
        keys += [qid for qid, _ in links]
        return keys, links

    def _group_for(self, keys: Sequence[str]) -> Group:
        """The one group holding every key (merging the groups they were in)."""
        groups: list[Group] = []
        for key in keys:
            found = self._by_key.get(key)
            if found is not None and found not in groups:
                groups.append(found)
        if not groups:
            group = Group()
            self._live.add(group)
        else:
            groups.sort(key=lambda g: len(g.events), reverse=True)
            group = groups[0]
            for other in groups[1:]:
                self._merge(group, other)
        for key in keys:
            if key not in group.keys:
                group.keys.add(key)
                self._by_key[key] = group
        return group

    def _merge(self, group: Group, other: Group) -> None:
        """``group`` takes ``other`` in, and its place among the kept (one message, counted
        once: kept if either was, and no longer among those past the limit then)."""
        kept, over = group.kept, group.over
        group.absorb(other)
        for key in other.keys:
            self._by_key[key] = group
        self._live.discard(other)
        if other.kept:
            self._kept.remove(other)
            if not kept:
                self._kept.append(group)
        if group.kept:
            self.more -= over + other.over
            group.over = False
        elif over and other.over:
            self.more -= 1

    def _into(self, group: Group, event: Event, links: Sequence[tuple[str, str]]) -> None:
        if not group.add(event, self.criteria):
            return
        if event.kind is Kind.CLIENT and event.prev_id:
            group.roles.setdefault(event.queue_id, "filtered")
        for qid, role in links:
            if role:
                group.roles.setdefault(qid, role)
        if event.queue_id and event.program not in ("", "mail-filter"):
            if event.kind is Kind.REMOVED:
                group.queued.discard(event.queue_id)
            else:
                group.queued.add(event.queue_id)
        if not (group.kept or group.over) and group.matches(self.criteria):
            if len(self._kept) < self.limit:
                group.kept = True
                self._kept.append(group)
            else:  # counted once; dropped with the unmatched when done with
                group.over = True
                self.more += 1
        if group.kept and self.lookup is not None:
            self._resolve(group)

    def _resolve(self, group: Group) -> None:
        """Ask the quarantine about the message's held copies (once each)."""
        assert self.lookup is not None
        for key in sorted(group.keys):
            held = key[2:]
            if key.startswith("q:") and held not in group.resolved:
                group.resolved.add(held)
                for found in self.lookup(held):
                    keys, links = self._keys(found)
                    merged = self._group_for([key, *keys])
                    self._into(merged, found, links)

    def filter_hop(self, event: Event) -> bool:
        """Whether a delivery went to the content filter (its ``queued as`` is ours again)."""
        relay = _RELAY.fullmatch(event.relay)
        if relay is None:
            return False
        if not self._filters:
            return _loopback(relay["addr"]) and (
                relay["port"] == DEFAULT_FILTER_PORT or _FILTER_REPLY.search(event.text) is not None
            )
        for host, port in self._filters:
            if relay["port"] == port and host in (relay["addr"], relay["name"], "0.0.0.0", "::"):
                return True
        return False

    # -- bounding -----------------------------------------------------------------------

    def _forget(self, group: Group) -> None:
        for key in group.keys:
            if self._by_key.get(key) is group:
                del self._by_key[key]
        self._live.discard(group)

    def sweep(self) -> None:
        """Drop groups done with (left the queue LINGER ago, or silent for STALE) that did
        not match; then, past MAX_GROUPS, the oldest unmatched ones."""
        done = [
            g for g in self._live
            if not g.kept and (
                (not g.queued and self.now - g.last > LINGER) or self.now - g.last > STALE
            )
        ]  # fmt: skip
        for group in done:
            self._forget(group)
        if len(self._live) > MAX_GROUPS:
            waiting = sorted((g for g in self._live if not g.kept), key=lambda g: g.last)
            for group in waiting[: len(self._live) - MAX_GROUPS]:
                self._forget(group)

    @property
    def in_flight(self) -> int:
        """Groups held in memory now (matched or not)."""
        return len(self._live)

    # -- results ------------------------------------------------------------------------

    def finish(self) -> list[Timeline]:
        """One timeline per matching message, oldest first.

        A queue id asked for that is one of this gateway's (a message here was queued
        under it) names that message: another one whose next hop happened to answer
        ``queued as`` that id (a remote server's reply says what it likes) is left out.
        """
        wanted = self.criteria.ids
        ours = set[str]().union(*(g.keys & wanted for g in self._kept))
        kept = [g for g in self._kept if g.keys & wanted or g.remote_ids.isdisjoint(ours)]
        return [timeline(g, self) for g in sorted(kept, key=lambda g: g.first)]


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.removeprefix("ipv6:")).is_loopback
    except ValueError:
        return False


def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


# -- timelines -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One line of a timeline: when, under which id (a queue id, "filter", "quarantine")."""

    at: float
    where: str
    what: str
    event: Event


@dataclass(frozen=True)
class Timeline:
    """What happened to one message, from its first line to its last."""

    queue_ids: tuple[str, ...]
    message_ids: tuple[str, ...]
    sender: str | None
    recipients: tuple[str, ...]
    size: int | None
    steps: tuple[Step, ...]
    outcome: tuple[tuple[str, str], ...]
    """Each recipient's last known state, in the order recipients appeared."""
    quarantine_ids: tuple[str, ...]
    queued: bool
    """A queue id of it was still in Postfix's queue at the last line read."""
    dropped: int = 0


_VERB = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced", "expired": "expired"}


def timeline(group: Group, tracer: Tracer) -> Timeline:
    """The timeline of one group (its events in time order)."""
    events = sorted(group.events, key=lambda e: (math.floor(e.at), _stage(e, group.roles)))
    notices = {qid for qid, role in group.roles.items() if role == "notice"}
    filter_ids = {e.filter_id for e in events if e.kind is Kind.SCANNED}
    steps: list[Step] = []
    outcome: dict[str, tuple[str, str]] = {}
    sender: str | None = None
    size: int | None = None
    order: list[str] = []  # queue ids as they appeared

    def state(recipients: Iterable[str], what: str) -> None:
        for rcpt in recipients:
            outcome[rcpt.lower()] = (rcpt, what)

    for event in events:
        qid = event.queue_id
        if qid and qid not in order and event.kind is not Kind.SCANNED:
            order.append(qid)
        own = qid not in notices
        if own and sender is None and event.sender is not None:
            sender = event.sender
        if own and size is None and event.size is not None:
            size = event.size
        what = _describe(event, group, tracer, filter_ids)
        if what is not None:
            steps.append(Step(event.at, _where(event), what, event))
        if own:
            _outcome(event, tracer, state, outcome)
    if group.queued:
        for key, (rcpt, what) in list(outcome.items()):
            if what.startswith("deferred"):
                outcome[key] = (rcpt, what + "; still in the queue")
    recipients = [r for r, _ in outcome.values()]
    return Timeline(
        queue_ids=tuple(order),
        message_ids=tuple(sorted({e.message_id for e in events if e.message_id and
                                  e.queue_id not in notices})),
        sender=sender,
        recipients=tuple(recipients),
        size=size,
        steps=tuple(steps),
        outcome=tuple(outcome.values()),
        quarantine_ids=tuple(sorted(k[2:] for k in group.keys if k.startswith("q:"))),
        queued=bool(group.queued),
        dropped=group.dropped,
    )  # fmt: skip


_STAGE = {"": 0, "filtered": 2, "notice": 3, "release": 5}


def _stage(event: Event, roles: dict[str, str]) -> float:
    """Where an event stands in a message's way, for lines logged within one second:
    Postfix logs whole seconds, the filter milliseconds, so time alone would put the
    filter's verdict after the re-injected copy's delivery.  (The sort is stable:
    within a stage, lines keep the order they were read in.)"""
    if event.kind in (Kind.SCANNED, Kind.FILTER_NOTE):
        return 1
    if event.kind in (Kind.HELD, Kind.AUDIT, Kind.RELEASED):
        return 4
    return _STAGE.get(roles.get(event.queue_id, ""), 0)


def _where(event: Event) -> str:
    """A step's id column: the queue id, or what spoke (the filter, the quarantine)."""
    if event.kind in (Kind.SCANNED, Kind.FILTER_NOTE):
        return "filter"
    if event.kind in (Kind.AUDIT, Kind.HELD, Kind.RELEASED):
        return "quarantine"
    return event.queue_id or "-"


def _describe(event: Event, group: Group, tracer: Tracer, filter_ids: set[str]) -> str | None:
    """A step's text, or None for a line the timeline does not show (its facts are in the
    header: Message-ID, qmgr's sender and size; qmgr's ``removed``)."""
    kind = event.kind
    role = group.roles.get(event.queue_id, "")
    if kind is Kind.CLIENT:
        if role == "filtered" or event.prev_id:
            was = f" (was {event.prev_id})" if event.prev_id else ""
            return f"re-injected by the filter{was}, from {event.text}"
        if role == "release":
            return f"re-injected from the quarantine, from {event.text}"
        auth = f", authenticated as {event.user} ({event.method})" if event.user else ""
        return f"received from {event.text}{auth}"
    if kind is Kind.PICKUP:
        return f"submitted on this host by uid {event.text}, from <{event.sender}>"
    if kind is Kind.DELIVERY:
        rcpt = f"<{event.recipients[0]}>" if event.recipients else "?"
        if tracer.filter_hop(event):
            fid = re.search(r"\bid=([0-9a-f]{12})\b", event.text)
            if fid is not None and fid.group(1) in filter_ids:
                return None  # the filter's own line says it all (the outcome says the rest)
            return f"{event.status} to the filter for {rcpt} via {event.relay}: {event.text}"
        verb = _VERB.get(event.status, event.status)
        reply = f": {event.text}" if event.text else ""
        return f"{verb} {rcpt} via {event.relay}{reply}"
    if kind is Kind.EXPIRED:
        return "expired in the queue, returned to the sender"
    if kind is Kind.NOTIFICATION:
        return f"{event.text} queued as {event.next_id}"
    if kind is Kind.REMOVED:
        return "deleted from the queue (postsuper)" if event.program == "postsuper" else None
    if kind is Kind.QUEUE_ACTION:
        return event.text
    if kind is Kind.REJECT:
        return f"{event.status}: {event.text}"
    if kind is Kind.SCANNED:
        said = ", ".join(_verdict(event))
        return f"scanned: {said}" + (
            "" if f"id={event.filter_id}" in said else f" (id {event.filter_id})"
        )
    if kind is Kind.FILTER_NOTE:
        return event.text
    if kind is Kind.AUDIT:
        to = f" to {', '.join(event.recipients)}" if event.recipients else ""
        why = f" ({event.extra['why']})" if "why" in event.extra else ""
        return f"{event.status} by {event.user} from {event.detail}{to}: {event.text}{why}"
    if kind in (Kind.HELD, Kind.RELEASED):
        return event.text
    return None


def _verdict(event: Event) -> list[str]:
    """What the filter found and did, from its summary line."""
    parts = [event.status]
    extra = event.extra
    if "virus" in extra:
        parts.append(extra["virus"])
    if "unchecked" in extra:
        parts.append(f"unchecked: {extra['unchecked']}")
    if "score" in extra:
        parts.append(f"score {extra['score']}")
    if event.quarantine_ids:
        parts.append(f"held as {event.quarantine_ids[0]}")
    reply = event.text
    if reply.startswith("250"):
        if event.next_id:
            parts.append(f"re-injected as {event.next_id}")
        elif "discarded" in reply:
            parts.append("discarded")
        elif "DSN sent" in reply:
            parts.append(f"refused downstream, DSN sent: {reply}")
    elif reply.startswith("5"):
        parts.append(f"rejected: {reply}")
    else:
        parts.append(f"deferred: {reply}")
    return parts


def _filter_outcome(event: Event) -> str:
    """A recipient's state after the filter's answer."""
    reply, found = event.text, event.status
    if "virus" in event.extra:
        found += f" {event.extra['virus']}"
    if reply.startswith("250"):
        if event.next_id:
            return f"passed the filter ({found}), re-injected as {event.next_id}"
        if "discarded" in reply and event.quarantine_ids:
            return f"held in the quarantine as {event.quarantine_ids[0]} ({found})"
        if "discarded" in reply:
            return f"discarded by the filter ({found})"
        return f"the filter answered {reply}"
    if reply.startswith("5"):
        return f"rejected by the filter ({found}): {reply}"
    return f"deferred by the filter: {reply}"


def _outcome(
    event: Event,
    tracer: Tracer,
    state: Callable[[Iterable[str], str], None],
    outcome: dict[str, tuple[str, str]],
) -> None:
    """Update the recipients' last known state with ``event``."""
    kind = event.kind
    if kind is Kind.SCANNED:
        state(event.recipients, _filter_outcome(event))
    elif kind is Kind.DELIVERY and event.recipients:
        first = event.recipients[:1]
        if tracer.filter_hop(event):
            if event.status != "sent" or first[0].lower() not in outcome:
                state(first, f"{event.status} at the filter: {event.text}")
        else:
            verb = _VERB.get(event.status, event.status)
            state(
                first,
                f"{verb} via {event.relay}" + (f": {event.text}" if verb != "delivered" else ""),
            )
    elif kind is Kind.REJECT and event.recipients:
        state(event.recipients, f"{event.status}: {event.text}")
    elif kind is Kind.EXPIRED:
        for key, (rcpt, what) in list(outcome.items()):
            if what.startswith("deferred"):
                outcome[key] = (rcpt, "expired, returned to the sender")
    elif kind is Kind.HELD and event.recipients:
        for rcpt in event.recipients:
            if rcpt.lower() not in outcome:
                state([rcpt], f"held in the quarantine as {event.quarantine_ids[0]}")
    elif kind is Kind.RELEASED and event.recipients:
        state(event.recipients, f"released from the quarantine ({event.text})")
    elif kind is Kind.AUDIT and event.status == "delete" and event.text == "ok":
        for key, (rcpt, what) in list(outcome.items()):
            if what.startswith("held"):
                outcome[key] = (rcpt, f"deleted from the quarantine by {event.user}")


def local_time(at: float) -> str:
    """``2026-12-04 20:10:16`` in local time, as the logs show it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def render(line: Timeline, *, lines: bool = False) -> list[str]:
    """A timeline as text lines (not escaped: the printer escapes them).

    ``lines``: the log lines themselves under each step, for a closer look.
    """
    ids = " -> ".join(line.queue_ids) or (
        line.quarantine_ids[0] if line.quarantine_ids else "(never queued)"
    )
    mids = ", ".join(f"<{m}>" for m in line.message_ids)
    out = [f"message {ids}" + (f"  Message-ID {mids}" if mids else "")]
    size = f", {line.size} bytes" if line.size is not None else ""
    to = ", ".join(f"<{r}>" for r in line.recipients) or "?"
    sender = f"<{line.sender}>" if line.sender is not None else "?"
    out.append(f"  from {sender} to {to}{size}")
    width = max((len(s.where) for s in line.steps), default=0)
    for step in line.steps:
        out.append(f"  {local_time(step.at)}  {step.where:<{width}}  {step.what}")
        if lines and step.event.line and step.event.kind not in (Kind.HELD, Kind.RELEASED):
            out.append(f"      | {step.event.line}")
    if line.dropped:
        out.append(f"  ({line.dropped} more lines of this message not kept)")
    for rcpt, what in line.outcome:
        out.append(f"  => <{rcpt}>: {what}")
    return out


def as_json(line: Timeline) -> dict[str, object]:
    """A timeline as a JSON object (for ``--json``: one per line)."""
    return {
        "queue_ids": list(line.queue_ids),
        "message_ids": list(line.message_ids),
        "quarantine_ids": list(line.quarantine_ids),
        "from": line.sender,
        "to": list(line.recipients),
        "size": line.size,
        "in_queue": line.queued,
        "steps": [
            {
                "at": step.at,
                "time": local_time(step.at),
                "id": step.where,
                "kind": step.event.kind.value,
                "what": step.what,
                "line": step.event.line,
            }
            for step in line.steps
        ],
        "outcome": {rcpt: what for rcpt, what in line.outcome},
    }
