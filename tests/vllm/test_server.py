"""``llm.backend = "openai"`` against vLLM's own OpenAI-compatible server (``vllm serve``'s
API server, from .venv-vllm): streaming, usage with cached tokens, and cancel = abort on the
server, seen in vLLM's own Prometheus metrics."""

from __future__ import annotations

import re
from contextlib import aclosing

import aiohttp
import pytest

from tutorsrv.appkeys import LLM
from tutorsrv.engine.llm.base import GenerationStats
from tutorsrv.engine.llm.openai import OpenAIBackend
from tutorsrv.engine.protocol import SUBPROTOCOL

from ..conftest import MakeClient, eventually, new_session, ws_path
from ..speech import receive_until
from .conftest import PERSONA, VLLMServer

pytestmark = pytest.mark.timeout(300)

MESSAGES = [
    {"role": "system", "content": PERSONA},
    {"role": "user", "content": "What is seven times eight?"},
]


async def server_metric(server: VLLMServer, name: str, **labels: str) -> float:
    """The sum of one of vLLM's metrics over the series that carry ``labels``."""
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        text = await resp.text()
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total, found = total + float(match.group(2)), True
    assert found, f"{name} {labels} not in vLLM's /metrics"
    return total


async def test_streams_with_usage_and_cached_prompt_tokens(vllm_server: VLLMServer) -> None:
    backend = OpenAIBackend(vllm_server.url, vllm_server.name, max_tokens=24, temperature=0.0)
    await backend.load()
    try:
        first, second = GenerationStats(), GenerationStats()
        pieces = [p async for p in backend.stream(MESSAGES, first)]
        assert len(pieces) >= 2 and "".join(pieces).strip()
        # vLLM's usage: its own token count (a piece may carry none), the prompt's length.
        assert len(pieces) <= first.completion_tokens <= 24
        assert first.prompt_tokens > 400 and first.finish_reason in ("stop", "length")
        async for _ in backend.stream(MESSAGES, second):
            pass
        # The same prompt again: all of it but the last, partial 128-token block is cached.
        assert second.cached_prompt_tokens >= (first.prompt_tokens // 128) * 128
        assert backend.active == 0
    finally:
        await backend.close()


async def test_cancelling_the_stream_aborts_the_request_on_the_server(
    vllm_server: VLLMServer,
) -> None:
    backend = OpenAIBackend(vllm_server.url, vllm_server.name, max_tokens=1000, temperature=0.0)
    await backend.load()
    # vLLM counts requests that end by themselves (stop, length, ...), not those its clients
    # abort: if ours stops running without adding to these, it was aborted.
    finished = await server_metric(vllm_server, "vllm:request_success_total")
    try:
        counting = [*MESSAGES[:1], {"role": "user", "content": "Count to three hundred."}]
        stats = GenerationStats()
        async with aclosing(backend.stream(counting, stats)) as stream:
            async for _ in stream:
                if stats.completion_tokens == 3:
                    assert await server_metric(vllm_server, "vllm:num_requests_running") == 1
                    break
        assert stats.finish_reason == ""

        async def stopped() -> bool:
            return await server_metric(vllm_server, "vllm:num_requests_running") == 0

        await eventually(stopped, "vLLM to stop the abandoned request", limit=20)
        assert await server_metric(vllm_server, "vllm:request_success_total") == finished
    finally:
        await backend.close()


async def test_an_engine_turn_and_interrupt_through_the_vllm_server(
    make_client: MakeClient, vllm_server: VLLMServer
) -> None:
    client = await make_client(
        llm={
            "backend": "openai",
            "base_url": vllm_server.url,
            "model": vllm_server.name,
            "max_tokens": 32,
            "temperature": 0.0,
        }
    )
    session = await new_session(client, tutor={"system_prompt": PERSONA, "max_reply_tokens": 1000})
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_until(ws, "session")
    for question in ("What is a fraction?", "And what is a half of ten?"):
        await ws.send_json({"type": "text", "content": question})
        heard = await receive_until(ws, "response_done", wait=120)
        assert heard.events("text")[0]["content"].strip()
    metrics = heard.events("response_done")[0]["metrics"]
    assert metrics["cached_prompt_tokens"] >= 128 and metrics["tokens"] >= 1

    await ws.send_json({"type": "text", "content": "Count to three hundred, in words."})
    await receive_until(ws, "text_stream", wait=120)
    await ws.send_json({"type": "interrupt"})
    await receive_until(ws, "interrupted", wait=30)
    assert client.server.app[LLM].active == 0

    async def idle() -> bool:
        return await server_metric(vllm_server, "vllm:num_requests_running") == 0

    await eventually(idle, "vLLM to drop the interrupted request", limit=20)
    await ws.close()
