"""The ``saslimap`` command: argument parsing, logging setup and exit codes.

Subcommands: ``serve`` (the daemon), ``check-config FILE``, ``test`` (a
``testsaslauthd`` equivalent), ``flush`` (the state shared between gateway
hosts in Redis) and ``import-saslauthd`` (a configuration written from
``/etc/default/saslauthd``, with a report).  Exit codes follow sysexits: 78
(EX_CONFIG) for a bad configuration, which systemd units list in
``RestartPreventExitStatus``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import textwrap
from pathlib import Path

from mailgate import command
from mailgate.errors import ConfigError
from mailgate.state import StateUnavailable, for_tool
from saslimap import app, import_saslauthd, saslauthd_client, shared
from saslimap.config import Config, ServerConfig

EX_CONFIG = command.EX_CONFIG
EX_UNAVAILABLE = 69  # sysexits.h: a service this command needs is down
EX_NOINPUT = 66  # sysexits.h: the file to import cannot be read
EX_CANTCREAT = 73  # sysexits.h: the output file exists (without --force) or cannot be written
DEFAULT_CONFIG = Path("/etc/saslimap/saslimap.toml")
SASLAUTHD_DEFAULTS = Path("/etc/default/saslauthd")
# Debian's file is about 2.5 kB; anything near this is not a defaults file.
MAX_IMPORT_BYTES = 64 * 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saslimap",
        description="saslauthd-compatible daemon that checks passwords against an IMAP server",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG} if present)"
    )
    serve.add_argument("--socket", help="mux socket path (overrides server.socket)")
    serve.add_argument(
        "--imap", help="imaps://host[:port], imap://host (STARTTLS), imap+plaintext://host"
    )
    serve.add_argument(
        "--ca-file", help="CA certificates for the IMAP server (overrides imap.ca_file)"
    )

    flush = sub.add_parser(
        "flush",
        help="forget what the gateway hosts share in Redis (limits and caches); "
        "SIGHUP flushes one host's own memory",
    )
    flush.add_argument(
        "--config", type=Path, help=f"TOML file (default {DEFAULT_CONFIG} if present)"
    )
    which = flush.add_mutually_exclusive_group()
    which.add_argument("--user", help="only this IMAP user's entries (every realm and service)")
    which.add_argument("--address", help="only this client address's per-IP limit")

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file", type=Path)

    imp = sub.add_parser(
        "import-saslauthd",
        help="write a configuration from saslauthd's settings, reporting what was not carried",
    )
    imp.add_argument(
        "path", type=Path, nargs="?", default=SASLAUTHD_DEFAULTS,
        help=f"saslauthd's defaults file (default {SASLAUTHD_DEFAULTS})",
    )  # fmt: skip
    imp.add_argument(
        "--output", "-o", type=Path, required=True,
        help="the TOML file to write (refused if it exists, unless --force)",
    )  # fmt: skip
    imp.add_argument("--force", action="store_true", help="overwrite the output file")
    imp.add_argument(
        "--imap",
        help="the IMAP server URL, instead of rimap's -O host (needed for MECHANISMS other "
        "than rimap)",
    )

    test = sub.add_parser("test", help="ask a running daemon, like testsaslauthd")
    test.add_argument(
        "-f", dest="socket", default=str(ServerConfig().socket), help="mux socket path"
    )
    test.add_argument("-u", dest="user", required=True, help="user name")
    test.add_argument(
        "-p", dest="password", help="password (read from the terminal or stdin if absent)"
    )
    test.add_argument("-s", dest="service", default="", help="service name (e.g. smtp)")
    test.add_argument("-r", dest="realm", default="", help="realm")
    test.add_argument(
        "-t", dest="timeout", type=float, default=30.0, help="seconds to wait for the reply"
    )
    return parser


def _serve(args: argparse.Namespace) -> int:
    flags = {"server.socket": args.socket, "imap.url": args.imap, "imap.ca_file": args.ca_file}
    return command.serve_command(
        "saslimap", args.config, DEFAULT_CONFIG, flags, app.load_config,
        app.serve,
    )  # fmt: skip


def _check_config(args: argparse.Namespace) -> int:
    return command.check_config_command(
        "saslimap", args.file, app.load_config,
        lambda cfg: f"IMAP server {cfg.imap.target}, socket {cfg.server.socket}",
    )  # fmt: skip


def _flush(args: argparse.Namespace) -> int:
    path = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        cfg = app.load_config(path, {})
        count = asyncio.run(_flush_shared(cfg, args.user or "", args.address or ""))
    except ConfigError as err:
        print(f"saslimap flush: {err}", file=sys.stderr)
        return EX_CONFIG
    except StateUnavailable as err:
        print(f"saslimap flush: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    what = (
        f"user {args.user!r}" if args.user
        else f"address {args.address}" if args.address else "every user and address"
    )  # fmt: skip
    print(f"saslimap flush: {count} shared keys removed ({what})")
    return 0


async def _flush_shared(cfg: Config, user: str, address: str) -> int:
    state = await for_tool(cfg.state)
    try:
        return await shared.flush(state, cfg.limits, user=user, address=address)
    finally:
        await state.close()


def _import_saslauthd(args: argparse.Namespace) -> int:
    """0: all carried; 1: written, some settings not carried; 66, 73, 78: nothing written."""
    prog = "saslimap import-saslauthd"
    try:
        with args.path.open("rb") as file:
            raw = file.read(MAX_IMPORT_BYTES + 1)
    except OSError as err:
        print(f"{prog}: cannot read {args.path}: {err.strerror}", file=sys.stderr)
        return EX_NOINPUT
    if len(raw) > MAX_IMPORT_BYTES:
        print(f"{prog}: {args.path}: larger than {MAX_IMPORT_BYTES} bytes", file=sys.stderr)
        return EX_CONFIG
    try:
        imported = import_saslauthd.convert(
            raw.decode("utf-8", "replace"), source=str(args.path), imap_url=args.imap or ""
        )
    except import_saslauthd.Unusable as err:
        print(f"{prog}: {args.path}: {_printable(str(err))}; nothing written", file=sys.stderr)
        return EX_CONFIG
    try:
        _write_new(args.output, imported.toml, force=args.force)
    except FileExistsError:
        print(f"{prog}: {args.output} exists; --force overwrites it", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as err:
        print(f"{prog}: cannot write {args.output}: {err.strerror}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"{args.path} -> {args.output}\n")
    print(_report(imported))
    print(f"\nCheck it: saslimap check-config {args.output}")
    print(
        "saslimap also differs where no setting says so (IMAP outages, deadlines, brute-force "
        "limits): docs/saslimap.md, Moving from saslauthd"
    )
    return 0 if imported.complete else 1


def _report(imported: import_saslauthd.Imported) -> str:
    """The report: what most needs reading first, each reason wrapped under its setting."""
    outcome = import_saslauthd.Outcome
    order = (outcome.NOT_CARRIED, outcome.CHANGED, outcome.CARRIED, outcome.IGNORED)
    lines = []
    for item in sorted(imported.items, key=lambda item: order.index(item.outcome)):
        lines.append(f"{item.outcome.value:<12} {_printable(item.source)}")
        text = _printable(item.text)
        lines.append(textwrap.fill(text, 96, initial_indent="    ", subsequent_indent="    "))
    counts = [f"{sum(i.outcome is o for i in imported.items)} {o.value}" for o in order]
    return "\n".join([*lines, "", ", ".join(counts)])


def _printable(text: str) -> str:
    """``text`` with control characters (a CR from a file saved on Windows) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _write_new(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` whole or not at all; over an existing file only if ``force``.

    The text goes to a file of its own next to ``path`` first, then is linked
    (fails if ``path`` exists) or renamed (replaces it) into place.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        if force:
            os.replace(partial, path)
        else:
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def _test(args: argparse.Namespace) -> int:
    password = args.password if args.password is not None else _read_password()
    try:
        reply = saslauthd_client.query(
            args.socket,
            args.user.encode(),
            password.encode(),
            args.service.encode(),
            args.realm.encode(),
            timeout=args.timeout,
        )
    except saslauthd_client.NoReply:
        print('0: NO "connection closed without a reply (temporary failure)"')
        return 2
    except OSError as err:
        print(f"saslimap test: cannot query {args.socket}: {err}", file=sys.stderr)
        return 2
    text = reply.decode("utf-8", "replace")
    if text.startswith("OK"):
        print('0: OK "Success."')
        return 0
    print(f'0: NO "{text[3:] if text.startswith("NO ") else text}"')
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``saslimap`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "flush":
        return _flush(args)
    if args.command == "import-saslauthd":
        return _import_saslauthd(args)
    return _test(args)


if __name__ == "__main__":
    sys.exit(main())
