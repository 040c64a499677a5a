"""Real processes: one web role in front of two engines on loopback (web.engine_urls)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .conftest import API_KEY, JWT_SECRET
from .processes import ServerProcess
from .test_split_deployment import call, open_session, set_up_tenant

MAX_SESSIONS = 4


async def engine_report(
    http: aiohttp.ClientSession, web: ServerProcess, engine: ServerProcess, status: str
) -> tuple[int, dict[str, Any]]:
    """Polls the web role's /health until it reports ``engine`` with ``status``."""
    deadline = time.monotonic() + 15
    while True:
        code, health = await call(http, "GET", web.base + "/health")
        entry = next(e for e in health["engines"] if e["engine"] == engine.base)
        if entry["status"] == status:
            return code, entry
        assert time.monotonic() < deadline, f"{engine.base} never {status}: {health}"
        await asyncio.sleep(0.05)


async def engine_sessions(http: aiohttp.ClientSession, engine: ServerProcess) -> int:
    _, health = await call(http, "GET", engine.base + "/health")
    return health["sessions"]


async def test_sessions_follow_engine_capacity_and_health(
    tmp_path: Path, database_url: str
) -> None:
    web = ServerProcess("web", {}, tmp_path)
    a = ServerProcess("engine", {}, tmp_path)
    b = ServerProcess("engine", {}, tmp_path)
    for engine in (a, b):
        engine.env.update(
            {
                "TUTORSRV_ENGINE_API_KEY": API_KEY,
                "TUTORSRV_ENGINE_BACKPLANE_URL": web.base,
                "TUTORSRV_ENGINE_MAX_SESSIONS": str(MAX_SESSIONS),
                # One student fills the engines here: this test is about placement, not
                # about the per-student share (tests/test_session_quota.py).
                "TUTORSRV_ENGINE_MAX_SESSIONS_PER_STUDENT": "0",
                "TUTORSRV_LLM_BACKEND": "scripted",
            }
        )
    web.env.update(
        {
            "TUTORSRV_ENGINE_API_KEY": API_KEY,
            "TUTORSRV_WEB_JWT_SECRET": JWT_SECRET,
            "TUTORSRV_WEB_ENGINE_URLS": f"{a.base},{b.base}",
            "TUTORSRV_WEB_ENGINE_TIMEOUT_SECONDS": "2",
            "TUTORSRV_WEB_ENGINE_HEALTH_INTERVAL_SECONDS": "0.3",
            "DATABASE_URL": database_url,
        }
    )
    port = {a.port: a, b.port: b}

    def placed(session: dict[str, Any]) -> ServerProcess:
        return port[urlsplit(session["engine_url"]).port]

    try:
        await a.start()
        await b.start()
        await web.start()
        async with aiohttp.ClientSession() as http:
            for engine in (a, b):
                code, entry = await engine_report(http, web, engine, "healthy")
                assert code == 200
                assert entry["sessions"] == 0 and entry["max_sessions"] == MAX_SESSIONS
            tenant = await set_up_tenant(http, web.base)

            # Four sessions spread over both engines.
            sessions = []
            for _ in range(4):
                status, session = await open_session(http, web.base, tenant)
                assert status == 201, session
                sessions.append(session)
            on_a = [s for s in sessions if placed(s) is a]
            assert 1 <= len(on_a) <= 3, [placed(s).port for s in sessions]
            assert await engine_sessions(http, a) == len(on_a)
            assert await engine_sessions(http, b) == 4 - len(on_a)

            # b dies: the web role notices by itself, and new sessions all go to a.
            b.kill()
            code, entry = await engine_report(http, web, b, "unreachable")
            assert code == 200 and entry["last_error"]
            for _ in range(MAX_SESSIONS - len(on_a)):
                status, session = await open_session(http, web.base, tenant)
                assert status == 201, session
                assert placed(session) is a
                on_a.append(session)
            assert await engine_sessions(http, a) == MAX_SESSIONS

            # a is full and b dead: nowhere to go.
            status, body = await open_session(http, web.base, tenant)
            assert status == 503 and body["error"] == "engine_unavailable", body
            code, entry = await engine_report(http, web, a, "full")
            assert entry["sessions"] == MAX_SESSIONS
            # Still reachable, so the web role is not degraded.
            assert code == 200

            # One session on a ends: a has room for one, and takes it.
            status, _ = await call(
                http, "DELETE", f"{web.base}/api/sessions/{on_a[0]['session_id']}", tenant["token"]
            )
            assert status == 204
            await engine_report(http, web, a, "healthy")

            # b comes back on the same address, empty: once healthy it has the most room.
            await b.start()
            await engine_report(http, web, b, "healthy")
            for _ in range(2):
                status, session = await open_session(http, web.base, tenant)
                assert status == 201, session
                assert placed(session) is b
            assert await engine_sessions(http, b) == 2
            assert await engine_sessions(http, a) == MAX_SESSIONS - 1
        assert web.stop() == 0 and a.stop() == 0 and b.stop() == 0
        assert API_KEY not in web.output() + a.output() + b.output()
        assert JWT_SECRET not in web.output()
    finally:
        for process in (web, a, b):
            process.kill()
