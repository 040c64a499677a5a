"""``llm.backend = "vllm"``: vLLM in the engine's own process (``tutorsrv run --role engine``
from .venv-vllm), over the engine's WebSocket, text and voice, and its start and stop.

One engine serves the module's conversations (vLLM takes ~20 s to start); the last test stops
it with SIGTERM. The model is SmolLM2-135M: these tests check the plumbing, not the answers."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tutorsrv.engine.protocol import SUBPROTOCOL

from ..conftest import AUTH, eventually, receive_json
from ..processes import ServerProcess
from ..speech import receive_until as receive_heard
from ..speech import send_pcm, utterance_pcm
from .conftest import PERSONA, engine_env, kill_group, wait_group_gone, wait_healthy

pytestmark = pytest.mark.timeout(300)


def start(server: ServerProcess, wait: float = 240.0) -> None:
    """ServerProcess.start, without an event loop (module fixtures have none)."""
    log = server.log.open("a")
    server.proc = subprocess.Popen(
        [server.python, "-m", "tutorsrv", "run", "--role", "engine", "--port", str(server.port)],
        env=server.env,
        cwd=server.cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_healthy(server.base, server.proc, server.output, wait)


@pytest.fixture(scope="module")
def engine(
    vllm_python: str, vllm_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = engine_env(
        vllm_model,
        TUTORSRV_LLM_MAX_TOKENS="48",
        TUTORSRV_ASR_ENABLED="true",
        TUTORSRV_TTS_ENABLED="true",
    )
    workdir = tmp_path_factory.mktemp("vllm-engine")
    server = ServerProcess("engine", env, workdir, python=vllm_python)
    start(server)
    try:
        yield server
    finally:
        assert server.proc is not None
        server.kill()
        kill_group(server.proc.pid)


async def open_session(
    http: aiohttp.ClientSession, engine: ServerProcess, **tutor: Any
) -> aiohttp.ClientWebSocketResponse:
    body = {"tutor_id": "ada", "student_id": "s1", "tutor": {"name": "Ada", **tutor}}
    async with http.post(engine.base + "/v1/sessions", json=body, headers=AUTH) as resp:
        assert resp.status == 201, await resp.text()
        created = await resp.json()
    ws = await http.ws_connect(created["engine_url"], protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    return ws


async def engine_requests(http: aiohttp.ClientSession, engine: ServerProcess) -> float:
    """tutorsrv_llm_engine_requests: what vLLM itself still holds."""
    async with http.get(engine.base + "/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^tutorsrv_llm_engine_requests\{[^}]*\} (\S+)$", text, re.M)
    assert found, "no tutorsrv_llm_engine_requests in /metrics"
    return float(found.group(1))


async def test_health_names_the_backend_and_model(engine: ServerProcess, vllm_model: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(engine.base + "/health") as resp:
            health = await resp.json()
    assert health["llm"]["backend"] == "vllm"
    assert health["llm"]["model"] == vllm_model and health["llm"]["ready"] is True
    assert "vLLM on the CPU: 1024 MiB of KV cache" in engine.output()


async def test_a_turn_streams_over_the_websocket(engine: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_session(http, engine, system_prompt="You are a maths tutor.")
        await ws.send_json({"type": "text", "content": "What is seven times eight?"})
        heard = await receive_heard(ws, "response_done", wait=120)
        pieces = [m["token"] for m in heard.events("text_stream")]
        reply = heard.events("text")[0]["content"]
        assert len(pieces) >= 2 and reply.strip()
        assert "".join(pieces).strip() == reply.strip()
        # The reply is spoken too (TTS is on in this engine).
        start, end = heard.index("audio_start"), heard.index("audio_end")
        assert heard.audio_between(start, end)
        metrics = heard.events("response_done")[0]["metrics"]
        # Every token counts, and some pieces have no text of their own: never fewer tokens
        # than pieces, never more than max_tokens.
        assert len(pieces) <= metrics["tokens"] <= 48
        assert metrics["prompt_tokens"] > 10 and metrics["ttft_ms"] > 0
        assert await engine_requests(http, engine) == 0
        await ws.close()


async def test_the_prefix_cache_serves_each_later_turn(engine: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_session(http, engine, system_prompt=PERSONA)
        seen = []
        for question in ("What is a fraction?", "And what is a half of ten?"):
            await ws.send_json({"type": "text", "content": question})
            heard = await receive_heard(ws, "response_done", wait=120)
            seen.append(heard.events("response_done")[0]["metrics"])
        first, second = seen
        assert first["prompt_tokens"] > 400
        # The second prompt repeats the first one and its reply: every whole 128-token block
        # of that is vLLM's cache, not read again.
        assert second["cached_prompt_tokens"] >= (first["prompt_tokens"] // 128) * 128
        assert second["cached_prompt_tokens"] < second["prompt_tokens"]
        await ws.close()


async def test_an_interrupt_stops_the_reply_and_aborts_it_in_vllm(engine: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_session(http, engine, max_reply_tokens=1000)
        await ws.send_json(
            {"type": "text", "content": "Count from one to three hundred, in words."}
        )
        await receive_heard(ws, "text_stream", wait=120)
        assert await engine_requests(http, engine) == 1  # vLLM is writing it now
        await ws.send_json({"type": "interrupt"})
        heard = await receive_heard(ws, "interrupted", wait=30)
        assert heard.events("interrupted")[0]["reason"] == "interrupt"
        # Nothing of that reply after `interrupted`: no token, no audio.
        with pytest.raises(asyncio.TimeoutError):
            extra = await ws.receive(timeout=1.5)
            pytest.fail(f"after interrupted: {extra}")
        assert await engine_requests(http, engine) == 0
        # And the model is free for the next turn at once.
        await ws.send_json({"type": "text", "content": "Say hello."})
        heard = await receive_heard(ws, "response_done", wait=120)
        assert heard.events("response_done")[0]["metrics"]["tokens"] >= 1
        await ws.close()


async def test_a_spoken_conversation(engine: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await open_session(http, engine, system_prompt="You are a maths tutor.")
        seen = []
        for question, keys in (
            ("What is seven times eight?", ("seven", "7")),
            ("And what is half of ten?", ("half",)),
        ):
            await send_pcm(ws, utterance_pcm(question))
            heard = await receive_heard(ws, "response_done", wait=120)
            said = heard.events("transcription")[0]["content"].lower()
            assert any(key in said for key in keys), said
            assert heard.events("text")[0]["content"].strip()
            start, end = heard.index("audio_start"), heard.index("audio_end")
            assert len(heard.audio_between(start, end)) > 22050  # over half a second
            metrics = heard.events("response_done")[0]["metrics"]
            assert metrics["asr_ms"] > 0 and metrics["speech_to_first_audio_ms"] > 0
            seen.append(metrics)
        # The second turn's prompt held the first question and answer.
        first, second = seen
        assert second["prompt_tokens"] > first["prompt_tokens"] + first["tokens"] // 2
        await ws.close()


async def test_a_killed_vllm_engine_fails_turns_clearly_and_comes_back(
    engine: ServerProcess,
) -> None:
    assert engine.proc is not None
    cores = [
        child
        for child in psutil.Process(engine.proc.pid).children()
        if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline())
    ]
    assert cores, "no vLLM EngineCore process under the engine"
    for core in cores:
        core.kill()
    async with aiohttp.ClientSession() as http:

        async def health_where(check: Any) -> tuple[int, dict[str, Any]] | None:
            async with http.get(engine.base + "/health") as resp:
                body = await resp.json()
                return (resp.status, body) if check(body["llm"]) else None

        # Seen within a second or so, with nobody talking.
        status, body = await eventually(
            lambda: health_where(lambda llm: not llm["ready"] and llm["last_failure"]),
            "/health to see vLLM's engine gone",
            limit=30,
        )
        assert status == 503
        ws = await open_session(http, engine)
        await ws.send_json({"type": "text", "content": "Say hello."})
        heard = await receive_heard(ws, "interrupted", wait=60)
        error = heard.events("error")[0]
        assert error["code"] == "generation_failed" and "try again" in error["content"]
        # The engine starts vLLM again by itself; the same socket is answered after that.
        status, body = await eventually(
            lambda: health_where(lambda llm: llm["ready"]), "vLLM's engine to be back", limit=180
        )
        assert body["llm"]["restarts"] == 1
        await ws.send_json({"type": "text", "content": "What is seven times eight?"})
        heard = await receive_heard(ws, "response_done", wait=120)
        assert heard.events("text")[0]["content"].strip()
        await ws.close()
    assert engine.proc.poll() is None


def test_sigterm_stops_the_engine_and_vllm_cleanly(engine: ServerProcess) -> None:
    """Last in this module: it stops the shared engine."""
    assert engine.proc is not None
    before = len(engine.output())
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.proc.wait(timeout=90) == 0, engine.output()[-4000:]
    assert wait_group_gone(engine.proc.pid) == []
    # The log of the stop itself (the killed engine above logged its own crash).
    assert "Traceback" not in engine.output()[before:]


def test_a_folder_that_is_not_a_model_exits_3_naming_it(vllm_python: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    env = engine_env(str(tmp_path))
    server = ServerProcess("engine", env, tmp_path, python=vllm_python)
    proc = subprocess.run(
        [vllm_python, "-m", "tutorsrv", "run", "--role", "engine", "--port", str(server.port)],
        env=server.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"llm.model: '{tmp_path}' has no weights" in proc.stderr


def test_weights_that_cannot_load_exit_3_and_leave_no_process(
    vllm_python: str, vllm_model: str, tmp_path: Path
) -> None:
    """The failure happens inside vLLM's engine process, after it started: the server must
    still exit 3 with vLLM's reason and stop every process vLLM started."""
    broken = tmp_path / "broken-model"
    shutil.copytree(vllm_model, broken)
    # A well-formed safetensors file whose one tensor has the wrong shape: vLLM's own checks
    # pass, and its worker process fails as it loads the weights.
    header = json.dumps(
        {"model.embed_tokens.weight": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    (broken / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    server = ServerProcess("engine", engine_env(str(broken)), tmp_path, python=vllm_python)
    proc = subprocess.Popen(
        [vllm_python, "-m", "tutorsrv", "run", "--role", "engine", "--port", str(server.port)],
        env=server.env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # vLLM logs to stdout
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        kill_group(proc.pid)  # whatever is left, so a failure here leaves nothing running
    assert proc.returncode == 3, output[-3000:]
    assert "WorkerProc failed to start" in output  # it did get that far
    assert f"tutorsrv: cannot start: vLLM could not load '{broken}'" in output
    assert wait_group_gone(proc.pid) == []
