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


async def _release(cfg: Config, store: Store, entry: Entry, to: list[str] | None) -> str:
    host, port = split_listen(cfg.reinject.address)
    reinjector = Reinjector(host, port, helo=cfg.server.name, timeout=cfg.reinject.timeout)
    recipients = to or entry.recipients
    try:
        delivery = await reinjector.send(entry.mail_from, recipients, store.message(entry.id))
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
    """Carry out one quarantine action; 0 on success, 1 on a refused or failed one."""
    store = Store(cfg.quarantine.directory)
    try:
        if args.action == "list":
            since = parse_since(args.since) if args.since else None
            count = 0
            for entry in store.entries(since, args.category):
                print(_line(entry))
                count += 1
            print(f"{count} message(s) in {store.directory}", file=sys.stderr)
        elif args.action == "show":
            print(_line(store.get(args.id)))
            sys.stdout.flush()
            sys.stdout.buffer.write(store.message(args.id))
        elif args.action == "release":
            entry = store.get(args.id)
            store.check_not_released(entry)
            reply = asyncio.run(_release(cfg, store, entry, args.to))
            print(f"{entry.id} released to {', '.join(args.to or entry.recipients)}: {reply}")
        elif args.action == "delete":
            store.delete(args.id)
            print(f"{args.id} deleted")
        elif args.action == "expire":
            days = args.older_than if args.older_than is not None else cfg.quarantine.max_age_days
            print(f"{store.expire(days)} entries older than {days:g} days deleted")
    except QuarantineError as err:
        print(f"mail-filter quarantine: {err}", file=sys.stderr)
        return 1
    return 0
