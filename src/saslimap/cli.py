"""The ``saslimap`` command: argument parsing, logging setup and exit codes.

Subcommands: ``serve`` (the daemon), ``check-config FILE``, ``test`` (a
``testsaslauthd`` equivalent) and ``flush`` (the state shared between gateway
hosts in Redis).  Exit codes follow sysexits: 78 (EX_CONFIG) for
a bad configuration, which systemd units list in ``RestartPreventExitStatus``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path

from mailgate import command
from mailgate.errors import ConfigError
from mailgate.state import StateUnavailable, for_tool
from saslimap import app, saslauthd_client, shared
from saslimap.config import Config, ServerConfig

EX_CONFIG = command.EX_CONFIG
EX_UNAVAILABLE = 69  # sysexits.h: a service this command needs is down
DEFAULT_CONFIG = Path("/etc/saslimap/saslimap.toml")


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
    return _test(args)


if __name__ == "__main__":
    sys.exit(main())
