"""Graceful shutdown: refuse new work, tell clients, let replies finish within the grace,
then close every socket with 1001 (and, in a real process, store the finished turns)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import AUTH, MakeClient, expect_close, new_session, receive_json, ws_path
from .processes import ServerProcess
from .test_split_deployment import open_session, set_up_tenant, transcript


def _types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def _first(messages: list[dict[str, Any]], kind: str, **fields: Any) -> int:
    for i, m in enumerate(messages):
        if m["type"] == kind and all(m.get(k) == v for k, v in fields.items()):
            return i
    raise AssertionError(f"no {kind} {fields} in {_types(messages)}")


async def test_reply_that_fits_the_grace_finishes_before_the_1001_close(
    make_client: MakeClient,
) -> None:
    # 60 tokens x 20 ms = about 1.2 s of reply; the grace is far longer.
    client = await make_client(
        llm={"scripted_token_count": 60, "scripted_token_delay_ms": 20},
        server={"shutdown_grace_seconds": 20},
    )
    session = await new_session(client)
    spare = await new_session(client, student_id="s2")  # created, never connected
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    await ws.send_json({"type": "text", "content": "hello"})
    first = await receive_json(ws)
    assert first["type"] == "text_stream"
    response_id = first["response_id"]

    shutdown = asyncio.create_task(client.server.app.shutdown())
    seen: list[dict[str, Any]] = []
    while True:
        message = await receive_json(ws)
        seen.append(message)
        if message["type"] == "error":
            break
    assert message["code"] == "shutting_down" and message["fatal"] is False, message

    # During the grace: no new session, no new socket, no new turn.
    resp = await client.post(
        "/v1/sessions", json={"tutor_id": "t", "student_id": "x"}, headers=AUTH
    )
    assert resp.status == 503
    assert (await resp.json())["error"] == "shutting_down"
    assert int(resp.headers["Retry-After"]) >= 1
    late = await client.ws_connect(ws_path(spare), protocols=[SUBPROTOCOL])
    code, before = await expect_close(late)
    assert code == 1001 and before[-1]["code"] == "shutting_down", before
    await ws.send_json({"type": "text", "content": "one more"})
    assert not shutdown.done(), "the grace should still be running"

    code, rest = await expect_close(ws, wait=30)
    await asyncio.wait_for(shutdown, 30)
    seen += rest
    assert code == 1001
    refused = _first(seen, "error", code="shutting_down", fatal=False)
    done = _first(seen, "response_done", response_id=response_id)
    # The refused turn got a non-fatal error and did not cut the reply short.
    assert "interrupted" not in _types(seen), _types(seen)
    assert sum(1 for m in seen if m.get("code") == "shutting_down" and not m["fatal"]) == 2
    assert refused < done
    assert seen[-1] == {**seen[-1], "type": "error", "code": "shutting_down", "fatal": True}
    tokens = [m for m in [first, *seen] if m["type"] == "text_stream"]
    assert len(tokens) == 60
    # The reply is in the session's history, whole.
    history = (
        await (await client.get(f"/v1/sessions/{session['session_id']}", headers=AUTH)).json()
    )["history"]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["response_id"] == response_id and not history[1].get("interrupted")


async def test_reply_longer_than_the_grace_is_interrupted_then_closed(
    make_client: MakeClient,
) -> None:
    # 1000 tokens x 10 ms = about 10 s of reply; the grace is half a second.
    client = await make_client(
        llm={"scripted_token_count": 1000, "scripted_token_delay_ms": 10},
        server={"shutdown_grace_seconds": 0.5},
    )
    session = await new_session(client)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    await ws.send_json({"type": "text", "content": "a long one"})
    first = await receive_json(ws)
    assert first["type"] == "text_stream"

    loop = asyncio.get_running_loop()
    started = loop.time()
    shutdown = asyncio.create_task(client.server.app.shutdown())
    code, seen = await expect_close(ws, wait=15)
    await asyncio.wait_for(shutdown, 15)
    elapsed = loop.time() - started
    assert code == 1001
    notice = _first(seen, "error", code="shutting_down", fatal=False)
    cut = _first(seen, "interrupted", response_id=first["response_id"])
    assert notice < cut
    assert seen[cut]["reason"] == "closing"
    assert "response_done" not in _types(seen)
    assert seen[-1]["type"] == "error" and seen[-1]["fatal"] is True
    # It waited for the grace, not for the reply (nor returned at once).
    assert 0.4 <= elapsed < 5, elapsed
    history = (
        await (await client.get(f"/v1/sessions/{session['session_id']}", headers=AUTH)).json()
    )["history"]
    assert history[-1]["interrupted"] is True


async def test_idle_sockets_close_without_waiting_for_the_grace(make_client: MakeClient) -> None:
    client = await make_client(server={"shutdown_grace_seconds": 30})
    session = await new_session(client)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(client.server.app.shutdown(), 10)
    code, seen = await expect_close(ws)
    assert code == 1001
    assert [(m["type"], m["code"], m["fatal"]) for m in seen] == [
        ("error", "shutting_down", False),
        ("error", "shutting_down", True),
    ]
    assert loop.time() - started < 5


async def test_sigterm_lets_the_reply_finish_and_stores_it(
    tmp_path: Path, database_url: str
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "TUTORSRV_LLM_BACKEND": "scripted",
        "TUTORSRV_LLM_SCRIPTED_TOKEN_COUNT": "150",
        "TUTORSRV_LLM_SCRIPTED_TOKEN_DELAY_MS": "10",
        "TUTORSRV_SERVER_SHUTDOWN_GRACE_SECONDS": "15",
    }
    server = ServerProcess("all", env, tmp_path)
    try:
        await server.start()
        assert server.proc is not None
        async with aiohttp.ClientSession() as http:
            tenant = await set_up_tenant(http, server.base)
            status, session = await open_session(http, server.base, tenant)
            assert status == 201, session
            async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                assert (await ws.receive_json(timeout=10))["type"] == "session"
                while (await ws.receive_json(timeout=10))["type"] != "response_done":
                    pass  # the greeting
                await ws.send_json({"type": "text", "content": "before the deploy"})
                first = await ws.receive_json(timeout=10)
                assert first["type"] == "text_stream"
                server.proc.send_signal(signal.SIGTERM)
                seen: list[dict[str, Any]] = [first]
                while True:
                    msg = await ws.receive(timeout=30)
                    if msg.type != WSMsgType.TEXT:
                        break
                    seen.append(json.loads(msg.data))
                assert msg.type == WSMsgType.CLOSE and msg.data == 1001, (msg, _types(seen))
        code = await asyncio.to_thread(server.proc.wait, 60)
        assert code == 0, server.output()
        _first(seen, "error", code="shutting_down", fatal=False)
        done = _first(seen, "response_done", response_id=first["response_id"])
        assert "interrupted" not in _types(seen)
        assert sum(1 for m in seen[:done] if m["type"] == "text_stream") == 150
        reply = seen[_first(seen, "text", response_id=first["response_id"])]["content"]

        # After a restart the finished reply is in the transcript, whole.
        await server.start()
        async with aiohttp.ClientSession() as http:
            messages = await transcript(http, server.base, tenant, session["session_id"], 3)
        assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]
        assert messages[1]["content"] == "before the deploy"
        assert messages[2]["response_id"] == first["response_id"]
        assert messages[2]["content"] == reply and not messages[2].get("interrupted")
        assert server.stop() == 0
    finally:
        server.kill()
