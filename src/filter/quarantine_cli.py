"""``mail-filter quarantine ...``: list, show, release, delete and expire held mail.

This module owns the administrator's side of the quarantine: reading the
store named in the config, printing entries, and releasing one by re-injecting
it with its original envelope (or to ``--to``) through the re-injection
listener (127.0.0.1:10025, which has no content filter), then recording the
release so a second one is refused.

Everything printed that came from a message or from the store (addresses,
reasons, the message in ``show``, server replies, even file names in errors)
goes through ``printable`` first: a hostile sender's ESC or CSI sequences, CRs
and bidi overrides would otherwise act on the administrator's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from typing import TextIO

from filter.config import Config, split_listen
from filter.quarantine import Entry, QuarantineError, Store
from filter.smtp_out import Reinjector


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``quarantine`` subcommand and its actions."""
    q = sub.add_parser("quarantine", help="list, show, release, delete or expire held mail")
    q.add_argument("--config", help="TOML file (default /etc/mail-filter/filter.toml if present)")
    actions = q.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="list held messages")
    ls.add_argument("--since", help="only newer: 2026-11-28, '2026-11-28 10:00', 12h, 7d")
    ls.add_argument("--category", choices=("virus", "banned", "unchecked", "spam", "bad_header"))
    show = actions.add_parser("show", help="print a held message (control characters escaped)")
    show.add_argument("id")
    show.add_argument(
        "--raw", action="store_true", help="the message's exact bytes only (for a file or a pipe)"
    )
    delete = actions.add_parser("delete", help="delete a held message")
    delete.add_argument("id")
    rel = actions.add_parser("release", help="deliver a held message after all")
    rel.add_argument("id")
    rel.add_argument("--to", action="append", help="deliver to this address instead (repeatable)")
    exp = actions.add_parser("expire", help="delete entries older than quarantine.max_age_days")
    exp.add_argument("--older-than", type=float, help="days (default: quarantine.max_age_days)")


def parse_since(text: str, now: float | None = None) -> float:
    """``12h``, ``7d``, ``30m`` ago, or an ISO date/time; as a Unix time."""
    now = time.time() if now is None else now
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise QuarantineError(f"--since {text!r}: use 12h, 7d or a date like 2026-11-28") from None


def _escaped(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, keep: str = "") -> str:
    """``text`` with each character a terminal could act on escaped, as ``\\x1b`` or ``\\u202e``.

    ``str.isprintable`` is False for exactly those: C0 and C1 controls (ESC, CSI
    ``\\x9b``, CR, BEL), format characters (bidi overrides, zero-width ones),
    lone surrogates, line separators and spaces other than ' '; it is True for
    letters, digits, marks and symbols of every script, which stay readable.
    ``keep``: characters let through anyway (``show`` keeps tabs).
    """
    if text.isprintable():  # the common case, without building a new string
        return text
    return "".join(c if c.isprintable() or c in keep else _escaped(c) for c in text)


def _message_text(message: bytes) -> str:
    """A message for the terminal: CRLF as line ends, bytes not UTF-8 as ``\\xNN``."""
    lines = message.decode("utf-8", "backslashreplace").split("\n")
    return "\n".join(printable(line.removesuffix("\r"), keep="\t") for line in lines)


def _emit(text: str, stream: TextIO | None = None) -> None:
    """Print ``text``; what the stream's encoding lacks (a Latin-1 locale) as escapes."""
    out = sys.stdout if stream is None else stream
    encoding = out.encoding or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=out)


def _error(err: QuarantineError) -> None:
    _emit(f"mail-filter quarantine: {printable(str(err))}", sys.stderr)


def _line(e: Entry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.received_at))
    released = " released" if e.released else ""
    score = f" score={e.score:.2f}" if e.score is not None else ""
    return printable(
        f"{e.id}  {when}  {e.category:<10} <{e.mail_from}> -> {', '.join(e.recipients)}"
        f"  {e.size}B{score}  {e.reason}{released}"
    )


async def _release(
    cfg: Config, store: Store, entry: Entry, message: bytes, to: list[str] | None
) -> str:
    host, port = split_listen(cfg.reinject.address)
    reinjector = Reinjector(host, port, helo=cfg.server.name, timeout=cfg.reinject.timeout)
    recipients = to or entry.recipients
    try:
        delivery = await reinjector.send(entry.mail_from, recipients, message)
    finally:
        await reinjector.close()
    if delivery.error:
        raise QuarantineError(f"release failed: {delivery.error}")
    assert delivery.data is not None
    if not delivery.data.ok:
        raise QuarantineError(f"release refused by {cfg.reinject.address}: {delivery.data}")
    # Record what was delivered even if some recipients were refused, so a second
    # release cannot deliver twice to the others.
    store.record_release(entry.id, delivery.accepted, str(delivery.data))
    refused = [f"<{r}>: {reply}" for r, reply in delivery.recipients.items() if not reply.ok]
    return str(delivery.data) + (f"; refused {'; '.join(refused)}" if refused else "")


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Carry out one quarantine action; 0 on success, 1 on a refused or failed one.

    ``list`` reports each entry it cannot trust on stderr, skips it and still
    exits 0; ``expire`` exits 1 if it had to keep any (the timer's unit fails, so
    someone looks).
    """
    store = Store(cfg.quarantine.directory)
    skipped: list[QuarantineError] = []

    def skip(err: QuarantineError) -> None:
        skipped.append(err)
        _error(err)

    try:
        if args.action == "list":
            since = parse_since(args.since) if args.since else None
            count = 0
            for entry in store.entries(since, args.category, on_skip=skip):
                _emit(_line(entry))
                count += 1
            also = f", {len(skipped)} entries skipped" if skipped else ""
            _emit(printable(f"{count} message(s) in {store.directory}{also}"), sys.stderr)
        elif args.action == "show":
            entry = store.get(args.id)
            message = store.message(entry.id)  # both read before anything is printed
            if args.raw:
                sys.stdout.flush()
                sys.stdout.buffer.write(message)
            else:
                _emit(_line(entry))
                _emit(_message_text(message).removesuffix("\n"))
        elif args.action == "release":
            entry = store.get(args.id)
            store.check_not_released(entry)
            message = store.message(entry.id)  # refused before anything is connected
            reply = asyncio.run(_release(cfg, store, entry, message, args.to))
            to = ", ".join(args.to or entry.recipients)
            _emit(printable(f"{entry.id} released to {to}: {reply}"))
        elif args.action == "delete":
            store.delete(args.id)
            _emit(f"{args.id} deleted")
        elif args.action == "expire":
            days = args.older_than if args.older_than is not None else cfg.quarantine.max_age_days
            deleted = store.expire(days, on_skip=skip)
            also = f"; {len(skipped)} kept, see above" if skipped else ""
            _emit(f"{deleted} entries older than {days:g} days deleted{also}")
            return 1 if skipped else 0
    except QuarantineError as err:
        _error(err)
        return 1
    return 0
