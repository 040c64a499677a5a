"""The `openai` backend against a real OpenAI-compatible server (llama.cpp's), on loopback."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from tutorsrv.appkeys import LLM
from tutorsrv.engine.llm.base import GenerationStats, LLMLoadError
from tutorsrv.engine.llm.openai import OpenAIBackend, UpstreamError
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import MakeClient, new_session, receive_json, receive_until, ws_path
from .llama_server import llama_server
from .processes import free_port

pytestmark = pytest.mark.real_model


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    async with llama_server() as server:
        yield server.url


MESSAGES = [
    {"role": "system", "content": "You are a maths tutor."},
    {"role": "user", "content": "What is seven times eight?"},
]


async def test_streams_a_reply_with_usage(server_url: str) -> None:
    backend = OpenAIBackend(server_url, "smollm2", max_tokens=32, temperature=0.0)
    await backend.load()
    try:
        stats = GenerationStats()
        pieces = [p async for p in backend.stream(MESSAGES, stats)]
        assert len(pieces) >= 2 and "".join(pieces).strip()
        assert stats.completion_tokens == len(pieces)
        assert stats.finish_reason in ("stop", "length")
        assert backend.active == 0
    finally:
        await backend.close()


async def test_cancelling_closes_the_stream_and_the_server_goes_on(server_url: str) -> None:
    backend = OpenAIBackend(server_url, "smollm2", max_tokens=400, temperature=0.0)
    await backend.load()
    try:
        stats = GenerationStats()
        async with aclosing(backend.stream(MESSAGES, stats)) as stream:
            async for _ in stream:
                if stats.completion_tokens == 3:
                    break
        assert backend.active == 0 and stats.finish_reason == ""
        # The server took the closed connection as the end of that request: a new one
        # completes normally.
        again = GenerationStats()
        text = "".join([p async for p in backend.stream(MESSAGES, again)])
        assert text.strip() and again.finish_reason in ("stop", "length")
    finally:
        await backend.close()


async def test_engine_turn_through_the_openai_backend(
    make_client: MakeClient, server_url: str
) -> None:
    client = await make_client(
        llm={"backend": "openai", "base_url": server_url, "model": "smollm2", "max_tokens": 24}
    )
    assert client.server.app[LLM].name == "openai"
    session = await new_session(client)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await ws.send_json({"type": "text", "content": "Say hello."})
    messages = await receive_until(ws, "response_done", wait=60)
    assert messages[-2]["type"] == "text" and messages[-2]["content"]
    assert messages[-1]["metrics"]["tokens"] >= 1
    # And an interrupt mid-reply stops it.
    await ws.send_json({"type": "text", "content": "Count slowly from one to a hundred."})
    assert (await receive_json(ws, wait=60))["type"] == "text_stream"
    await ws.send_json({"type": "interrupt"})
    await receive_until(ws, "interrupted", wait=30)
    assert client.server.app[LLM].active == 0
    await ws.close()


async def test_unreachable_server_stops_start_up() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}", "m", timeout=2)
    with pytest.raises(LLMLoadError, match="cannot reach"):
        await backend.load()


async def test_a_dead_server_after_start_is_an_upstream_error(server_url: str) -> None:
    backend = OpenAIBackend(server_url, "smollm2", retries=1, timeout=2)
    await backend.load()
    backend.base_url = f"http://127.0.0.1:{free_port()}"  # as if the server went away
    try:
        with pytest.raises(UpstreamError, match="cannot reach"):
            async for _ in backend.stream(MESSAGES, GenerationStats()):
                pass
    finally:
        await backend.close()


async def test_model_server_killed_mid_reply_ends_the_turn_in_seconds(
    make_client: MakeClient,
) -> None:
    """The failure that once hung the suite: the model server dies (as llama.cpp's AMX bug
    made it) while a reply streams. The student gets a clear error at once, not silence, and
    the session stays usable."""
    async with llama_server() as server:
        client = await make_client(
            llm={
                "backend": "openai",
                "base_url": server.url,
                "model": "smollm2",
                "max_tokens": 400,
                "retries": 0,
            }
        )
        session = await new_session(client)
        ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
        await receive_json(ws)
        await ws.send_json({"type": "text", "content": "Count slowly from one to a hundred."})
        assert (await receive_json(ws, wait=60))["type"] == "text_stream"
        server.proc.send_signal(signal.SIGSEGV)
        messages = await receive_until(ws, "interrupted", wait=15)
        error = next(m for m in messages if m["type"] == "error")
        assert error["code"] == "generation_failed" and error["fatal"] is False
        assert "model server" in error["content"]
        assert messages[-1]["reason"] == "error"
        assert client.server.app[LLM].active == 0
        # The next turn fails just as clearly (nothing listens any more) and the socket stays.
        await ws.send_json({"type": "text", "content": "Are you there?"})
        messages = await receive_until(ws, "interrupted", wait=15)
        assert any("cannot reach" in m.get("content", "") for m in messages)
        await ws.close()
