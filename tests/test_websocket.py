"""The session WebSocket: tokens, streaming, interruption, takeover, expiry, bad input."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import LLM, REGISTRY
from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.registry import TokenSigner

from .conftest import (
    AUTH,
    MakeClient,
    eventually,
    expect_close,
    new_session,
    receive_json,
    receive_until,
    ws_path,
)

SLOW = {"scripted_token_count": 400, "scripted_token_delay_ms": 20.0}


async def connect(client: TestClient, session: dict[str, Any]):
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    hello = await receive_json(ws)
    assert hello["type"] == "session"
    return ws, hello


async def test_session_message_then_streamed_reply(client: TestClient) -> None:
    session = await new_session(client, tutor={"name": "Ada"})
    ws, hello = await connect(client, session)
    assert hello["session_id"] == session["session_id"]
    assert hello["tutor"]["name"] == "Ada"
    assert hello["resumed"] is False
    assert hello["history"] == []

    await ws.send_json({"type": "text", "content": "What is a fraction?"})
    messages = await receive_until(ws, "response_done")
    kinds = [m["type"] for m in messages]
    streamed = [m for m in messages if m["type"] == "text_stream"]
    assert kinds[-2:] == ["text", "response_done"]
    assert len(streamed) > 3 and set(kinds[:-2]) == {"text_stream"}
    response_id = streamed[0]["response_id"]
    assert all(m["response_id"] == response_id for m in messages)
    full = messages[-2]
    assert full["role"] == "assistant"
    assert full["content"] == "".join(m["token"] for m in streamed).strip()
    assert "What is a fraction?" in full["content"]  # the scripted echo: right turn answered
    metrics = messages[-1]["metrics"]
    assert metrics["tokens"] == len(streamed)
    assert metrics["ttft_ms"] >= 0 and metrics["duration_ms"] >= metrics["ttft_ms"]

    # The engine kept the exchange.
    resp = await client.get(f"/v1/sessions/{session['session_id']}", headers=AUTH)
    history = (await resp.json())["history"]
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "What is a fraction?"),
        ("assistant", full["content"]),
    ]
    await ws.close()


async def test_greeting_is_streamed_on_first_connect_only(client: TestClient) -> None:
    session = await new_session(client, tutor={"greeting": "Hello there, I am Ada."})
    ws, _ = await connect(client, session)
    messages = await receive_until(ws, "response_done")
    assert messages[-2]["content"] == "Hello there, I am Ada."
    await ws.close()

    ws, hello = await connect(client, session)
    assert hello["resumed"] is True
    assert hello["history"][0]["content"] == "Hello there, I am Ada."
    await ws.send_json({"type": "ping"})
    assert (await receive_json(ws))["type"] == "pong"  # no second greeting before it
    await ws.close()


async def test_interrupt_stops_tokens_at_once(make_client: MakeClient) -> None:
    client = await make_client(llm=SLOW)
    session = await new_session(client)
    ws, _ = await connect(client, session)
    await ws.send_json({"type": "text", "content": "Tell me everything"})
    for _ in range(3):
        assert (await receive_json(ws))["type"] == "text_stream"
    await ws.send_json({"type": "interrupt"})

    seen = await receive_until(ws, "interrupted")
    interrupted = seen[-1]
    assert interrupted["reason"] == "interrupt"
    response_id = interrupted["response_id"]
    # Nothing of that response after `interrupted`: the next frame answers our ping.
    await ws.send_json({"type": "ping"})
    after = await receive_json(ws)
    assert after == {"type": "pong"}
    assert client.server.app[LLM].active == 0

    registry = client.server.app[REGISTRY]
    reply = registry.get(session["session_id"]).history[-1]
    assert reply.role == "assistant" and reply.interrupted
    assert reply.response_id == response_id
    assert 0 < len(reply.content.split()) < 400
    await ws.close()


async def test_new_text_interrupts_the_previous_reply(make_client: MakeClient) -> None:
    client = await make_client(llm=SLOW)
    session = await new_session(client)
    ws, _ = await connect(client, session)
    await ws.send_json({"type": "text", "content": "first"})
    first = await receive_json(ws)
    await ws.send_json({"type": "text", "content": "second"})
    seen = await receive_until(ws, "interrupted")
    assert seen[-1] == {
        "type": "interrupted",
        "response_id": first["response_id"],
        "reason": "new_turn",
    }
    nxt = await receive_json(ws)
    assert nxt["type"] == "text_stream" and nxt["response_id"] != first["response_id"]
    await ws.send_json({"type": "interrupt"})
    await receive_until(ws, "interrupted")
    await ws.close()


async def test_interrupt_with_nothing_running_is_harmless(client: TestClient) -> None:
    ws, _ = await connect(client, await new_session(client))
    await ws.send_json({"type": "interrupt"})
    await ws.send_json({"type": "ping", "id": 7})
    assert await receive_json(ws) == {"type": "pong", "id": 7}
    await ws.close()


async def test_disconnect_mid_reply_cancels_generation(make_client: MakeClient) -> None:
    client = await make_client(llm=SLOW)
    session = await new_session(client)
    ws, _ = await connect(client, session)
    await ws.send_json({"type": "text", "content": "long answer please"})
    await receive_json(ws)
    llm = client.server.app[LLM]
    assert llm.active == 1
    await ws.close()

    registry = client.server.app[REGISTRY]
    await eventually(lambda: llm.active == 0, "generation to stop")
    stored = registry.get(session["session_id"])
    await eventually(lambda: stored.socket is None, "socket to detach")
    assert stored.history[-1].interrupted
    assert len(stored.history[-1].content.split()) < 400


async def test_reconnect_takes_over_and_keeps_history(client: TestClient) -> None:
    session = await new_session(client)
    old, _ = await connect(client, session)
    await old.send_json({"type": "text", "content": "remember me"})
    await receive_until(old, "response_done")

    new, hello = await connect(client, session)
    assert hello["resumed"] is True
    assert [m["role"] for m in hello["history"]] == ["user", "assistant"]
    assert hello["history"][0]["content"] == "remember me"

    code, before = await expect_close(old)
    assert code == 4409
    assert before[-1]["type"] == "error" and before[-1]["code"] == "replaced"

    await new.send_json({"type": "text", "content": "still here"})
    done = await receive_until(new, "response_done")
    assert "still here" in done[-2]["content"]
    registry = client.server.app[REGISTRY]
    assert len(registry.get(session["session_id"]).history) == 4
    await new.close()


async def test_takeover_mid_reply_interrupts_the_old_socket_first(
    make_client: MakeClient,
) -> None:
    client = await make_client(llm=SLOW)
    session = await new_session(client)
    old, _ = await connect(client, session)
    await old.send_json({"type": "text", "content": "a long one"})
    first = await receive_json(old)

    new, hello = await connect(client, session)
    # The new socket sees the cut-off reply, stored with what was produced.
    assert [m["role"] for m in hello["history"]] == ["user", "assistant"]
    assert hello["history"][1]["interrupted"] is True
    assert hello["history"][1]["response_id"] == first["response_id"]

    code, before = await expect_close(old)
    assert code == 4409
    kinds = [m["type"] for m in before]
    assert kinds[-2:] == ["interrupted", "error"]
    assert set(kinds[:-2]) <= {"text_stream"}
    assert before[-2]["reason"] == "closing"
    assert client.server.app[LLM].active == 0
    await new.close()


async def test_delete_closes_the_live_socket_with_4410(client: TestClient) -> None:
    session = await new_session(client)
    ws, _ = await connect(client, session)
    resp = await client.delete(f"/v1/sessions/{session['session_id']}", headers=AUTH)
    assert resp.status == 204
    code, before = await expect_close(ws)
    assert code == 4410
    assert before[-1]["code"] == "session_ended" and before[-1]["fatal"] is True

    # Coming back with the same (still signed, unexpired) token: ended, not unknown.
    again = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    code, _ = await expect_close(again)
    assert code == 4410


async def test_reaper_expires_idle_sessions_and_closes_sockets(make_client: MakeClient) -> None:
    client = await make_client(engine={"session_timeout_seconds": 0.3})
    connected = await new_session(client)
    never_connected = await new_session(client)
    ws, _ = await connect(client, connected)

    # No client traffic at all: only the reaper can end these.
    code, before = await expect_close(ws, wait=10)
    assert code == 4408
    assert before[-1]["code"] == "session_expired"
    registry = client.server.app[REGISTRY]
    await eventually(lambda: len(registry) == 0, "both sessions to expire")
    assert registry.end_reason(never_connected["session_id"]) == "expired"
    assert (await client.get("/health")).status == 200


async def test_reaper_enforces_the_maximum_duration(make_client: MakeClient) -> None:
    client = await make_client(engine={"max_session_seconds": 0.4})
    session = await new_session(client)
    ws, _ = await connect(client, session)
    # Activity does not extend the hard limit.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await ws.send_json({"type": "text", "content": "still talking"})
        msg = await ws.receive(timeout=10)
        if msg.type != WSMsgType.TEXT:
            break
        if json.loads(msg.data).get("code") == "session_expired":
            break
    code, _ = await expect_close(ws)
    assert code == 4408


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda s: None, 4401),
        (lambda s: "", 4401),
        (lambda s: "not-a-jwt", 4401),
        (
            lambda s: TokenSigner("another-secret-of-thirty-two-bytes!").issue(
                s["session_id"], time.time() + 60
            ),
            4401,
        ),
        (lambda s: s["engine_token"][:-4] + "AAAA", 4401),
    ],
)
async def test_bad_tokens_are_refused(client: TestClient, make_token, code: int) -> None:
    session = await new_session(client)
    token = make_token(session)
    path = f"/ws/ws/{session['session_id']}" + ("" if token is None else f"?token={token}")
    ws = await client.ws_connect(path, protocols=[SUBPROTOCOL])
    got, before = await expect_close(ws)
    assert got == code
    assert before == [
        {"type": "error", "code": "invalid_token", "content": before[0]["content"], "fatal": True}
    ]
    registry = client.server.app[REGISTRY]
    assert registry.get(session["session_id"]).socket is None


async def test_unsigned_alg_none_token_is_refused(client: TestClient) -> None:
    import jwt

    session = await new_session(client)
    forged = jwt.encode(
        {"sid": session["session_id"], "aud": "tutorsrv-engine", "exp": time.time() + 60},
        key=None,
        algorithm="none",
    )
    ws = await client.ws_connect(
        f"/ws/ws/{session['session_id']}?token={forged}", protocols=[SUBPROTOCOL]
    )
    code, _ = await expect_close(ws)
    assert code == 4401


async def test_token_for_another_session_is_4403(client: TestClient) -> None:
    one = await new_session(client)
    two = await new_session(client)
    ws = await client.ws_connect(
        f"/ws/ws/{one['session_id']}?token={two['engine_token']}", protocols=[SUBPROTOCOL]
    )
    code, before = await expect_close(ws)
    assert code == 4403
    assert before[0]["code"] == "wrong_session"


async def test_expired_token_is_4408(client: TestClient) -> None:
    session = await new_session(client)
    signer = client.server.app[REGISTRY].signer
    stale = signer.issue(session["session_id"], time.time() - 5)
    ws = await client.ws_connect(
        f"/ws/ws/{session['session_id']}?token={stale}", protocols=[SUBPROTOCOL]
    )
    code, _ = await expect_close(ws)
    assert code == 4408


async def test_valid_token_for_unknown_session_is_4404(client: TestClient) -> None:
    signer = client.server.app[REGISTRY].signer
    token = signer.issue("0" * 32, time.time() + 60)
    ws = await client.ws_connect(f"/ws/ws/{'0' * 32}?token={token}", protocols=[SUBPROTOCOL])
    code, before = await expect_close(ws)
    assert code == 4404
    assert before[0]["code"] == "unknown_session"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2, 3]", "invalid_message"),
        ('"text"', "invalid_message"),
        ("{}", "missing_field"),
        ('{"type": 5}', "invalid_field"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "text"}', "missing_field"),
        ('{"type": "text", "content": 42}', "invalid_field"),
        ('{"type": "text", "content": "   "}', "invalid_field"),
        ('{"type": "text", "content": "nul\\u0000here"}', "invalid_field"),
        ('{"type": "text", "content": "' + "x" * 4001 + '"}', "text_too_long"),
        ('{"type": "played", "response_id": "r"}', "missing_field"),
        ('{"type": "played", "response_id": "r", "audio_ms": -1}', "invalid_field"),
        ('{"type": "played", "response_id": "r", "audio_ms": true}', "invalid_field"),
        ('{"type": "config"}', "missing_field"),
        ('{"type": "config", "audio_output": "no"}', "invalid_field"),
        ('{"type": "config", "volume": 3}', "invalid_field"),
        ('{"type": "audio", "data": "AAAA"}', "audio_unavailable"),
        ('{"type": "audio_end"}', "audio_unavailable"),
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ],
)
async def test_bad_messages_get_an_error_and_the_socket_stays_open(
    client: TestClient, frame: str, code: str
) -> None:
    session = await new_session(client)
    ws, _ = await connect(client, session)
    await ws.send_str(frame)
    error = await receive_json(ws)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["fatal"] is False and error["content"]
    # Still open and still working.
    await ws.send_json({"type": "text", "content": "are you there?"})
    done = await receive_until(ws, "response_done")
    assert "are you there?" in done[-2]["content"]
    await ws.close()


async def test_binary_frames_are_refused_when_voice_input_is_off(client: TestClient) -> None:
    ws, _ = await connect(client, await new_session(client))
    await ws.send_bytes(b"\x00\x01" * 100)
    assert (await receive_json(ws))["code"] == "audio_unavailable"
    await ws.send_json({"type": "ping"})
    assert (await receive_json(ws))["type"] == "pong"
    await ws.close()


async def test_config_needs_no_reply_and_played_names_a_spoken_response(
    client: TestClient,
) -> None:
    ws, _ = await connect(client, await new_session(client))
    await ws.send_json({"type": "config", "audio_output": False})
    await ws.send_json({"type": "ping"})
    assert await receive_json(ws) == {"type": "pong"}
    # Nothing was spoken on this engine (no TTS): a `played` report names nothing known.
    await ws.send_json({"type": "played", "response_id": "r_1", "audio_ms": 1200})
    assert (await receive_json(ws))["code"] == "unknown_response"
    await ws.close()


async def test_oversized_frame_closes_with_1009_and_others_are_unaffected(
    make_client: MakeClient,
) -> None:
    client = await make_client(engine={"max_message_bytes": 4096})
    victim = await new_session(client)
    bystander = await new_session(client)
    ws, _ = await connect(client, victim)
    other, _ = await connect(client, bystander)

    await ws.send_str(json.dumps({"type": "text", "content": "x" * 5000}))
    code, _ = await expect_close(ws)
    assert code == 1009

    await other.send_json({"type": "text", "content": "hello"})
    done = await receive_until(other, "response_done")
    assert "hello" in done[-2]["content"]
    await other.close()


async def test_generation_failure_is_reported_and_socket_survives(client: TestClient) -> None:
    llm = client.server.app[LLM]

    async def broken(messages, stats):
        yield "partial"
        raise RuntimeError("model exploded")

    llm.stream = broken  # type: ignore[method-assign]
    ws, _ = await connect(client, await new_session(client))
    await ws.send_json({"type": "text", "content": "hi"})
    seen = await receive_until(ws, "interrupted")
    error = next(m for m in seen if m["type"] == "error")
    assert error["code"] == "generation_failed" and error["fatal"] is False
    assert seen[-1]["reason"] == "error"
    await ws.send_json({"type": "ping"})
    assert (await receive_json(ws))["type"] == "pong"
    await ws.close()


async def test_shutdown_closes_sockets_with_1001(make_client: MakeClient) -> None:
    client = await make_client()
    ws, _ = await connect(client, await new_session(client))
    await client.server.app.shutdown()
    code, before = await expect_close(ws)
    assert code == 1001
    assert before[-1]["code"] == "shutting_down"


async def test_a_knowledge_base_without_search_says_so_and_still_answers(
    client: TestClient,
) -> None:
    # An engine with no web role to search through (no engine.backplane_url).
    session = await new_session(client, kb_id="kb-1")
    ws, _ = await connect(client, session)
    await ws.send_json({"type": "text", "content": "hello"})
    messages = await receive_until(ws, "response_done")
    error = messages[0]
    assert error["type"] == "error" and error["code"] == "kb_unavailable"
    assert error["fatal"] is False and error["response_id"] == messages[-1]["response_id"]
    assert "hello" in messages[-2]["content"]
    await ws.close()
