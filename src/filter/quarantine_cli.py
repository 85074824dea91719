"""``mail-filter quarantine ...``: list, show, release, delete and expire held mail.

This module owns the administrator's side of the quarantine: reading the
store named in the config, printing entries, and releasing one by re-injecting
it with its original envelope (or to ``--to``) through the re-injection
listener (127.0.0.1:10025, which has no content filter), then recording the
release so a second one is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime

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
    for name, text in (("show", "print a held message"), ("delete", "delete a held message")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id")
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


def _line(e: Entry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.received_at))
    released = " released" if e.released else ""
    score = f" score={e.score:.2f}" if e.score is not None else ""
    return (
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


def _error(err: QuarantineError) -> None:
    print(f"mail-filter quarantine: {err}", file=sys.stderr)


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
                print(_line(entry))
                count += 1
            also = f", {len(skipped)} entries skipped" if skipped else ""
            print(f"{count} message(s) in {store.directory}{also}", file=sys.stderr)
        elif args.action == "show":
            entry = store.get(args.id)
            message = store.message(entry.id)  # both read before anything is printed
            print(_line(entry))
            sys.stdout.flush()
            sys.stdout.buffer.write(message)
        elif args.action == "release":
            entry = store.get(args.id)
            store.check_not_released(entry)
            message = store.message(entry.id)  # refused before anything is connected
            reply = asyncio.run(_release(cfg, store, entry, message, args.to))
            print(f"{entry.id} released to {', '.join(args.to or entry.recipients)}: {reply}")
        elif args.action == "delete":
            store.delete(args.id)
            print(f"{args.id} deleted")
        elif args.action == "expire":
            days = args.older_than if args.older_than is not None else cfg.quarantine.max_age_days
            deleted = store.expire(days, on_skip=skip)
            also = f"; {len(skipped)} kept, see above" if skipped else ""
            print(f"{deleted} entries older than {days:g} days deleted{also}")
            return 1 if skipped else 0
    except QuarantineError as err:
        _error(err)
        return 1
    return 0
