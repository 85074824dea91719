"""The ``mail-filter`` command: argument parsing, logging setup and exit codes.

Subcommands: ``serve`` (the content filter), ``check-config FILE``,
``quarantine ...``, ``learn``, ``portal`` (the quarantine's web pages),
``db upgrade`` (the quarantine database's schema, with ``[quarantine] store``
or ``--url``) and ``trace QUERY`` (a message's way through the logs:
:mod:`filter.trace_cli`).
Exit code 78 (EX_CONFIG) for a bad configuration; ``learn`` exits 75
(EX_TEMPFAIL) when its shared store (``[state]``) cannot be reached at the
start, and 0 when another gateway host holds the learn lock.
``import-amavis`` exits as :mod:`filter.amavis_import` says (0, 1, 2, 66, 73).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

from filter import app, learn, quarantine_cli, shared, trace_cli
from filter.config import Config, ConfigError
from filter.quarantine import QuarantineError
from mailgate import command, logs
from mailgate.bounds import Deadline
from mailgate.state import StateUnavailable

EX_CONFIG = command.EX_CONFIG
EX_TEMPFAIL = 75  # sysexits.h: learn's shared store is unreachable; the next timer run retries
DEFAULT_CONFIG = Path("/etc/mail-filter/filter.toml")
log = logging.getLogger("filter")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mail-filter", description="after-queue content filter: clamd + spamd for Postfix"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the content filter")
    serve.add_argument(
        "--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG} if present)"
    )
    serve.add_argument("--listen", help="host:port Postfix sends mail to (server.listen)")
    serve.add_argument("--reinject", help="host:port of Postfix's re-injection listener")
    serve.add_argument("--clamd", help="unix:/path or host:port of clamd")
    serve.add_argument("--spamd", help="host:port or unix:/path of spamd")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)
    quarantine_cli.add_parser(sub)
    _add_import_amavis(sub)
    learn_p = sub.add_parser("learn", help="teach Bayes from the admin mailbox's spam/ham folders")
    learn_p.add_argument("--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG})")
    learn_p.add_argument(
        "--dry-run", action="store_true", help="count, teach nothing, change nothing"
    )
    portal = sub.add_parser("portal", help="serve the quarantine's web pages ([portal])")
    portal.add_argument(
        "--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG} if present)"
    )
    portal.add_argument("--listen", help="host:port to serve on (portal.listen)")
    db = sub.add_parser("db", help="the quarantine database ([quarantine] store)")
    db_actions = db.add_subparsers(dest="action", required=True)
    upgrade = db_actions.add_parser("upgrade", help="create or upgrade the database's tables")
    upgrade.add_argument(
        "--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG} if present)"
    )
    upgrade.add_argument(
        "--url",
        help="this database instead of quarantine.store (before `quarantine migrate --to URL`)",
    )
    # mail-filter trace: follow a message through the logs and the quarantine (issue 19).
    trace_cli.add_parser(sub)
    return parser


# -- import-amavis: amavisd-new's configuration into filter.toml (filter.amavis_import) --


def _add_import_amavis(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser(
        "import-amavis",
        help="turn an amavisd-new configuration into filter.toml and list files",
        description="Reads amavisd-new's configuration (never running Perl) and writes"
        " filter.toml and list files into --output, with a report of every setting that"
        " could not be carried over. Exit 0: all carried; 1: written, some not carried.",
    )
    imp.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH",
        help="/etc/amavis/conf.d (read as amavisd-new does) or amavisd.conf",
    )  # fmt: skip
    imp.add_argument("--output", required=True, type=Path, help="directory to write into")
    imp.add_argument("--force", action="store_true", help="replace files already there")
    imp.add_argument(
        "--root", type=Path,
        help="read files the configuration names (read_hash) under this directory, as if it"
        " were / (a copy of the old server's files)",
    )  # fmt: skip
    imp.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE",
        help="a value Perl computes at run time, e.g. --var mydomain=example.com",
    )  # fmt: skip
    imp.set_defaults(handler=_import_amavis)


def _import_amavis(args: argparse.Namespace) -> int:
    # Imported here: the daemon never loads the importer.
    from filter import amavis_import

    return amavis_import.run(
        args.paths, args.output, force=args.force, root=args.root, variables=args.var
    )


def _portal(args: argparse.Namespace) -> int:
    # Imported here: serve, learn and quarantine never load Starlette, Jinja2 or uvicorn.
    from filter.portal import app as portal_app

    return command.serve_command(
        "mail-filter-portal", args.config, DEFAULT_CONFIG, {"portal.listen": args.listen},
        portal_app.load_config, portal_app.serve,
    )  # fmt: skip


def _serve(args: argparse.Namespace) -> int:
    flags = {
        "server.listen": args.listen,
        "reinject.address": args.reinject,
        "clamd.address": args.clamd,
        "spamd.address": args.spamd,
    }
    return command.serve_command(
        "mail-filter", args.config, DEFAULT_CONFIG, flags, app.load_config,
        app.serve,
    )  # fmt: skip


def _check_config(args: argparse.Namespace) -> int:
    return command.check_config_command(
        "mail-filter", args.file, app.load_config,
        lambda cfg: f"listen {cfg.server.listen}, re-inject {cfg.reinject.address}",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mail-filter`` console script."""
    args = _parser().parse_args(argv)
    if getattr(args, "handler", None) is not None:  # import-amavis
        return int(args.handler(args))
    if args.command == "serve":
        return _serve(args)
    if args.command == "quarantine":
        return _quarantine(args)
    if args.command == "learn":
        return _learn(args)
    if args.command == "portal":
        return _portal(args)
    if args.command == "db":
        return _db_upgrade(args)
    if args.command == "trace":
        return trace_cli.run(args)
    return _check_config(args)


def _db_upgrade(args: argparse.Namespace) -> int:
    """Create or upgrade the quarantine database's schema: 0 done (or nothing to do),
    1 refused (a schema newer than this code), 75 unreachable, 78 bad configuration."""
    # Imported here: the other commands never load the PostgreSQL driver for nothing.
    from filter import qpg

    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        # --url: the schema for a migration, while this host still uses the directory.
        cfg = app.load_config(path, {"quarantine.store": args.url} if args.url else {})
        if not cfg.quarantine.store:
            raise ConfigError(
                "quarantine.store: not a database (the directory store has no schema)"
            )
        password = qpg.read_password(cfg.quarantine.password_file)
    except (ConfigError, QuarantineError) as err:
        print(f"mail-filter db upgrade: configuration error: {err}", file=sys.stderr)
        return EX_CONFIG
    params = qpg.conninfo(
        cfg.quarantine.store, password, cfg.quarantine.ca_file, cfg.quarantine.timeout
    )
    try:
        before, after = qpg.upgrade(params)
    except qpg.SchemaMismatch as err:
        print(f"mail-filter db upgrade: {err}", file=sys.stderr)
        return 1
    except qpg.StoreUnavailable as err:
        print(f"mail-filter db upgrade: {err}", file=sys.stderr)
        return EX_TEMPFAIL
    if before == after:
        print(f"quarantine database schema: version {after}, nothing to do")
    else:
        print(f"quarantine database schema: version {before or 'none'} -> {after}")
    return 0


def _learn(args: argparse.Namespace) -> int:
    logs.setup("mail-filter")
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        cfg = app.load_config(path, {})
        if not cfg.learn.imap_url or not cfg.learn.username:
            raise ConfigError("learn.imap_url and learn.username must be set")
    except ConfigError as err:
        log.error("configuration error: %s", err)
        return EX_CONFIG
    logging.getLogger().setLevel(cfg.logging.level.upper())
    started = time.monotonic()
    deadline = learn.run_deadline(cfg.learn)  # one for the whole run: IMAP, teachers, learner
    store: shared.SharedLearnStore | None = None
    if cfg.state.enabled:
        try:
            store = shared.open_learn_store(cfg.state, args.dry_run)
        except shared.LearnBusy as busy:
            # The timer runs on every host; the one holding the lock does the work.
            log.info("learn: another gateway host is learning (%s); not here", busy.holder)
            logs.flush_all()
            return 0
        except StateUnavailable as err:
            # Without the lock two hosts could learn the same messages: wait for Redis.
            log.error("learn: %s; not learning without the shared lock, try again later", err)
            logs.flush_all()
            return EX_TEMPFAIL
        except ConfigError as err:
            log.error("configuration error: %s", err)
            return EX_CONFIG
    try:
        return _learn_run(args, cfg, deadline, started, store)
    finally:
        if store is not None:
            shared.close_learn_store(store)


def _learn_run(
    args: argparse.Namespace,
    cfg: Config,
    deadline: Deadline,
    started: float,
    store: shared.SharedLearnStore | None,
) -> int:
    teach = (
        learn.sa_learn_teacher(cfg.learn, deadline)
        if cfg.learn.method == "sa-learn"
        else learn.spamd_teacher(cfg.learn, cfg.spamd.address, cfg.spamd.user, deadline)
    )
    many = (
        learn.sa_learn_batch_teacher(cfg.learn, deadline)
        if cfg.learn.method == "sa-learn"
        else None
    )
    learner = learn.Learner(
        cfg.learn, teach, teach_many=many, dry_run=args.dry_run,
        progress=sys.stderr.isatty(), deadline=deadline, store=store,
    )  # fmt: skip
    try:
        client = learn.connect(cfg.learn, deadline)
        try:
            totals = learner.run(client)
        finally:
            with contextlib.suppress(Exception):
                client.logout()
    except learn.LearnError as err:
        log.error("learn failed: %s", err)
        logs.flush_all()
        return 1
    log.info(
        "%s%s",
        learn.summary(totals, time.monotonic() - started),
        " (dry run)" if args.dry_run else "",
    )
    logs.flush_all()
    return 1 if totals.failed or totals.too_big or totals.skipped_folders else 0


def _quarantine(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
    try:
        cfg = app.load_config(path, {})
    except ConfigError as err:
        print(f"mail-filter: {err}", file=sys.stderr)
        return EX_CONFIG
    return quarantine_cli.run(args, cfg)


if __name__ == "__main__":
    sys.exit(main())
