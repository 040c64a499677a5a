"""Real processes: web + engine on loopback (split deployment), and `all` across a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import API_KEY, JWT_SECRET
from .processes import ServerProcess, web_and_engine
from .web_helpers import PASSWORD, call, set_up_tenant

# Replies long enough that an interrupt always arrives while one is being generated.
SLOW_SCRIPTED = {
    "TUTORSRV_LLM_BACKEND": "scripted",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_COUNT": "200",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_DELAY_MS": "10",
}


async def open_session(http: aiohttp.ClientSession, base: str, t: dict[str, Any]) -> tuple:
    return await call(
        http,
        "POST",
        f"{base}/api/tutors/{t['tutor']['id']}/sessions",
        t["token"],
        json={"student_id": t["student"]["id"]},
    )


async def talk(http: aiohttp.ClientSession, engine_url: str) -> str:
    """Greeting, one full turn, one interrupted turn. Returns the interrupted response id."""
    async with http.ws_connect(engine_url, protocols=[SUBPROTOCOL]) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "session"
        while (await ws.receive_json(timeout=10))["type"] != "response_done":
            pass
        await ws.send_json({"type": "text", "content": "full turn"})
        while (await ws.receive_json(timeout=10))["type"] != "response_done":
            pass
        await ws.send_json({"type": "text", "content": "cut turn"})
        await ws.receive_json(timeout=10)
        await ws.send_json({"type": "interrupt"})
        while (message := await ws.receive_json(timeout=10))["type"] != "interrupted":
            pass
        return message["response_id"]


async def transcript(http, base: str, t: dict[str, Any], session_id: str, want: int) -> list:
    deadline = time.monotonic() + 30
    while True:
        status, body = await call(
            http, "GET", f"{base}/api/sessions/{session_id}/messages", t["token"]
        )
        assert status == 200, body
        if len(body["messages"]) >= want:
            return body["messages"]
        assert time.monotonic() < deadline, f"transcript incomplete: {body}"
        await asyncio.sleep(0.1)


async def check_knowledge_base(http: aiohttp.ClientSession, base: str, t: dict) -> None:
    status, kb = await call(http, "POST", base + "/api/kbs", t["token"], json={"name": "Geo"})
    assert status == 201, kb
    form = aiohttp.FormData()
    form.add_field(
        "file", b"# Nile\n\nThe Nile is the longest river in Africa.", filename="nile.md"
    )
    status, doc = await call(
        http, "POST", f"{base}/api/kbs/{kb['id']}/documents", t["token"], data=form
    )
    assert status == 202, doc
    deadline = time.monotonic() + 30
    while doc["status"] == "processing":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        _, doc = await call(
            http, "GET", f"{base}/api/kbs/{kb['id']}/documents/{doc['id']}", t["token"]
        )
    assert doc["status"] == "ready", doc
    status, session = await call(
        http,
        "POST",
        f"{base}/api/tutors/{t['tutor']['id']}/sessions",
        t["token"],
        json={"student_id": t["student"]["id"], "kb_id": kb["id"]},
    )
    assert status == 201, session
    async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "session"
        while (await ws.receive_json(timeout=10))["type"] != "response_done":
            pass  # the greeting
        await ws.send_json({"type": "text", "content": "Which river is the longest in Africa?"})
        first = await ws.receive_json(timeout=10)
        assert first["type"] == "sources", first
        assert first["sources"][0]["document"] == "nile.md"
        await ws.send_json({"type": "interrupt"})
        while (await ws.receive_json(timeout=10))["type"] != "interrupted":
            pass


async def test_split_deployment_web_and_engine(tmp_path: Path, database_url: str) -> None:
    engine, web = web_and_engine(
        tmp_path,
        database_url,
        api_key=API_KEY,
        jwt_secret=JWT_SECRET,
        engine_env=SLOW_SCRIPTED,
        web_env={"TUTORSRV_WEB_ENGINE_HEALTH_INTERVAL_SECONDS": "0.3"},
    )
    try:
        await engine.start()
        await web.start()
        async with aiohttp.ClientSession() as http:
            status, health = await call(http, "GET", web.base + "/health")
            assert status == 200 and health["role"] == "web"
            assert health["engines"][0]["status"] == "healthy"

            tenant = await set_up_tenant(http, web.base)
            status, session = await open_session(http, web.base, tenant)
            assert status == 201, session
            # The browser is sent to the engine, not to the web role.
            assert session["engine_url"].startswith(
                f"ws://127.0.0.1:{engine.port}/ws/ws/{session['session_id']}?token="
            )
            cut = await talk(http, session["engine_url"])
            messages = await transcript(http, web.base, tenant, session["session_id"], 5)
            assert [m["role"] for m in messages] == [
                "assistant",
                "user",
                "assistant",
                "user",
                "assistant",
            ]
            assert messages[1]["content"] == "full turn"
            assert messages[4]["response_id"] == cut and messages[4]["interrupted"] is True

            # Course material: the engine searches it through the web role.
            await check_knowledge_base(http, web.base, tenant)

            # The engine dies: no new session, a clear 503, nothing half-created.
            engine.kill()
            status, body = await open_session(http, web.base, tenant)
            assert status == 503 and body["error"] == "engine_unavailable"
            status, listing = await call(http, "GET", web.base + "/api/sessions", tenant["token"])
            assert session["session_id"] in [s["id"] for s in listing["sessions"]]
            assert len(listing["sessions"]) == 2  # the talk above and the knowledge-base one
            status, health = await call(http, "GET", web.base + "/health")
            assert status == 503 and health["engines"][0]["status"] == "unreachable"

            # It comes back on the same address: once a health check has seen it, sessions
            # work again (a failed engine gets none before that).
            await engine.start()
            deadline = time.monotonic() + 20
            while (await call(http, "GET", web.base + "/health"))[1]["engines"][0][
                "status"
            ] != "healthy":
                assert time.monotonic() < deadline, "the web role never saw the engine return"
                await asyncio.sleep(0.1)
            status, again = await open_session(http, web.base, tenant)
            assert status == 201, again
            # The restarted engine holds none of the old sessions: their records are ended
            # (they once read "active" for hours), and the one created since stays active.
            records = f"{web.base}/api/sessions"
            deadline = time.monotonic() + 20
            while True:
                _, listing = await call(http, "GET", records, tenant["token"])
                by_id = {s["id"]: s for s in listing["sessions"]}
                if by_id[session["session_id"]]["status"] == "ended":
                    break
                assert time.monotonic() < deadline, "the lost session still reads active"
                await asyncio.sleep(0.1)
            assert by_id[session["session_id"]]["ended_at"]
            assert by_id[again["session_id"]]["status"] == "active"
            assert [s["status"] for s in by_id.values()].count("active") == 1
            status, _ = await call(
                http, "DELETE", f"{web.base}/api/sessions/{again['session_id']}", tenant["token"]
            )
            assert status == 204
        assert engine.stop() == 0 and web.stop() == 0
        assert API_KEY not in engine.output() + web.output()
        assert JWT_SECRET not in web.output()
    finally:
        engine.kill()
        web.kill()


async def test_all_role_keeps_everything_across_a_restart(
    tmp_path: Path, database_url: str
) -> None:
    env = {"DATABASE_URL": database_url, **SLOW_SCRIPTED}
    server = ServerProcess("all", env, tmp_path)
    try:
        await server.start()
        async with aiohttp.ClientSession() as http:
            tenant = await set_up_tenant(http, server.base)
            status, session = await open_session(http, server.base, tenant)
            assert status == 201
            await talk(http, session["engine_url"])
            before = await transcript(http, server.base, tenant, session["session_id"], 5)
        assert server.stop() == 0

        await server.start()
        async with aiohttp.ClientSession() as http:
            # The old access token still works: the JWT secret was kept in state_dir.
            status, me = await call(http, "GET", server.base + "/api/auth/me", tenant["token"])
            assert status == 200 and me["email"] == "a@s.example"
            status, _ = await call(
                http,
                "POST",
                server.base + "/api/auth/login",
                json={"email": "a@s.example", "password": PASSWORD},
            )
            assert status == 200
            after = await transcript(http, server.base, tenant, session["session_id"], 5)
            assert after == before
            # Its engine did not survive the restart: the record says so.
            status, row = await call(
                http,
                "GET",
                f"{server.base}/api/sessions/{session['session_id']}",
                tenant["token"],
            )
            assert row["status"] == "ended" and row["ended_at"]
        assert server.stop() == 0
    finally:
        server.kill()


async def test_engine_tells_the_web_role_when_it_expires_a_session(
    tmp_path: Path, database_url: str
) -> None:
    engine, web = web_and_engine(
        tmp_path,
        database_url,
        api_key=API_KEY,
        jwt_secret=JWT_SECRET,
        engine_env={
            "TUTORSRV_ENGINE_SESSION_TIMEOUT_SECONDS": "1",
            "TUTORSRV_ENGINE_REAPER_INTERVAL_SECONDS": "0.2",
        },
    )
    try:
        await engine.start()
        await web.start()
        async with aiohttp.ClientSession() as http:
            tenant = await set_up_tenant(http, web.base)
            status, session = await open_session(http, web.base, tenant)
            assert status == 201
            url = f"{web.base}/api/sessions/{session['session_id']}"
            deadline = time.monotonic() + 20
            while True:
                status, row = await call(http, "GET", url, tenant["token"])
                if row["status"] != "active":
                    break
                assert time.monotonic() < deadline, "the web role never heard of the expiry"
                await asyncio.sleep(0.1)
            assert row["status"] == "expired" and row["ended_at"]
        assert engine.stop() == 0 and web.stop() == 0
    finally:
        engine.kill()
        web.kill()
