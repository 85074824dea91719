"""This host's copy of the quarantine's allow entries, for when the store cannot answer.

This module owns how the filter asks about allow entries ("always accept mail
from this sender", added in the portal) and what it answers while the store
is down.  With the PostgreSQL store (issue 18) the entries live in a database
every gateway host shares; a database that is down or hung must not stop mail
that needs no quarantine.  Without a copy, a spam-scored message for a user
who allowed its sender would be treated as spam, need the quarantine, and get
451 until the database came back.

So each host keeps a copy of the whole table (up to :data:`MAX_ENTRIES`),
loaded at start and every ``refresh`` seconds (``[quarantine] allow_refresh``).
While the store answers, each lookup asks it (a change in the portal counts from
the next message on) and the copy is not used.  When a lookup or load fails, or
takes longer than the lookup deadline, the copy answers for ``retry`` seconds
without asking the store at all, so a hung database costs each message nothing
after the first ones; then a lookup tries again.  Entries added or removed in
the last ``refresh`` seconds before an outage are not in the copy, or still
are: allow entries only ever lower a spam verdict (:mod:`filter.policy`), so a
stale copy can hold a message that would have passed (451 while holding is
impossible), or pass spam from a sender its recipient disallowed in those
seconds; never anything else.

Blocking, like the store: the filter calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence

from filter.qstore import QuarantineStore
from filter.quarantine import QuarantineError

log = logging.getLogger(__name__)

# The longest the filter waits for a live lookup before it answers from the copy.
ALLOW_DEADLINE = 1.0
# Rows loaded into a host's copy at most: past this the rest are left out (and said so).
MAX_ENTRIES = 200_000


# NUL and lone surrogates: what the PostgreSQL store keeps (and looks up) as U+FFFD.
_UNSTORABLE = re.compile("[\0\ud800-\udfff]")


def _normal(address: str) -> str:
    """As the stores look an allow entry's address up: trimmed, lower-cased, and with
    what PostgreSQL cannot hold as U+FFFD (the copy answers as the store would)."""
    return _UNSTORABLE.sub("\ufffd", address.strip().lower())


class AllowCache:
    """Allow lookups that ask the store while it answers and use the host's copy when not."""

    def __init__(
        self,
        store: QuarantineStore,
        *,
        retry: float = 10.0,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        on_up: Callable[[bool], None] | None = None,
    ) -> None:
        self._store = store
        self.retry = retry
        self.max_entries = max_entries
        self._clock = clock
        self.on_up = on_up
        self._copy: dict[str, frozenset[str]] = {}
        self._loaded = False
        self._down_until = -math.inf
        self._down = False  # said once per outage
        self._failures = 0  # a lookup that succeeds after a failure was declared proves little
        self._lock = threading.Lock()

    def attach(self, store: QuarantineStore, *, same_source: bool) -> None:
        """Use ``store`` from now on (a reload); another source's copy is dropped."""
        with self._lock:
            self._store = store
            if not same_source:
                self._copy, self._loaded = {}, False

    @property
    def recipients(self) -> int:
        """How many recipients have entries in the copy."""
        return len(self._copy)

    @property
    def loaded(self) -> bool:
        """Whether a copy was loaded at least once (from this source)."""
        return self._loaded

    def allowed(self, recipients: Sequence[str], senders: Sequence[str]) -> set[str]:
        """The recipients who allowed one of ``senders``: the store's answer, else the copy's.

        Never raises: a failing store is reported once per outage.
        """
        if self.known_down():
            return self.from_copy(recipients, senders)
        store, failures = self._store, self._failures
        try:
            found = store.allowed_among(recipients, senders)
        except (QuarantineError, OSError) as err:
            self.failed(str(err))
            return self.from_copy(recipients, senders)
        if failures == self._failures:  # else its caller gave up on it: the copy stands
            self._answered()
        return found

    def known_down(self) -> bool:
        """Whether the copy answers alone for now (a failure less than ``retry`` s ago)."""
        return self._clock() < self._down_until

    def from_copy(self, recipients: Sequence[str], senders: Sequence[str]) -> set[str]:
        """The copy's answer (nobody allowed anybody before a first load)."""
        wanted = {_normal(s) for s in senders if s}
        copy = self._copy
        return {r for r in recipients if not wanted.isdisjoint(copy.get(_normal(r), ()))}

    def failed(self, why: str) -> None:
        """The store did not answer (or not in time): use the copy for ``retry`` seconds."""
        self._down_until = self._clock() + self.retry
        self._failures += 1
        if self.on_up is not None:
            self.on_up(False)
        if not self._down:
            self._down = True
            state = f"{len(self._copy)} recipients' entries" if self._loaded else "none loaded yet"
            log.warning(
                "quarantine store not answering (%s): allow entries from this host's copy (%s)",
                why, state,
            )  # fmt: skip

    def answered(self) -> None:
        """The store answered (a hold went through): ask it live again from now on."""
        self._down_until = -math.inf
        self._answered()

    def _answered(self) -> None:
        if self.on_up is not None:
            self.on_up(True)
        if self._down:
            self._down = False
            log.info("quarantine store answering again: allow entries asked live")

    def reload(self) -> bool:
        """Load the whole table into the copy; False (the old copy kept) if the store fails."""
        store = self._store
        try:
            pairs = store.allow_pairs(self.max_entries + 1)
        except (QuarantineError, OSError) as err:
            self.failed(str(err))
            return False
        copy: dict[str, set[str]] = {}
        for recipient, sender in pairs[: self.max_entries]:
            copy.setdefault(recipient, set()).add(sender)
        if len(pairs) > self.max_entries:
            log.warning(
                "more than %d allow entries: this host's copy (used while the store is down)"
                " holds the first %d only", self.max_entries, self.max_entries,
            )  # fmt: skip
        with self._lock:
            if store is self._store:  # not replaced by a reload meanwhile
                self._copy = {r: frozenset(s) for r, s in copy.items()}
                self._loaded = True
        self.answered()
        return True
