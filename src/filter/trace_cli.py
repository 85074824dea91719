"""``mail-filter trace QUERY``: what happened to a message, from the logs and the quarantine.

This module owns the command's I/O: which logs to read (files with their
rotations, compressed or not, and the journal through ``journalctl``), reading
them in bounded pieces, asking the quarantine about held copies, and printing
one timeline per message.  Parsing is :mod:`filter.maillog`'s and following
messages :mod:`filter.tracing`'s; both are pure.

Where it reads, unless told (``--log FILE``, ``--journal``):

- ``/var/log/mail.log`` and its rotations (``mail.log.1``, ``mail.log.2.gz`` ...,
  or ``mail.log-20261201.gz`` with logrotate's ``dateext``) when it exists, for
  Postfix's lines; and the journal of ``mail-filter.service`` for the filter's,
  since journald hands a unit's output to rsyslog as facility ``daemon``, never
  into ``mail.log``;
- the journal alone when there is no ``mail.log`` (Debian 12 installs no
  rsyslog): facility ``mail`` (every Postfix program, the quarantine's audit
  lines) and the ``mail-filter.service`` unit.

A line read twice (a file and the journal) is shown once.  Only regular files
are read (a FIFO or a device is a problem noted).  Every line is read at most
:data:`filter.maillog.MAX_LINE` bytes at a time; a longer one is skipped, up to
:data:`MAX_SKIP` bytes, past which the rest of its source is given up.  A damaged
rotation is a problem noted too, and the other files are read.
Compressed rotations (gzip, bzip2, xz: told by their first bytes) are read as
a stream, never whole.  Everything printed passes through ``printable`` (log
lines carry what senders chose); ``--json`` is ASCII with escapes.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import heapq
import io
import json
import lzma
import os
import re
import stat
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO, TextIO

from filter import config as config_mod
from filter import qopen
from filter.config import Config, ConfigError
from filter.maillog import (
    MAX_LINE,
    Event,
    Kind,
    YearGuess,
    event_of,
    parse_journal,
    parse_line,
)
from filter.qdir import release_of
from filter.qstore import QuarantineStore
from filter.quarantine import NotFound, QuarantineError
from filter.quarantine_cli import parse_since, printable
from filter.tracing import Criteria, Tracer, as_json, criteria_for, local_time, render

DEFAULT_LOG = Path("/var/log/mail.log")
DEFAULT_CONFIG = Path("/etc/mail-filter/filter.toml")
JOURNALCTL = "journalctl"
FILTER_UNIT = "mail-filter.service"
MAIL_FACILITY = "2"  # syslog(3) LOG_MAIL: every Postfix program, and our audit lines
MARGIN = 3600.0
"""Seconds read before ``--since`` and after ``--until``, so a message crossing the edge
shows whole (it is listed only if one of its lines falls inside)."""
EX_NOINPUT = 66  # sysexits.h: no log could be read
EX_CONFIG = 78
NOTHING = 1
MAX_SKIP = 16 * 1024 * 1024
"""Bytes of one overlong line skipped at most before the rest of its source is given up
(a log of mail has no such line: it is not a log, or it is damaged)."""
_ROTATED = re.compile(
    r"\.(?P<n>\d{1,4})(?:\.(?:gz|bz2|xz))?|-(?P<date>\d{8,10})(?:\.(?:gz|bz2|xz))?"
)
_QUEUED_AS = re.compile(r"\bqueued as (?P<id>[0-9A-Za-z]{5,64})")

HELP = """\
Follow messages through Postfix's log, the filter's log and the quarantine, and
print one timeline per message: received from whom (and the SASL login),
scanned with which verdict, held or re-injected under which queue id, then
delivered, deferred or bounced.

QUERY is a Postfix queue id (this gateway's, or the next hop's "queued as"), a
<Message-ID>, a quarantine id, or an address (sender, recipient or login;
@example.com for a whole domain).  --from and --to narrow further: "the mail
from X to Y" is --from X --to Y.

Without --log or --journal: /var/log/mail.log and its rotations if it exists
(and the journal of mail-filter.service for the filter's lines), else the
journal.
"""
EXIT = """\
exit status: 0 something matched; 1 nothing did; 2 nothing to look for or a
bad --since/--until; 66 no log could be read; 78 a bad --config.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``trace`` subcommand."""
    trace = sub.add_parser(
        "trace",
        help="follow a message through the logs and the quarantine",
        description=HELP,
        epilog=EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trace.add_argument("query", nargs="?", help="queue id, <Message-ID>, quarantine id or address")
    trace.add_argument(
        "--from", dest="senders", action="append", default=[], metavar="ADDR",
        help="only from this envelope sender (@domain: any of it; repeatable)",
    )  # fmt: skip
    trace.add_argument(
        "--to", dest="recipients", action="append", default=[], metavar="ADDR",
        help="only to this recipient (@domain: any of it; repeatable)",
    )  # fmt: skip
    trace.add_argument(
        "--since", metavar="WHEN", help="only messages with a line since: 2026-11-28, 12h, 7d"
    )
    trace.add_argument(
        "--until", metavar="WHEN", help="only messages with a line before this (same forms)"
    )
    trace.add_argument(
        "--log", action="append", default=[], type=Path, metavar="FILE",
        help="read this log file and its rotations (repeatable; any of the formats)",
    )  # fmt: skip
    trace.add_argument("--journal", action="store_true", help="read the journal (journalctl)")
    trace.add_argument(
        "--config", type=Path, metavar="FILE",
        help=f"for the quarantine and the filter's address (default {DEFAULT_CONFIG} if present)",
    )  # fmt: skip
    trace.add_argument("--json", action="store_true", help="one JSON object per message")
    trace.add_argument("--lines", action="store_true", help="show each step's log line too")
    trace.add_argument(
        "--limit", type=int, default=1000, metavar="N",
        help="show at most this many messages (1000)",
    )  # fmt: skip


# -- sources ---------------------------------------------------------------------------------


def rotation_order(base: str, names: Iterable[str]) -> list[str]:
    """``base`` and its rotations among ``names``, oldest first (``base`` itself last).

    ``mail.log.2.gz`` is older than ``mail.log.1`` (logrotate's numbers), and
    ``mail.log-20261130.gz`` older than ``mail.log-20261201`` (``dateext``).
    """
    numbered: list[tuple[int, str]] = []
    dated: list[tuple[str, str]] = []
    for name in names:
        if not name.startswith(base):
            continue
        match = _ROTATED.fullmatch(name[len(base) :])
        if match is None:
            continue
        if match["n"] is not None:
            numbered.append((int(match["n"]), name))
        else:
            dated.append((match["date"], name))
    return (
        [name for _, name in sorted(dated)]
        + [name for _, name in sorted(numbered, reverse=True)]
        + ([base] if base in names else [])
    )


def with_rotations(path: Path) -> list[Path]:
    """``path`` and its rotations in its directory, oldest first."""
    try:
        names = {entry.name for entry in os.scandir(path.parent)}
    except OSError:
        names = set()
    names.add(path.name)  # a missing file is reported when it is opened
    return [path.parent / name for name in rotation_order(path.name, names)]


def _open_any(raw: io.BufferedReader) -> io.BufferedIOBase:
    """The stream, decompressed as it is read if its first bytes say gzip, bzip2 or xz."""
    head = raw.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, "rb")
    return raw


class OverlongLine(ValueError):
    """A line ran past :data:`MAX_SKIP` bytes without an end: its source is given up."""


def bounded_lines(
    stream: IO[bytes] | io.BufferedIOBase, limit: int = MAX_LINE, skip: int = MAX_SKIP
) -> Iterator[bytes]:
    """The stream's lines, each read at most ``limit`` bytes at a time; longer ones skipped,
    up to ``skip`` bytes of one line (past that :class:`OverlongLine`: ``/dev/zero`` ends)."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line
            continue
        skipped = len(line)
        while line and not line.endswith(b"\n"):  # the rest of the long line, piece by piece
            if skipped > skip:
                raise OverlongLine(f"a line of over {skip} bytes")
            line = stream.readline(limit + 1)
            skipped += len(line)


@dataclass
class Reading:
    """What was read, for the closing note: sources, lines, the span of time, trouble."""

    sources: list[str] = field(default_factory=list)
    lines: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    problems: list[str] = field(default_factory=list)

    def saw(self, at: float) -> None:
        self.first, self.last = min(self.first, at), max(self.last, at)


def _in_window(lines: Iterable[Event], since: float | None, until: float | None) -> Iterator[Event]:
    low = since - MARGIN if since is not None else None
    high = until + MARGIN if until is not None else None
    for event in lines:
        if low is not None and event.at < low:
            continue
        if high is not None and event.at >= high:
            if event.at >= high + MARGIN:
                return  # a file is in time order: nothing later is wanted
            continue
        yield event


def file_events(
    path: Path, reading: Reading, since: float | None, until: float | None
) -> Iterator[Event]:
    """The events of one log file (plain or compressed), streamed.

    Only a regular file is read (a symlink to one is, as rotated logs often are): a
    FIFO, a device or a directory is a problem noted, and the other files are read on.
    It is opened without blocking (a FIFO would wait for a writer in ``open``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        reading.problems.append(f"{path}: {err.strerror}")
        return
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        reading.problems.append(f"{path}: not a regular file, not read")
        return
    with os.fdopen(fd, "rb") as raw:
        if since is not None and info.st_mtime < since - MARGIN:
            return  # last written before the window: every line in it is older
        reading.sources.append(str(path))
        years = YearGuess(info.st_mtime)
        before = reading.lines
        try:
            with _open_any(raw) as stream:
                yield from _in_window(_parsed(bounded_lines(stream), years, reading), since, until)
        except (OSError, EOFError, lzma.LZMAError, zlib.error, OverlongLine) as err:
            # a damaged rotation (gzip's zlib.error is no OSError), or not a log at all
            done = reading.lines - before
            reading.problems.append(f"{path}: unreadable after {done} lines ({err})")


def _parsed(lines: Iterable[bytes], years: YearGuess, reading: Reading) -> Iterator[Event]:
    for raw in lines:
        reading.lines += 1
        line = parse_line(raw.decode("utf-8", "backslashreplace"), years)
        if line is None:
            continue
        reading.saw(line.at)
        event = event_of(line)
        if event is not None:
            yield event


def journal_command(since: float | None, until: float | None, filter_only: bool) -> list[str]:
    """The ``journalctl`` command line: JSON, the window, and which lines."""
    command = [JOURNALCTL, "--output=json", "--no-pager", "--quiet"]
    if since is not None:
        command.append(f"--since=@{int(since - MARGIN)}")
    if until is not None:
        command.append(f"--until=@{int(until + MARGIN) + 1}")
    if filter_only:
        return [*command, f"_SYSTEMD_UNIT={FILTER_UNIT}"]
    # "+" joins alternatives (journalctl(1)): the mail facility, or the filter's unit.
    return [*command, f"SYSLOG_FACILITY={MAIL_FACILITY}", "+", f"_SYSTEMD_UNIT={FILTER_UNIT}"]


def journal_events(
    command: Sequence[str], reading: Reading, since: float | None, until: float | None
) -> Iterator[Event]:
    """The events of ``journalctl -o json``, read from its output as it comes."""
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        except OSError as err:
            reading.problems.append(f"{command[0]}: {err.strerror}")
            return
        reading.sources.append("the journal")
        before = reading.lines
        try:
            assert proc.stdout is not None
            for raw in bounded_lines(proc.stdout):
                reading.lines += 1
                line = parse_journal(raw.decode("utf-8", "backslashreplace"))
                if line is None:
                    continue
                reading.saw(line.at)
                event = event_of(line)
                if event is not None and _wanted(event.at, since, until):
                    yield event
        except OverlongLine as err:
            reading.problems.append(f"journalctl: gave up its output ({err})")
        finally:
            if proc.poll() is None:
                proc.kill()  # we stopped early (or were interrupted): it has nothing more to say
            if proc.stdout is not None:
                proc.stdout.close()
            code = proc.wait()
        if reading.lines == before:
            errors.seek(0)
            said = errors.read(2048).decode("utf-8", "backslashreplace").strip()
            if code != 0:
                reading.problems.append(f"journalctl exited {code}: {said or 'no reason given'}")
            else:  # journalctl shows a user only their own lines, without a word
                reading.problems.append(
                    "the journal gave no lines (the system's are for root and the groups"
                    " adm and systemd-journal)"
                )


def _wanted(at: float, since: float | None, until: float | None) -> bool:
    return (since is None or at >= since - MARGIN) and (until is None or at < until + MARGIN)


def sources(args: argparse.Namespace, reading: Reading) -> list[Iterator[Event]]:
    """Every stream of events to merge by time, as the options (or the defaults) say: one per
    log file with its rotations (read oldest first), and the journal's."""
    since, until = args.since_at, args.until_at
    streams: list[Iterator[Event]] = []
    seen: set[Path] = set()
    logs = args.log or ([DEFAULT_LOG] if not args.journal and DEFAULT_LOG.exists() else [])
    for path in logs:
        chain = []
        for each in with_rotations(path):
            key = each.resolve()
            if key not in seen:  # a shell glob (mail.log*) names rotations too
                seen.add(key)
                chain.append(each)
        streams.append(_chain(chain, reading, since, until))
    if args.journal or not args.log:
        # Beside mail.log the journal has only the filter's lines to add.
        command = journal_command(since, until, filter_only=not args.journal and bool(logs))
        streams.append(journal_events(command, reading, since, until))
    return streams


def _chain(
    paths: Sequence[Path], reading: Reading, since: float | None, until: float | None
) -> Iterator[Event]:
    for path in paths:
        yield from file_events(path, reading, since, until)


# -- the quarantine --------------------------------------------------------------------------


class QuarantineLookup:
    """What the quarantine says about a held message, as events for its timeline.

    Read only: ``get`` of an entry's metadata (never its message, never audited).
    An entry that cannot be read is said on stderr; a database that cannot be
    reached is said once, then left alone.
    """

    def __init__(self, store: QuarantineStore, reading: Reading) -> None:
        self.store = store
        self.reading = reading
        self.broken = False

    def __call__(self, quarantine_id: str) -> list[Event]:
        if self.broken:
            return []
        try:
            entry = self.store.get(quarantine_id)
        except NotFound:
            return []
        except OSError as err:  # the database is down (StoreUnavailable): no use asking again
            self.broken = True
            self.reading.problems.append(f"quarantine not read: {err}")
            return []
        except QuarantineError as err:  # this entry (unreadable, malformed): said, skipped
            self.reading.problems.append(f"quarantine: {err}")
            return []
        subject = f", subject {entry.subject!r}" if entry.subject else ""
        held = Event(
            entry.received_at, Kind.HELD, queue_id=entry.queue_id if entry.queue_id != "-" else "",
            line=f"quarantine entry {entry.id}", sender=entry.mail_from,
            recipients=tuple(entry.recipients), quarantine_ids=(entry.id,), size=entry.size,
            text=f"held as {entry.id}: {entry.category}, {entry.reason}{subject}",
        )  # fmt: skip
        events = [held]
        for record in entry.releases:
            release = release_of(record)
            queued = _QUEUED_AS.search(release.reply)
            state = "" if release.confirmed else " (not confirmed)"
            said = release.reply or "no reply recorded"
            text = f"released{state} by {release.by} from {release.address}"
            released = Event(
                release.at, Kind.RELEASED, line=f"release of {entry.id} at {release.at}",
                recipients=release.to, quarantine_ids=(entry.id,), user=release.by,
                next_id=queued["id"] if queued else "",
                text=f"{text} to {', '.join(release.to)}: {said}",
            )  # fmt: skip
            events.append(released)
        return events


# -- the command -----------------------------------------------------------------------------


def _emit(text: str, stream: TextIO | None = None) -> None:
    """Print ``text`` (already escaped); what the stream's encoding lacks as escapes."""
    out = sys.stdout if stream is None else stream
    encoding = out.encoding or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=out)


def _config(path: Path | None) -> Config | None:
    """The configuration: ``--config`` (errors are fatal), else the default if readable."""
    if path is not None:
        return config_mod.load(path)
    try:
        return config_mod.load(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None
    except (ConfigError, OSError):
        return None  # not ours to fix here: the trace works without the quarantine


def criteria(args: argparse.Namespace) -> Criteria:
    """The command line as criteria (QUERY, --from, --to, the window)."""
    base = criteria_for(args.query) if args.query else Criteria()
    return Criteria(
        ids=base.ids, message_ids=base.message_ids, quarantine_ids=base.quarantine_ids,
        addresses=base.addresses, senders=tuple(a.lower() for a in args.senders),
        recipients=tuple(a.lower() for a in args.recipients),
        since=args.since_at, until=args.until_at,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Carry out ``mail-filter trace``: the exit status (see :data:`EXIT`)."""
    try:
        args.since_at = parse_since(args.since) if args.since else None
        args.until_at = parse_since(args.until) if args.until else None
    except QuarantineError as err:
        _emit(f"mail-filter trace: {printable(str(err))}", sys.stderr)
        return 2
    wanted = criteria(args)
    if wanted.empty:
        _emit("mail-filter trace: give a QUERY, --from or --to", sys.stderr)
        return 2
    try:
        cfg = _config(args.config)
    except (ConfigError, OSError) as err:
        _emit(f"mail-filter trace: configuration error: {printable(str(err))}", sys.stderr)
        return EX_CONFIG
    reading = Reading()
    store: QuarantineStore | None = None
    if cfg is not None:
        try:
            store = qopen.open_store(cfg.quarantine)
        except ConfigError as err:
            reading.problems.append(f"quarantine not read: {err}")
    try:
        return _trace(args, wanted, cfg, store, reading)
    finally:
        if store is not None:
            store.close()


def _trace(
    args: argparse.Namespace,
    wanted: Criteria,
    cfg: Config | None,
    store: QuarantineStore | None,
    reading: Reading,
) -> int:
    lookup = QuarantineLookup(store, reading) if store is not None else None
    listen = [cfg.server.listen] if cfg is not None else None  # None: loopback, see Tracer
    tracer = Tracer(wanted, filter_addresses=listen, lookup=lookup, limit=max(1, args.limit))
    if lookup is not None:
        for held in sorted(wanted.quarantine_ids):  # found even if its lines are gone
            tracer.seed(lookup(held))
    streams = sources(args, reading)
    for event in heapq.merge(*streams, key=attrgetter("at")):
        tracer.add(event)
    timelines = tracer.finish()
    for number, timeline in enumerate(timelines):
        if args.json:
            print(json.dumps(as_json(timeline), ensure_ascii=True))
        else:
            if number:
                print()
            for text in render(timeline, lines=args.lines):
                _emit(printable(text))
    for problem in reading.problems:
        _emit(f"mail-filter trace: {printable(problem)}", sys.stderr)
    if tracer.more:
        _emit(
            f"mail-filter trace: {tracer.more} more message(s) matched; narrow the search"
            " (--since, --until, --from, --to) or raise --limit",
            sys.stderr,
        )
    if not reading.sources:
        _emit("mail-filter trace: no log could be read", sys.stderr)
        return EX_NOINPUT
    if not timelines:
        _emit(printable(_nothing(reading)), sys.stderr)
        return NOTHING
    return 0


def _nothing(reading: Reading) -> str:
    span = ""
    if reading.lines and reading.first <= reading.last:
        span = f", {local_time(reading.first)} to {local_time(reading.last)}"
    return (
        f"mail-filter trace: nothing matched in {reading.lines} lines"
        f" ({', '.join(reading.sources)}{span})"
    )
