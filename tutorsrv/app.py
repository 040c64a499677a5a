"""Role wiring: which routes and resources one process runs.

- ``engine``: health, the session API (/v1, service key) and the session WebSocket.
- ``all``: the engine plus the browser pages, on one port (the laptop / single-box default).
- ``web``: accounts, tutors and transcripts; not in this version yet.

Long-lived resources (the model, the reaper task) are ``cleanup_ctx`` generators: they start
before the port opens and stop, in reverse order, after it closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import pages
from .appkeys import CONFIG, ENGINE_API_KEY, LLM, REGISTRY, ROLE
from .config import Config, ConfigError, key_file_path
from .engine import routes as engine_routes
from .engine.llm import create_backend
from .engine.public_url import WEBSOCKET_PATH
from .engine.websocket import session_socket
from .http_errors import json_errors
from .registry import SessionRegistry, TokenSigner

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"
DEFAULT_PORTS = {"engine": 9000, "web": 8000, "all": 8000}
# Request bodies of the JSON API are small; anything bigger is refused with 413.
MAX_REQUEST_BYTES = 256 * 1024


class RoleUnavailable(Exception):
    pass


def create_app(config: Config, role: str) -> web.Application:
    if role == "web":
        raise RoleUnavailable(
            "the web role is not available yet in this version; run --role engine or --role all"
        )
    if role not in ("engine", "all"):
        raise ConfigError(f"--role: {role!r} is not one of web, engine, all")

    app = web.Application(middlewares=[json_errors], client_max_size=MAX_REQUEST_BYTES)
    app[CONFIG] = config
    app[ROLE] = role
    app[ENGINE_API_KEY] = _engine_api_key(config, role)
    app[REGISTRY] = SessionRegistry(
        max_sessions=config.engine.max_sessions,
        idle_timeout=config.engine.session_timeout_seconds,
        max_duration=config.engine.max_session_seconds,
        signer=TokenSigner(config.engine.token_secret or None),
        tombstone_seconds=config.engine.tombstone_seconds,
    )
    app[LLM] = create_backend(config.llm)
    app.cleanup_ctx.append(_llm_ctx)
    app.cleanup_ctx.append(_reaper_ctx)
    if role == "all":
        app.cleanup_ctx.append(_key_file_ctx)
    app.on_shutdown.append(_close_sockets)

    app.router.add_get("/health", engine_routes.health)
    app.add_subapp("/v1", engine_routes.session_api())
    app.router.add_get(WEBSOCKET_PATH, session_socket)

    if role == "all":
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
        pages.setup(app)
        app.router.add_static("/static", STATIC, name="static")
    return app


def _engine_api_key(config: Config, role: str) -> str:
    if config.engine.api_key:
        return config.engine.api_key
    if role == "engine":
        raise ConfigError(
            "engine.api_key: the engine role needs a service key "
            "(set TUTORSRV_ENGINE_API_KEY or [engine] api_key; e.g. `openssl rand -hex 32`)"
        )
    # `all`: a fresh key per start, never logged; _key_file_ctx publishes it.
    return secrets.token_urlsafe(32)


async def _key_file_ctx(app: web.Application) -> AsyncIterator[None]:
    """`all` role: put the generated service key in a private file while the server runs,
    so the operator (and the test page) can use the session API of a single-box install.

    It runs after the model has loaded and is removed at shutdown, so a start that fails,
    or a configured key, never leaves a stale or overwritten key behind."""
    config = app[CONFIG]
    path = key_file_path(config)
    if config.engine.api_key:
        path.unlink(missing_ok=True)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(app[ENGINE_API_KEY] + "\n")
    os.chmod(path, 0o600)
    log.info("engine.api_key not set: generated one for this run, in %s", path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


async def _llm_ctx(app: web.Application) -> AsyncIterator[None]:
    llm = app[LLM]
    await llm.load()
    try:
        yield
    finally:
        await llm.close()


async def _reaper_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = app[REGISTRY]
    task = asyncio.create_task(
        registry.run_reaper(app[CONFIG].engine.reaper_interval_seconds), name="session-reaper"
    )
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _close_sockets(app: web.Application) -> None:
    await app[REGISTRY].close_all(1001, "server shutting down")
