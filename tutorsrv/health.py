"""GET /health for every role: what this process runs and whether its parts answer."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from . import __version__
from .appkeys import (
    DB,
    EMBEDDED_DB,
    ENGINE_CLIENT,
    LLM,
    LLM_WARMUP_MS,
    MODELS,
    REGISTRY,
    ROLE,
    SYNTHESIZER,
    TRANSCRIBER,
)
from .compact_json import json_response

SERVICES = {"engine": "tutorsrv-engine", "web": "tutorsrv-web", "all": "tutorsrv"}


async def health(request: web.Request) -> web.Response:
    app = request.app
    role = app[ROLE]
    body: dict[str, Any] = {
        "status": "healthy",
        "service": SERVICES[role],
        "version": __version__,
        "role": role,
    }
    healthy = True
    if REGISTRY in app:
        registry, llm = app[REGISTRY], app[LLM]
        body["sessions"] = len(registry)
        body["max_sessions"] = registry.max_sessions
        body["instance"] = registry.instance
        body["llm"] = {
            "backend": llm.name,
            "model": llm.model,
            "ready": llm.ready,
            "warmup_ttft_ms": app.get(LLM_WARMUP_MS),
            # Every model a tutor may name, the default first, and whether each can answer.
            "models": {name: {"ready": m.ready} for name, m in app[MODELS].items()},
        }
        # llama.cpp: the instruction sets it was built with (docs/deploy.md, CPUs and builds).
        build = getattr(llm, "system_info", "")
        if build:
            body["llm"]["build"] = build
        # The llama.cpp child process: how often it had to be started again, and why.
        restarts = getattr(llm, "restarts", None)
        if restarts is not None:
            body["llm"]["restarts"] = restarts
            body["llm"]["last_failure"] = llm.last_failure or None  # type: ignore[attr-defined]
        # No new turn can be answered while a model restarts: placement skips this engine.
        healthy = healthy and all(m.ready for m in app[MODELS].values())
        # The app serves only once every enabled model has loaded: present means ready.
        transcriber, synthesizer = app.get(TRANSCRIBER), app.get(SYNTHESIZER)
        body["asr"] = (
            {"model": transcriber.model_name, "ready": True} if transcriber else "disabled"
        )
        body["tts"] = (
            {"voices": sorted(synthesizer.voices), "ready": True} if synthesizer else "disabled"
        )
    if DB in app:
        try:
            async with asyncio.timeout(2):
                await app[DB].fetchval("SELECT 1")
            body["database"] = "ok"
        except Exception:
            body["database"] = "unavailable"
            healthy = False
    if (embedded := app.get(EMBEDDED_DB)) is not None:
        # Restarted by this process when it exits (docs/deploy.md, "The embedded database").
        body["embedded_database"] = {
            "running": embedded.available,
            "restarts": embedded.restarts,
            "last_failure": embedded.last_failure or None,
        }
        healthy = healthy and embedded.available
    if role == "web" and ENGINE_CLIENT in app:
        engines = await app[ENGINE_CLIENT].health()
        body["engines"] = engines
        # Degraded when no engine answers. A full one answers: it takes sessions again as
        # soon as one ends, and the session API says so (503 engine_unavailable) meanwhile.
        healthy = healthy and any(e["status"] in ("healthy", "full") for e in engines)
    if not healthy:
        body["status"] = "degraded"
    return json_response(body, status=200 if healthy else 503)
