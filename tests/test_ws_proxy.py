"""Real processes: the web role relays the session WebSocket to its engine (web.proxy_websocket)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.web.proxy import engine_socket_url

from .conftest import (
    API_KEY,
    AUTH,
    JWT_SECRET,
    MakeClient,
    expect_close,
    receive_json,
    receive_until,
    ws_path,
)
from .processes import ServerProcess, web_and_engine
from .web_helpers import (
    call,
    create_student,
    create_tutor,
    register_admin,
    set_up_tenant,
    start_session,
)

# Replies long enough that an interrupt or a disconnect always lands while one is generated.
SLOW_SCRIPTED = {
    "TUTORSRV_LLM_BACKEND": "scripted",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_COUNT": "200",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_DELAY_MS": "10",
}


async def open_session(
    http: aiohttp.ClientSession, base: str, t: dict[str, Any], **headers: str
) -> dict[str, Any]:
    status, session = await call(
        http,
        "POST",
        f"{base}/api/tutors/{t['tutor']['id']}/sessions",
        t["token"],
        headers=headers,
        json={"student_id": t["student"]["id"]},
    )
    assert status == 201, session
    return session


async def engine_history(
    http: aiohttp.ClientSession, engine: ServerProcess, session_id: str
) -> list[dict[str, Any]]:
    async with http.get(f"{engine.base}/v1/sessions/{session_id}", headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["history"]


def processes(tmp_path: Path, database_url: str) -> tuple[ServerProcess, ServerProcess]:
    return web_and_engine(
        tmp_path,
        database_url,
        api_key=API_KEY,
        jwt_secret=JWT_SECRET,
        engine_env=SLOW_SCRIPTED,
        web_env={
            "TUTORSRV_WEB_PROXY_WEBSOCKET": "true",
            # As behind a TLS proxy on the same machine: its X-Forwarded-* are believed.
            "TUTORSRV_SERVER_TRUSTED_PROXIES": "127.0.0.1",
            "TUTORSRV_SERVER_SHUTDOWN_TIMEOUT_SECONDS": "5",
            # The proxy holds browser frames to the engines' limit, read from its own config.
            "TUTORSRV_ENGINE_MAX_MESSAGE_BYTES": "4096",
        },
    )


async def test_web_role_proxies_the_session_websocket(tmp_path: Path, database_url: str) -> None:
    engine, web = processes(tmp_path, database_url)
    web_ws = f"ws://127.0.0.1:{web.port}"
    try:
        await engine.start()
        await web.start()
        async with aiohttp.ClientSession() as http:
            tenant = await set_up_tenant(http, web.base)

            # engine_url points at the web role, as the browser reached it.
            session = await open_session(http, web.base, tenant)
            sid, token = session["session_id"], session["engine_token"]
            assert session["engine_url"] == f"{web_ws}/ws/ws/{sid}?token={quote(token, safe='')}"
            behind_tls = await open_session(
                http,
                web.base,
                tenant,
                **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "tutors.example"},
            )
            sid2 = behind_tls["session_id"]
            assert behind_tls["engine_url"].startswith(f"wss://tutors.example/ws/ws/{sid2}?token=")

            async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                hello = await receive_json(ws)
                assert hello["type"] == "session" and hello["session_id"] == sid
                await receive_until(ws, "response_done")  # the greeting
                # A text turn streams through to its end.
                await ws.send_json({"type": "text", "content": "full turn"})
                turn = await receive_until(ws, "response_done")
                assert any(m["type"] == "text_stream" for m in turn)
                assert any(m["type"] == "text" for m in turn)
                # A binary frame crosses: the engine answers it (it has no voice input).
                await ws.send_bytes(b"\x00\x01" * 800)
                reply = await receive_json(ws)
                assert reply["type"] == "error" and reply["code"] == "audio_unavailable"
                await ws.send_json({"type": "ping", "id": 7})
                assert await receive_json(ws) == {"type": "pong", "id": 7}
                # An interrupt reaches the engine while a reply streams.
                await ws.send_json({"type": "text", "content": "cut turn"})
                await receive_until(ws, "text_stream")
                await ws.send_json({"type": "interrupt"})
                await receive_until(ws, "interrupted")
                # Ending the session through the web API closes the proxied socket with 4410.
                status, _ = await call(
                    http, "DELETE", f"{web.base}/api/sessions/{sid}", tenant["token"]
                )
                assert status == 204
                code, before = await expect_close(ws)
                assert code == 4410, (code, before)
                assert before[-1]["type"] == "error" and before[-1]["code"] == "session_ended"

            # A wrong token: the engine's 4401 reaches the browser.
            async with http.ws_connect(
                f"{web_ws}/ws/ws/{sid2}?token=not-a-token", protocols=[SUBPROTOCOL]
            ) as ws:
                code, before = await expect_close(ws)
                assert code == 4401 and before[-1]["code"] == "invalid_token", (code, before)
            # An unknown session: 4404, answered by the web role itself.
            for unknown in ("0" * 32, "not-a-session-id"):
                async with http.ws_connect(
                    f"{web_ws}/ws/ws/{unknown}?token=x", protocols=[SUBPROTOCOL]
                ) as ws:
                    code, before = await expect_close(ws)
                    assert code == 4404 and before[-1]["code"] == "unknown_session"
                    assert before[-1]["fatal"] is True

            # The browser leaves mid-reply: the engine stops generating.
            url2 = behind_tls["engine_url"].replace("wss://tutors.example", web_ws, 1)
            async with http.ws_connect(url2, protocols=[SUBPROTOCOL]) as ws:
                assert (await receive_json(ws))["type"] == "session"
                await receive_until(ws, "response_done")
                await ws.send_json({"type": "text", "content": "a long answer please"})
                await receive_until(ws, "text_stream")
            deadline = time.monotonic() + 15
            while True:
                history = await engine_history(http, engine, sid2)
                last = history[-1]
                if last["role"] == "assistant" and last.get("response_id") and len(history) == 3:
                    break
                assert time.monotonic() < deadline, f"the reply was not stopped: {history}"
                await asyncio.sleep(0.1)
            assert [m["role"] for m in history] == ["assistant", "user", "assistant"]
            assert last.get("interrupted") is True, history

            # A frame over the limit closes the socket with 1009, like the engine does.
            async with http.ws_connect(url2, protocols=[SUBPROTOCOL]) as ws:
                assert (await receive_json(ws))["type"] == "session"
                await ws.send_bytes(bytes(5000))
                code, _ = await expect_close(ws)
                assert code == 1009

            # The web role stopping closes proxied sockets with 1001, and exits promptly.
            async with http.ws_connect(url2, protocols=[SUBPROTOCOL]) as ws:
                assert (await receive_json(ws))["type"] == "session"
                started = time.monotonic()
                stopping = asyncio.create_task(asyncio.to_thread(web.stop))
                code, before = await expect_close(ws)
                assert code == 1001 and before[-1]["code"] == "shutting_down", (code, before)
                assert await stopping == 0
                assert time.monotonic() - started < 10

            # The engine dies under a proxied socket: 1011 with engine_unavailable.
            await web.start()
            async with http.ws_connect(url2, protocols=[SUBPROTOCOL]) as ws:
                assert (await receive_json(ws))["type"] == "session"
                engine.kill()
                code, before = await expect_close(ws)
                assert code == 1011 and before[-1]["code"] == "engine_unavailable", (code, before)
            # An engine that does not answer: 1013 (try again later) with engine_unavailable.
            async with http.ws_connect(url2, protocols=[SUBPROTOCOL]) as ws:
                code, before = await expect_close(ws)
                assert code == 1013 and before[-1]["code"] == "engine_unavailable", (code, before)
        assert web.stop() == 0
        # The token travels in the engine's URL: it must never reach a log.
        assert token not in web.output() + engine.output()
        assert API_KEY not in web.output() + engine.output()
    finally:
        engine.kill()
        web.kill()


def test_engine_socket_url_follows_the_engine_base_url() -> None:
    sid = "ab" * 16
    assert engine_socket_url("http://10.0.0.5:9000", sid, "t/k+n") == (
        f"ws://10.0.0.5:9000/ws/ws/{sid}?token=t%2Fk%2Bn"
    )
    assert engine_socket_url("https://engines.internal/e1/", sid, "tok") == (
        f"wss://engines.internal/e1/ws/ws/{sid}?token=tok"
    )
    assert engine_socket_url("http://e:9000", sid, None) == f"ws://e:9000/ws/ws/{sid}"


async def test_the_all_role_ignores_proxy_websocket(make_client: MakeClient) -> None:
    """In `all` browser and engine already share one origin: engine_url is the engine's own."""
    client = await make_client(
        "all",
        web={"proxy_websocket": True},
        engine={"public_url": "https://tutor.school.example"},
    )
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    assert session["engine_url"].startswith(
        f"wss://tutor.school.example/ws/ws/{session['session_id']}?token="
    )
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    await ws.close()


async def test_the_proxy_passes_the_subprotocol_and_the_old_clients_url(
    tmp_path: Path, database_url: str
) -> None:
    """Through the web role too: the old server's /ws/{id} with ?token= appended once more
    gives a JSON-only socket; offering tutorsrv.v1 gives it to both hops."""
    engine, web = processes(tmp_path, database_url)
    try:
        await engine.start()
        await web.start()
        async with aiohttp.ClientSession() as http:
            tenant = await set_up_tenant(http, web.base)
            session = await open_session(http, web.base, tenant)
            sid, token = session["session_id"], session["engine_token"]
            old_url = f"ws://127.0.0.1:{web.port}/ws/{sid}?token={token}?token={token}"
            async with http.ws_connect(old_url) as ws:
                assert ws.protocol is None
                hello = await receive_json(ws)
                assert hello["session_id"] == sid and hello["subprotocol"] is None
            async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                assert ws.protocol == SUBPROTOCOL
                assert (await receive_json(ws))["subprotocol"] == SUBPROTOCOL
            async with http.ws_connect(f"{old_url}&token=other") as ws:
                code, before = await expect_close(ws)
                assert code == 4401 and before[-1]["code"] == "invalid_token"
    finally:
        web.stop()
        engine.stop()
