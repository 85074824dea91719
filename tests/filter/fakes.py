"""Small fakes for the filter pipeline: scanners, a re-injection recorder, learn's mailbox."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from filter.clamd import ClamdError, Outcome, ScanResult
from filter.smtp_out import Delivery, Reply, dot_stuff
from filter.spamd import SpamdError, SpamReport
from filter.spool import Spool, Tail, stuffed


class FakeClamd:
    """Finds a 'virus' when the marker is in the data; can fail or stall."""

    def __init__(self) -> None:
        self.fail: str | None = None
        self.error_reply = False
        self.delay = 0.0
        self.calls = 0
        self.spooled = 0

    async def scan(self, data: bytes | Spool) -> ScanResult:
        """Pretend to scan (a spooled message is read from its file, a chunk at a time)."""
        self.calls += 1
        if isinstance(data, Spool):
            self.spooled += 1
            data = b"".join(data.chunks())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ClamdError(self.fail, "fake")
        if self.error_reply:
            return ScanResult(Outcome.ERROR, "INSTREAM size limit exceeded. ERROR")
        if b"VIRUS-MARKER" in data:
            return ScanResult(Outcome.VIRUS, "Fake.Virus")
        return ScanResult(Outcome.CLEAN)


class FakeSpamd:
    """Scores 1000 for GTUBE-ish content, else ``score``."""

    def __init__(self, score: float = 0.5) -> None:
        self.score = score
        self.fail: str | None = None
        self.delay = 0.0
        self.calls = 0
        self.cancelled = False

    async def check(self, message: bytes) -> SpamReport:
        """Pretend to score."""
        self.calls += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.fail:
            raise SpamdError(self.fail, "fake")
        if b"GTUBE" in message:
            return SpamReport(True, 1000.0, 5.0, ("GTUBE",))
        return SpamReport(self.score >= 5, self.score, 5.0, ("SOME_RULE",))


@dataclass
class Sent:
    """One re-injection the fake received."""

    mail_from: str
    recipients: list[str]
    data: bytes
    mail_params: list[str]
    xforward: dict[str, str]


@dataclass
class FakeForwarder:
    """Accepts everything unless told otherwise per recipient or for DATA."""

    rcpt_replies: dict[str, Reply] = field(default_factory=dict)
    data_reply: Reply = field(default_factory=lambda: Reply(250, "2.0.0 Ok: queued as ABC123"))
    error: str = ""
    dsn_fails: bool = False
    sent: list[Sent] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    """What a real re-injection would send after DATA, dot-stuffed with the hint given."""

    async def send(
        self,
        mail_from: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        mail_params: Sequence[str] = (),
        xforward: Mapping[str, str] | None = None,
        dot_lines: bool = True,
        tail: Tail | None = None,
    ) -> Delivery:
        """Record and answer (a spooled message's tail is read back and recorded whole)."""
        if tail is not None:
            self.payloads.append(b"".join(stuffed([data, *tail.chunks()])))
            data += b"".join(tail.chunks())
        else:
            self.payloads.append(dot_stuff(data, dot_lines=dot_lines))
        self.sent.append(
            Sent(mail_from, list(recipients), data, list(mail_params), dict(xforward or {}))
        )
        if self.error:
            return Delivery(error=self.error)
        if mail_from == "" and self.dsn_fails:
            return Delivery({r: Reply(250, "ok") for r in recipients}, Reply(451, "4.3.0 no"))
        replies = {r: self.rcpt_replies.get(r, Reply(250, "2.1.5 Ok")) for r in recipients}
        if not any(r.ok for r in replies.values()):
            return Delivery(replies, Reply(554, "5.5.1 Error: no valid recipients"))
        return Delivery(replies, self.data_reply)


class FakeMailbox:
    """The Mailbox calls learn makes: a spam folder of UID -> message, no ham.

    ``fetched`` lists the UIDs whose bodies were fetched (not those only sized),
    ``parts`` each body fetch's UIDs; ``fail_on`` makes a body fetch of that UID
    raise it.
    """

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = messages
        self.selected: dict[int, bytes] = {}
        self.fetched: list[int] = []
        self.parts: list[list[int]] = []
        self.fail_on: dict[int, Exception] = {}

    def select_folder(self, folder: str, readonly: bool = True) -> dict[bytes, Any]:
        self.selected = self.messages if folder == "spam" else {}
        return {b"UIDVALIDITY": 7}

    def search(self, criteria: Sequence[str]) -> list[int]:
        low = int(criteria[1].split(":")[0])
        return [uid for uid in self.selected if uid >= low]

    def fetch(self, uids: Sequence[int], items: Sequence[bytes]) -> dict[int, dict[bytes, Any]]:
        if b"RFC822.SIZE" in items:
            return {u: {b"RFC822.SIZE": len(self.selected[u])} for u in uids if u in self.selected}
        self.fetched += uids
        self.parts.append(list(uids))
        for uid in uids:
            if uid in self.fail_on:
                raise self.fail_on[uid]
        return {u: {b"BODY[]": self.selected[u]} for u in uids if u in self.selected}

    def add_flags(self, uids: Sequence[int], flags: Sequence[bytes]) -> None:
        pass

    def move(self, uids: Sequence[int], folder: str) -> None:
        pass

    def delete_messages(self, uids: Sequence[int]) -> None:
        pass

    def expunge(self) -> None:
        pass


class FlakyTeacher:
    """Fails for the messages in ``bad``; records what it was taught."""

    def __init__(self, bad: set[bytes]) -> None:
        self.bad = bad
        self.taught: list[bytes] = []

    def __call__(self, message: bytes, klass: str, forget: bool) -> str:
        if message in self.bad:
            raise SpamdError("timeout", "no answer")
        self.taught.append(message)
        return "learned"
