"""``mail-filter quarantine ...``: list, show, release, delete, expire and reindex held mail.

This module owns the administrator's shell side of the quarantine: parsing the
command, printing entries, and exit codes.  Everything it does goes through
the store interface (:class:`filter.qstore.QuarantineStore`, the one the
config names: :mod:`filter.qopen`) and the actions the portal uses too
(:mod:`filter.qactions`): a release is claimed before it is re-injected through
the re-injection listener (127.0.0.1:10025, which has no content filter), so a
second one is refused, and every action writes its audit line (to
``quarantine.audit_log``), naming the Unix user (and ``sudo``'s caller) and the
SSH client's address, if any.

Everything printed that came from a message or from the store (addresses,
reasons, the message in ``show``, server replies, even file names in errors)
goes through ``printable`` first: a hostile sender's ESC or CSI sequences, CRs
and bidi overrides would otherwise act on the administrator's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import os
import pwd
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from filter import digest, qactions, qopen
from filter.config import Config, ConfigError, split_listen
from filter.qdir import DirectoryStore
from filter.qstore import Actor, QuarantineStore, Query
from filter.quarantine import Entry, QuarantineError
from filter.smtp_out import Reinjector
from mailgate.command import EX_CONFIG
from mailgate.config import override
from mailgate.state import load_secret

if TYPE_CHECKING:  # at run time only migrate imports it: it loads the PostgreSQL driver
    from filter.qmigrate import Report as MigrateReport


MIGRATE_HELP = """\
Copy everything this host's quarantine directory ([quarantine] directory of
--config) holds into the PostgreSQL database at --to: each message byte for
byte with its id and metadata, release records (a released message stays
released), release requests, the keys that recognise a retried delivery,
allow entries, spent release links and the digest's marks and start.  The
directory is only read, never changed.  It resumes: run it again after an
interruption, or after the switch to carry over what was held meanwhile; what
is there already is counted, never copied twice.

The database's password, CA certificate and timeout are [quarantine]
password_file, ca_file and timeout: put them in the config first (they are
ignored while store is ""); the switched config needs them too.  The database
needs the schema first: mail-filter db upgrade --url URL.
"""
MIGRATE_EXIT = """\
exit status: 0 everything is in the database; 1 some entries were skipped (the
directory store cannot trust them) or failed (the database refused them), each
named on stderr, or the database's schema is missing or another version;
75 the database cannot be reached or was lost, 130 interrupted (run it again:
it goes on where it stopped); 78 a bad --to or configuration.
"""
EX_TEMPFAIL = 75  # sysexits.h, as db upgrade's: the database did not answer; run it again


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``quarantine`` subcommand and its actions."""
    q = sub.add_parser("quarantine", help="list, show, release, delete or expire held mail")
    q.add_argument("--config", help="TOML file (default /etc/mail-filter/filter.toml if present)")
    actions = q.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="list held messages")
    ls.add_argument("--since", help="only newer: 2026-11-28, '2026-11-28 10:00', 12h, 7d")
    ls.add_argument("--category", choices=("virus", "banned", "unchecked", "spam", "bad_header"))
    ls.add_argument("--recipient", help="only held for this envelope recipient (exact)")
    ls.add_argument("--sender", help="only from senders containing this text")
    ls.add_argument("--subject", help="only with subjects containing this text")
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
    rel.add_argument(
        "--retry-unconfirmed",
        action="store_true",
        help="take over a release that was started but never confirmed (it may deliver twice)",
    )
    exp = actions.add_parser("expire", help="delete entries older than quarantine.max_age_days")
    exp.add_argument("--older-than", type=float, help="days (default: quarantine.max_age_days)")
    actions.add_parser("reindex", help="rebuild the quarantine's index from its files")
    mig = actions.add_parser(
        "migrate",
        help="copy this host's quarantine directory into a PostgreSQL database",
        description=MIGRATE_HELP,
        epilog=MIGRATE_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mig.add_argument(
        "--to", required=True, metavar="URL",
        help="the database: postgresql://USER@HOST:PORT/DATABASE (no password in it)",
    )  # fmt: skip
    dig = actions.add_parser(
        "digest", help="mail each recipient a list of their newly held spam, with release links"
    )
    dig.add_argument(
        "--dry-run", action="store_true", help="say who would get how many; send and mark nothing"
    )
    dig.add_argument(
        "--since", type=float, metavar="HOURS",
        help="list mail held in the last HOURS (default: since the last run; first run 24)",
    )  # fmt: skip
    for action in actions.choices.values():
        # Also accepted after the action (``quarantine list --config F``, as the digest
        # timer's unit writes it); SUPPRESS keeps an absent one from overwriting the
        # value given before it.
        action.add_argument("--config", default=argparse.SUPPRESS, help="TOML file")


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
    return "".join(c if c.isprintable() or c in keep else digest.escaped(c) for c in text)


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


def actor() -> Actor:
    """Who runs this: ``unix:root`` or ``unix:root(sudo:alice)``, from ``local`` or ``ssh:ADDR``.

    The SSH variables are the session's own word; they are audit context, not proof.
    """
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    who = f"unix:{name}"
    if os.environ.get("SUDO_USER"):
        who += f"(sudo:{os.environ['SUDO_USER']})"
    ssh = os.environ.get("SSH_CONNECTION", "").split()
    return Actor(who, f"ssh:{ssh[0]}" if ssh else "local")


@contextmanager
def audit_to(where: str) -> Iterator[None]:
    """Send the audit logger's lines to ``where`` (quarantine.audit_log) for one command."""
    handler: logging.Handler
    pid = os.getpid()  # not %(process)d: mailgate.logs may have turned that field off
    if where == "syslog" and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter(f"mail-filter[{pid}]: %(message)s"))
    elif where in ("syslog", "stderr"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("mail-filter: audit: %(message)s"))
    else:
        handler = logging.FileHandler(where, encoding="utf-8")
        handler.setFormatter(logging.Formatter(f"%(asctime)s mail-filter[{pid}]: %(message)s"))
    logger = qactions.audit_log
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _query(args: argparse.Namespace) -> Query:
    since = parse_since(args.since) if args.since else None
    return Query(
        recipient=args.recipient, sender=args.sender, subject=args.subject,
        category=args.category, since=since, oldest_first=True,
    )  # fmt: skip


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Carry out one quarantine action; 0 on success, 1 on a refused or failed one.

    ``list`` reports each entry it cannot trust on stderr, skips it and still
    exits 0; ``expire`` exits 1 if it had to keep any (the timer's unit fails, so
    someone looks).
    """
    if args.action == "migrate":
        return _migrate(args, cfg)
    try:
        store = qopen.open_store(cfg.quarantine)
    except ConfigError as err:
        _error(QuarantineError(str(err)))
        return 1
    try:
        with audit_to(cfg.quarantine.audit_log):
            return _run(args, cfg, store, actor())
    except OSError as err:
        _error(QuarantineError(f"audit log {cfg.quarantine.audit_log}: {err.strerror}"))
        return 1
    finally:
        store.close()


def _run(args: argparse.Namespace, cfg: Config, store: QuarantineStore, who: Actor) -> int:
    skipped: list[QuarantineError] = []

    def skip(err: QuarantineError) -> None:
        skipped.append(err)
        _error(err)

    try:
        if args.action == "list":
            query = _query(args)
            store.reconcile(on_skip=skip)  # the CLI's list also reports files it cannot index
            count = 0
            for entry in qopen.entries(store, query, on_skip=skip):
                _emit(_line(entry))
                count += 1
            also = f", {len(skipped)} entries skipped" if skipped else ""
            _emit(
                printable(f"{count} message(s) in {qopen.where(cfg.quarantine)}{also}"), sys.stderr
            )
        elif args.action == "show":
            entry, message = qactions.show(store, args.id, who)
            if args.raw:
                sys.stdout.flush()
                sys.stdout.buffer.write(message)
            else:
                _emit(_line(entry))
                _emit(_message_text(message).removesuffix("\n"))
        elif args.action == "release":
            host, port = split_listen(cfg.reinject.address)
            reinjector = Reinjector(host, port, helo=cfg.server.name, timeout=cfg.reinject.timeout)
            done = asyncio.run(_release(store, reinjector, args, who))
            reply = done.release.reply + (
                f"; refused {'; '.join(done.refused)}" if done.refused else ""
            )
            to = ", ".join(args.to or done.entry.recipients)
            _emit(printable(f"{done.entry.id} released to {to}: {reply}"))
        elif args.action == "delete":
            errors: list[QuarantineError] = []
            if not qactions.delete(store, [args.id], who, errors.append):
                raise errors[0]
            _emit(f"{args.id} deleted")
        elif args.action == "expire":
            days = args.older_than if args.older_than is not None else cfg.quarantine.max_age_days
            deleted = qactions.expire(store, days, who, on_skip=skip)
            also = f"; {len(skipped)} kept, see above" if skipped else ""
            _emit(f"{deleted} entries older than {days:g} days deleted{also}")
            return 1 if skipped else 0
        elif args.action == "digest":
            return _digest(args, cfg, store)
        elif args.action == "reindex":
            if not isinstance(store, DirectoryStore):
                raise QuarantineError("reindex: a database store has no separate index to rebuild")
            indexed, dropped = store.reindex(on_skip=skip)
            qactions.audit("reindex", who, "partial" if skipped else "ok",
                           indexed=indexed, dropped=dropped, refused=len(skipped))  # fmt: skip
            also = f"; {len(skipped)} refused, see above" if skipped else ""
            _emit(f"{indexed} entries indexed, {dropped} dropped{also}")
            return 1 if skipped else 0
    except QuarantineError as err:
        _error(err)
        return 1
    return 0


def _digest(args: argparse.Namespace, cfg: Config, store: QuarantineStore) -> int:
    """Run the digest: 0 if every digest went out, 1 if any failed (the next run retries)."""
    dcfg = cfg.digest
    sender = dcfg.sender or cfg.notices.sender or f"mail-filter@{cfg.server.name}"
    if not dcfg.portal_url:
        raise QuarantineError("digest.portal_url is not set: the links need the portal's address")
    if not dcfg.domains:
        raise QuarantineError(
            "digest.domains is not set: name the company's mail domains (digests go there only)"
        )
    if not digest.plausible_recipient(sender):
        raise QuarantineError(f"digest.sender {sender!r} is not a plain address")
    if dcfg.secret_file is None:
        raise QuarantineError("digest.secret_file is not set: the links are signed with it")
    try:
        secret = load_secret(dcfg.secret_file, "digest.secret_file")
    except ConfigError as err:
        raise QuarantineError(str(err)) from None
    if args.since is not None and not 0 < args.since <= 24 * 3650:
        raise QuarantineError(f"--since {args.since:g}: hours, more than 0")
    settings = digest.Settings(
        portal_url=dcfg.portal_url, sender=sender, hostname=cfg.server.name, secret=secret,
        categories=dcfg.categories, max_items=dcfg.max_items, link_days=dcfg.link_days,
        domains=dcfg.domains,
        keep_marks_days=max(cfg.quarantine.max_age_days, dcfg.link_days) + 1,
    )  # fmt: skip
    host, port = split_listen(cfg.reinject.address)
    reinjector = Reinjector(host, port, helo=cfg.server.name, timeout=cfg.reinject.timeout)

    async def go() -> digest.Summary:
        try:
            return await digest.run(
                store, reinjector, settings, since_hours=args.since, dry_run=args.dry_run,
                report=lambda line: _emit(printable(line)), on_skip=_error,
            )  # fmt: skip
        finally:
            await reinjector.close()

    summary = asyncio.run(go())
    _emit(summary.line(args.dry_run) + (" (dry run)" if args.dry_run else ""))
    return 1 if summary.failed else 0


async def _release(
    store: QuarantineStore, reinjector: Reinjector, args: argparse.Namespace, who: Actor
) -> qactions.Released:
    try:
        return await qactions.release(
            store, reinjector, args.id, who, args.to, retry_unconfirmed=args.retry_unconfirmed
        )
    finally:
        await reinjector.close()


def _migrate(args: argparse.Namespace, cfg: Config) -> int:
    """Copy the configured directory store into the database at ``--to`` (see MIGRATE_EXIT)."""
    # Imported here: the other commands never load the PostgreSQL driver for nothing.
    from filter import qmigrate, qpg

    try:
        try:
            target = override(cfg, "quarantine.store", args.to).quarantine
        except ConfigError as err:
            raise ConfigError(str(err).replace("quarantine.store", "--to", 1)) from None
        if not target.store:
            raise ConfigError("--to: a postgresql:// URL is needed")
        password = qpg.read_password(target.password_file)
    except (ConfigError, QuarantineError) as err:
        _emit(printable(f"mail-filter quarantine migrate: configuration error: {err}"), sys.stderr)
        return EX_CONFIG
    source = DirectoryStore(cfg.quarantine.directory)
    if not source.directory.is_dir():
        _error(QuarantineError(f"{source.directory}: no quarantine directory; nothing to migrate"))
        return 1
    params = qpg.conninfo(target.store, password, target.ca_file, target.timeout)
    params["application_name"] = "mail-filter migrate"
    who = actor()
    last = qmigrate.Report()
    tty = sys.stderr.isatty()

    def progress(report: qmigrate.Report) -> None:
        nonlocal last
        last = report
        if tty:
            print(f"\r{report.done}/{report.listed} entries", end="", file=sys.stderr, flush=True)

    def stopped(why: str) -> str:
        if not last.listed:
            return why  # before the first batch committed
        if tty:
            print(file=sys.stderr)
        return f"{why}; stopped after {last.done} of {last.listed} entries ({last.summary()})"

    fields: dict[str, object] = {"to": target.store}
    try:
        with audit_to(cfg.quarantine.audit_log):
            try:
                with qmigrate.connect(params) as conn:
                    report = qmigrate.migrate(
                        source, conn, on_skip=_error, on_fail=_error, progress=progress
                    )
            except qpg.SchemaMismatch as err:
                qactions.audit("migrate", who, "refused", **fields, why=str(err))
                _error(QuarantineError(f"{err} (for this database: {_upgrade_hint(args)})"))
                return 1
            except qpg.StoreUnavailable as err:
                qactions.audit("migrate", who, "failed", **fields, why=str(err))
                _error(QuarantineError(stopped(f"{err}") + "; run it again to go on"))
                return EX_TEMPFAIL
            except QuarantineError as err:
                qactions.audit("migrate", who, "failed", **fields, why=str(err))
                _error(QuarantineError(stopped(f"{err}")))
                return 1
            except KeyboardInterrupt:
                qactions.audit("migrate", who, "interrupted", **fields)
                _error(QuarantineError(stopped("interrupted") + "; run it again to go on"))
                return 130
            if tty:
                print(file=sys.stderr)
            result = "partial" if report.skipped or report.failed else "ok"
            qactions.audit(
                "migrate", who, result, **fields, copied=report.copied, already=report.already,
                skipped=report.skipped, failed=report.failed,
            )  # fmt: skip
    except OSError as err:
        _error(QuarantineError(f"audit log {cfg.quarantine.audit_log}: {err.strerror}"))
        return 1
    finally:
        source.close()
    switched = cfg.quarantine.store == target.store
    for line in _migrated(report, str(source.directory), target.store, switched):
        _emit(printable(line))
    return 1 if report.skipped or report.failed else 0


def _upgrade_hint(args: argparse.Namespace) -> str:
    config = f" --config {args.config}" if args.config else ""
    return f"mail-filter db upgrade{config} --url {args.to}"


def _migrated(report: MigrateReport, directory: str, url: str, switched: bool) -> list[str]:
    """What a finished run says: its counts, then how to switch (unless ``switched``)."""
    updated = f"; {report.updated} of those brought up to date" if report.updated else ""
    start = "none in the directory"
    if report.digest_start is not None:
        start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.digest_start))
    lines = [
        f"{directory} -> {url}: {report.summary()} (of {report.listed}){updated}",
        f"allow entries {report.allow}; spent release links {report.spent_links};"
        f" digest marks {report.digest_marks}; next digest from {start};"
        f" retry keys set {report.hold_keys}",
    ]
    if report.skipped or report.failed:
        lines.append("Look at the entries named above: they are not in the database.")
    if switched:
        lines += [
            "The directory is left as it was. [quarantine] store names this database already:",
            "once mail-filter and mail-filter-portal run with it, nothing more is held in the",
            "directory; keep it as a backup, or move it away.",
        ]
    else:
        lines += [
            "The directory is left as it was. To switch this host to the database, set in",
            "[quarantine]",
            f'    store = "{url}"',
            "(password_file, ca_file and timeout stay as they are), restart mail-filter and",
            "mail-filter-portal, then run this command again: it copies what was held here",
            "meanwhile.",
        ]
    return lines
