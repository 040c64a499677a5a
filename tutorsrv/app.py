"""Role wiring: which routes and resources one process runs.

- ``engine``: health, the session API (/v1, service key) and the session WebSocket.
- ``web``: accounts, tutors, students, sessions and transcripts in PostgreSQL (/api), the
  engines' transcript intake (/internal/v1, service key), the pages.
- ``all``: both in one process on one port (the laptop / single-box default); the web part
  reaches the engine in-process and turns go straight to the database.

Long-lived resources (database, model, worker tasks) are ``cleanup_ctx`` generators: they
start before the port serves and stop, in reverse order, after it closes, so the database
starts first and stops last.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

from . import api_docs, cors, forwarded, limits, metrics, pages
from .appkeys import (
    BACKPLANE,
    CONFIG,
    DB,
    EMBEDDED_DB,
    ENGINE_API_KEY,
    ENGINE_CLIENT,
    INGESTOR,
    KNOWLEDGE,
    LLM,
    LLM_WARMUP_MS,
    MODELS,
    RECORDINGS,
    REGISTRY,
    ROLE,
    SYNTHESIZER,
    TRANSCRIBER,
    VAD,
)
from .backplane import (
    Backplane,
    Event,
    EventRejected,
    HttpDelivery,
    SessionEnded,
    TurnRecord,
)
from .config import Config, ConfigError, key_file_path
from .engine import protocol
from .engine import routes as engine_routes
from .engine.conversation import opening
from .engine.llm import LLMBackend, create_backends
from .engine.llm.warmup import warm_up
from .engine.public_url import LEGACY_WEBSOCKET_PATH, WEBSOCKET_PATH
from .engine.speech.asr import Transcriber
from .engine.speech.decode_pool import RecordingDecoder
from .engine.speech.tts import Synthesizer
from .engine.speech.vad import SileroVAD
from .engine.websocket import (
    TRANSCRIPT_DELAYED,
    TRANSCRIPT_SAVED,
    drain,
    session_socket,
    tell_everyone,
)
from .health import health
from .http_errors import json_errors
from .knowledge import HttpKnowledgeSearch, KnowledgeSearch
from .logs import AcceptErrorThrottle
from .registry import Session, SessionRegistry, TokenSigner, now_iso
from .spool import Spool
from .web import proxy
from .web.db import database_errors, open_database
from .web.devices import KNOWN_DEVICES, KnownDevices
from .web.engine_client import IN_PROCESS, HttpEngineClient, InProcessEngineClient
from .web.lost_sessions import end_lost_sessions
from .web.rag import DatabaseKnowledgeSearch, Embedder, Ingestor
from .web.routes import auth, internal, kbs, sessions, students, tutors
from .web.security import ACCOUNT_TOKENS, AccountTokens, make_authenticate
from .web.transcripts import mark_session_ended, store_turn

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"
DEFAULT_PORTS = {"engine": 9000, "web": 8000, "all": 8000}
# Request bodies of the JSON API are small; anything bigger is refused with 413.
MAX_REQUEST_BYTES = 256 * 1024
# How long a stopping engine waits for queued transcript turns to be delivered.
TRANSCRIPT_FLUSH_SECONDS = 10.0


def create_app(config: Config, role: str) -> web.Application:
    if role not in ("web", "engine", "all"):
        raise ConfigError(f"--role: {role!r} is not one of web, engine, all")
    runs_web = role in ("web", "all")
    runs_engine = role in ("engine", "all")

    # metrics first: it counts every answer, including the ones json_errors writes. CORS
    # preflights are answered before any origin or account check.
    middlewares = [
        metrics.count_requests,
        # Before anything reads the client's address, scheme or host.
        forwarded.middleware(forwarded.parse_networks(config.server.trusted_proxies)),
        json_errors,
        cors.preflight,
        limits.make_origin_check(config),
    ]
    if runs_web:
        middlewares += [database_errors, make_authenticate(auth.PUBLIC_ROUTES)]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BYTES)
    app[CONFIG] = config
    app[ROLE] = role
    app[ENGINE_API_KEY] = _engine_api_key(config, role)
    limits.setup(app, config)
    cors.setup(app, config)
    if runs_web:
        _setup_web(app, config, role)
    if runs_engine:
        _setup_engine(app, config, role)
    app.router.add_get("/health", health)
    api_docs.setup(app)
    metrics.setup(
        app,
        engine=runs_engine,
        speech_in=config.asr.enabled,
        speech_out=config.tts.enabled,
    )
    app.on_startup.append(_throttle_accept_errors)
    if role == "all":
        app.cleanup_ctx.append(_key_file_ctx)
    if runs_web:
        aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
        pages.setup(app)
        app.router.add_static("/static", STATIC, name="static")
    return app


def _setup_web(app: web.Application, config: Config, role: str) -> None:
    if role == "web" and not config.web.engine_urls:
        raise ConfigError(
            "web.engine_urls: the web role needs at least one engine "
            "(e.g. TUTORSRV_WEB_ENGINE_URLS=http://engine-host:9000)"
        )
    secret = _jwt_secret(config, role)
    app[ACCOUNT_TOKENS] = AccountTokens(secret, config.web.access_token_seconds)
    app[KNOWN_DEVICES] = KnownDevices(secret)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_ingestor_ctx)
    app.cleanup_ctx.append(_engine_client_ctx)
    auth.add_routes(app)
    tutors.add_routes(app)
    students.add_routes(app)
    sessions.add_routes(app)
    kbs.add_routes(app)
    if role == "web" and config.web.proxy_websocket:
        # Browsers reach the engines' WebSocket through this role (one public origin). In
        # `all` the setting has no effect: browser and engine already share one origin.
        proxy.add_routes(app)
    app.add_subapp("/internal/v1", internal.internal_api())


def _setup_engine(app: web.Application, config: Config, role: str) -> None:
    app[REGISTRY] = SessionRegistry(
        max_sessions=config.engine.max_sessions,
        idle_timeout=config.engine.session_timeout_seconds,
        max_duration=config.engine.max_session_seconds,
        signer=TokenSigner(config.engine.token_secret or None),
        tombstone_seconds=config.engine.tombstone_seconds,
        max_history_messages=config.engine.max_history_messages,
        max_history_chars=config.engine.max_history_chars,
        max_sessions_per_student=config.engine.max_sessions_per_student,
        max_sessions_per_tenant=config.engine.max_sessions_per_tenant,
        connect_deadline=config.engine.connect_deadline_seconds,
    )
    app[MODELS] = create_backends(config.llm)
    app[LLM] = next(iter(app[MODELS].values()))
    app[REGISTRY].create_listeners.append(lambda session: _read_opening(app, session))
    app[REGISTRY].end_listeners.append(
        lambda session_id, reason: _forget_conversation(app, session_id)
    )
    app.cleanup_ctx.append(_backplane_ctx)
    app.cleanup_ctx.append(_knowledge_ctx)
    app.cleanup_ctx.append(_llm_ctx)
    app.cleanup_ctx.append(_speech_ctx)
    app.cleanup_ctx.append(_reaper_ctx)
    app.on_shutdown.append(_close_sockets)
    app.add_subapp("/v1", engine_routes.session_api())
    app.router.add_get(WEBSOCKET_PATH, session_socket)
    app.router.add_get(LEGACY_WEBSOCKET_PATH, session_socket)


def _engine_api_key(config: Config, role: str) -> str:
    if config.engine.api_key:
        return config.engine.api_key
    if role in ("engine", "web"):
        raise ConfigError(
            f"engine.api_key: the {role} role needs the service key shared by web and engines "
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


async def _throttle_accept_errors(app: web.Application) -> None:
    asyncio.get_running_loop().set_exception_handler(AcceptErrorThrottle())


async def _llm_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load every served model and prove each generates (warm_up), before the port serves."""
    loaded: list[LLMBackend] = []
    try:
        for name, llm in app[MODELS].items():
            await llm.load()
            loaded.append(llm)
            seconds = await warm_up(llm, app[CONFIG].llm.warmup_timeout_seconds)
            if llm is app[LLM]:
                app[LLM_WARMUP_MS] = round(seconds * 1000, 1)
            log.info("model %s warmed up: first token in %.0f ms", name, seconds * 1000)
    except BaseException:
        await asyncio.gather(*(llm.close() for llm in loaded), return_exceptions=True)
        raise
    try:
        yield
    finally:
        await asyncio.gather(*(llm.close() for llm in loaded), return_exceptions=True)


def _read_opening(app: web.Application, session: Session) -> None:
    """A session was created (by the engine API or, in `all`, by the web role directly): its
    model reads the system prompt and greeting while the student is still connecting, so
    the first turn reads only the question (the model does it when idle)."""
    models = app[MODELS]
    llm = models.get(session.tutor.model) or app[LLM]
    llm.prefill(session.id, opening(session.tutor, app[CONFIG].llm.default_system_prompt))


def _forget_conversation(app: web.Application, session_id: str) -> None:
    """A session ended: the models drop the prompt state they kept for it."""
    for llm in app[MODELS].values():
        llm.forget(session_id)


async def _speech_ctx(app: web.Application) -> AsyncIterator[None]:
    """Speech models, once per process and before the port serves: a missing or broken
    model stops start-up (ModelLoadError names the setting), never a student's first turn."""
    config = app[CONFIG]
    transcriber = Transcriber(config.asr) if config.asr.enabled else None
    synthesizer = Synthesizer(config.tts) if config.tts.enabled else None
    recordings: RecordingDecoder | None = None
    try:
        if transcriber is not None:
            app[VAD] = await asyncio.to_thread(SileroVAD)
            await transcriber.load()
            app[TRANSCRIBER] = transcriber
            recordings = RecordingDecoder(config.asr)
            await recordings.start()
            app[RECORDINGS] = recordings
        if synthesizer is not None:
            await synthesizer.load()
            app[SYNTHESIZER] = synthesizer
        yield
    finally:
        for model in (transcriber, synthesizer):
            if model is not None:
                model.close()
        if recordings is not None:
            await recordings.close()


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
    """on_shutdown: refuse new work, let replies finish within the grace, then close (1001).
    Transcripts flush and the database stops afterwards, in the cleanup contexts."""
    await drain(app[REGISTRY], app[CONFIG].server.shutdown_grace_seconds)
    await app[REGISTRY].close_all(1001, "server shutting down")


def _jwt_secret(config: Config, role: str) -> str:
    if config.web.jwt_secret:
        return config.web.jwt_secret
    if role == "web":
        raise ConfigError(
            "web.jwt_secret: the web role needs a secret for account tokens "
            "(set TUTORSRV_WEB_JWT_SECRET to 32+ random characters; e.g. `openssl rand -hex 32`)"
        )
    # `all`: generated once and kept, so logins survive a restart of the single box.
    path = Path(config.server.state_dir) / "jwt-secret"
    if path.exists():
        kept = path.read_text().strip()
        if len(kept) < 32:
            raise ConfigError(f"{path}: the kept JWT secret is too short; delete the file")
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_database(app[CONFIG].database) as database:
        app[DB] = database.pool
        if database.embedded is None:
            yield
            return
        app[EMBEDDED_DB] = database.embedded
        supervisor = asyncio.create_task(
            database.embedded.supervise(functools.partial(_database_changed, app)),
            name="database-supervisor",
        )
        try:
            yield
        finally:
            # Before the database is released: a stop is not a crash to repair.
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)


async def _database_changed(app: web.Application, running: bool) -> None:
    """The embedded PostgreSQL exited (False) or runs again (True). Students are told
    their transcript waits (the backplane's outage); the pool drops its dead connections."""
    backplane = app.get(BACKPLANE)
    if running:
        await app[DB].expire_connections()
        if backplane is not None:
            backplane.retry_now()
            if backplane.pending == 0:
                await backplane.set_outage(False)  # else the next delivery that works ends it
    elif backplane is not None:
        await backplane.set_outage(True)


async def _no_sessions() -> set[str]:
    return set()


async def _engine_client_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    db = app[DB]
    if app[ROLE] == "all":
        client = InProcessEngineClient(app[REGISTRY], config)
        # The engine in this process has just started: it holds none of the earlier runs'.
        await end_lost_sessions(db, IN_PROCESS, _no_sessions)
    else:
        client = HttpEngineClient(
            config.web.engine_urls,
            app[ENGINE_API_KEY],
            config.web.engine_timeout_seconds,
            health_interval=config.web.engine_health_interval_seconds,
            on_engine_instance=functools.partial(end_lost_sessions, db),
        )
    app[ENGINE_CLIENT] = client
    try:
        yield
    finally:
        await client.close()


async def _backplane_ctx(app: web.Application) -> AsyncIterator[None]:
    """Where the engine's finished turns and session ends go: the database (all), the web
    role (engine with engine.backplane_url), or nowhere (engine alone: memory only)."""
    config = app[CONFIG]
    http_delivery = None
    if app[ROLE] == "all":

        async def deliver(event: Event) -> None:
            try:
                if isinstance(event, TurnRecord):
                    await store_turn(app[DB], event)
                else:
                    await mark_session_ended(app[DB], event)
            except (asyncpg.DataError, ValueError) as e:
                raise EventRejected(f"{type(e).__name__}: {e}") from None

    elif config.engine.backplane_url:
        http_delivery = deliver = HttpDelivery(config.engine.backplane_url, app[ENGINE_API_KEY])
    else:
        log.info("engine.backplane_url not set: transcripts are not persisted")
        yield
        return
    spool = Spool(
        Path(config.server.state_dir) / "transcript-spool", app[ROLE], config.engine.spool_max_bytes
    )
    backplane = Backplane(deliver, spool=spool)
    await backplane.open()
    app[BACKPLANE] = backplane
    registry = app[REGISTRY]
    registry.end_listeners.append(
        lambda session_id, reason: backplane.submit(SessionEnded(session_id, reason, now_iso()))
    )

    async def tell_clients(down: bool) -> None:
        message = (
            protocol.error("transcript_delayed", TRANSCRIPT_DELAYED)
            if down
            else protocol.notice("transcript_saved", TRANSCRIPT_SAVED)
        )
        log.warning("transcript store %s", "unavailable" if down else "back")
        await tell_everyone(registry, message, within=2.0)

    backplane.outage_listeners.append(tell_clients)
    worker = asyncio.create_task(backplane.run(), name="transcripts")
    try:
        yield
    finally:
        if not await backplane.flush(TRANSCRIPT_FLUSH_SECONDS):
            log.error(
                "stopping with %d transcript events undelivered; they are kept in %s and "
                "delivered at the next start",
                backplane.pending,
                spool.path,
            )
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await backplane.close()
        if http_delivery is not None:
            await http_delivery.close()


async def _ingestor_ctx(app: web.Application) -> AsyncIterator[None]:
    """Web side of knowledge bases: the background ingestion of uploads, and the optional
    embeddings client shared with search."""
    kb = app[CONFIG].kb
    embedder = (
        Embedder(kb.embeddings_url, kb.embeddings_model, kb.embeddings_api_key)
        if kb.embeddings_url
        else None
    )
    ingestor = Ingestor(lambda: app[DB], kb, embedder)
    app[INGESTOR] = ingestor
    # Ingestion runs in the process that accepted the upload; one that stopped mid-way left
    # its documents "processing" for ever. (With several web replicas, restarting one also
    # fails the uploads another is ingesting at that moment; they can be uploaded again.)
    stale = await app[DB].execute(
        "UPDATE documents SET status = 'failed', updated_at = now(),"
        " error = 'ingestion was interrupted by a restart; upload the file again'"
        " WHERE status = 'processing'"
    )
    if stale != "UPDATE 0":
        log.warning("documents left processing by a previous run marked failed: %s", stale)
    try:
        yield
    finally:
        await ingestor.close()


async def _knowledge_ctx(app: web.Application) -> AsyncIterator[None]:
    """Engine side: where a turn's passages come from (see knowledge.py)."""
    config = app[CONFIG]
    knowledge: KnowledgeSearch | None = None
    if app[ROLE] == "all":
        knowledge = DatabaseKnowledgeSearch(lambda: app[DB], app[INGESTOR].embedder)
    elif config.engine.backplane_url:
        knowledge = HttpKnowledgeSearch(
            config.engine.backplane_url, app[ENGINE_API_KEY], config.kb.search_timeout_seconds
        )
    if knowledge is not None:
        app[KNOWLEDGE] = knowledge
    try:
        yield
    finally:
        if knowledge is not None:
            await knowledge.close()
