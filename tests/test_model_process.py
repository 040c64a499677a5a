"""The embedded model in its supervised child process (llm.out_of_process, the default):
a crash of the model ends one reply, never the engine, and the conversation goes on."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest

from tutorsrv.appkeys import LLM, REGISTRY
from tutorsrv.engine.llm.base import GenerationStats, LLMLoadError, LLMUnavailable
from tutorsrv.engine.llm.model_process import LlamaCppProcessBackend, describe_exit
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import (
    AUTH,
    MakeClient,
    eventually,
    new_session,
    receive_json,
    receive_until,
    ws_path,
)
from .processes import ServerProcess

pytestmark = pytest.mark.real_model

REAL = {"backend": "llamacpp", "seed": 7, "max_tokens": 200, "temperature": 0.0}
LONG = "Count slowly from one to fifty, one number per line."


async def test_a_crash_of_the_model_ends_one_reply_and_the_session_goes_on(
    make_client: MakeClient,
) -> None:
    client = await make_client(llm=REAL)
    llm = client.server.app[LLM]
    assert isinstance(llm, LlamaCppProcessBackend)
    first_pid = llm.pid
    assert first_pid is not None and first_pid != os.getpid()
    session = await new_session(client)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await ws.send_json({"type": "text", "content": "What is two plus two?"})
    await receive_until(ws, "response_done", wait=60)

    await ws.send_json({"type": "text", "content": LONG})
    assert (await receive_json(ws, wait=60))["type"] == "text_stream"
    os.kill(first_pid, signal.SIGSEGV)  # what the AMX bug did, inside llama.cpp
    messages = await receive_until(ws, "interrupted", wait=15)
    error = next(m for m in messages if m["type"] == "error")
    assert error["code"] == "generation_failed" and not error["fatal"]
    assert "SIGSEGV" in error["content"] and "restarting" in error["content"]
    assert messages[-1]["reason"] == "error"

    # The engine said so in /health while the new child loaded, and is whole again after.
    await eventually(lambda: llm.ready, "the model back", 30)
    health = await (await client.get("/health")).json()
    assert health["status"] == "healthy" and health["llm"]["restarts"] == 1
    assert "SIGSEGV" in health["llm"]["last_failure"]
    metrics = await (await client.get("/metrics")).text()
    assert 'tutorsrv_llm_restarts_total{model="smollm2-135m"} 1.0' in metrics
    assert 'tutorsrv_llm_ready{model="smollm2-135m"} 1.0' in metrics
    assert llm.pid not in (None, first_pid) and not psutil.pid_exists(first_pid)

    # Same socket, same session: the next question is answered by the new child, and the
    # history (first exchange + the cut-off reply) is still there for it.
    await ws.send_json({"type": "text", "content": "And what is three plus three?"})
    done = await receive_until(ws, "response_done", wait=60)
    assert next(m for m in done if m["type"] == "text")["content"]
    history = client.server.app[REGISTRY].get(session["session_id"]).history
    assert [m.role for m in history].count("user") == 3
    await ws.close()


async def test_a_dead_child_during_a_turn_is_reported_while_it_restarts() -> None:
    backend = LlamaCppProcessBackend(
        {"model": "smollm2-135m", "max_tokens": 200, "temperature": 0.0}, model="m"
    )
    await backend.load()
    try:
        stats = GenerationStats()
        with pytest.raises(LLMUnavailable, match="SIGKILL"):
            async for _ in backend.stream([{"role": "user", "content": LONG}], stats):
                os.kill(backend.pid or 0, signal.SIGKILL)
        # Until the new child has loaded and passed its probe, a turn is refused at once.
        if not backend.ready:
            with pytest.raises(LLMUnavailable, match="restarting"):
                async for _ in backend.stream([{"role": "user", "content": "Hi"}], stats):
                    pass
        await eventually(lambda: backend.ready, "the model back", 30)
        hello = [{"role": "user", "content": "Hi"}]
        text = "".join([p async for p in backend.stream(hello, stats)])
        assert text.strip()
    finally:
        pid = backend.pid
        await backend.close()
    assert pid is not None and not psutil.pid_exists(pid)


async def test_a_corrupt_model_file_fails_the_load_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    backend = LlamaCppProcessBackend({"model": str(bad)}, model="bad.gguf")
    with pytest.raises(LLMLoadError, match="could not load GGUF model"):
        await backend.load()
    assert backend.pid is None


def test_exit_descriptions_name_the_signal_and_the_cause() -> None:
    assert "SIGSEGV" in describe_exit(-signal.SIGSEGV)
    assert "another CPU" in describe_exit(-signal.SIGILL)
    assert describe_exit(3) == "exited with status 3"


async def test_the_model_child_never_outlives_the_engine(tmp_path: Path) -> None:
    engine = ServerProcess(
        "engine", {"TUTORSRV_ENGINE_API_KEY": AUTH["Authorization"][7:]}, tmp_path
    )
    await engine.start()
    try:
        assert engine.proc is not None
        children = psutil.Process(engine.proc.pid).children()
        workers = [c for c in children if "llamacpp_worker" in " ".join(c.cmdline())]
        assert len(workers) == 1
        engine.kill()  # SIGKILL: no clean-up code runs in the engine
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, "the model process outlived its engine"
    finally:
        engine.kill()


async def test_ctrl_c_to_the_process_group_lets_the_reply_in_progress_finish(
    tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C (and systemd's stop) signal the whole process group, the model's
    child included. The child leaves the shutdown to the engine, so the reply in progress
    still gets its grace and completes; nothing is restarted; both processes end."""
    engine = ServerProcess(
        "engine",
        {
            "TUTORSRV_ENGINE_API_KEY": AUTH["Authorization"][7:],
            "TUTORSRV_LLM_MAX_TOKENS": "120",
            "TUTORSRV_LLM_TEMPERATURE": "0",
            "TUTORSRV_SERVER_SHUTDOWN_GRACE_SECONDS": "30",
        },
        tmp_path,
    )
    engine.start_new_session = True
    await engine.start()
    try:
        assert engine.proc is not None
        (worker,) = [
            c
            for c in psutil.Process(engine.proc.pid).children()
            if "llamacpp_worker" in " ".join(c.cmdline())
        ]
        async with aiohttp.ClientSession() as http:
            body = {"tutor_id": "t1", "student_id": "s1"}
            async with http.post(engine.base + "/v1/sessions", json=body, headers=AUTH) as resp:
                session = await resp.json()
            async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                assert (await receive_json(ws))["type"] == "session"
                await ws.send_json({"type": "text", "content": LONG})
                assert (await receive_json(ws, wait=60))["type"] == "text_stream"
                os.killpg(engine.proc.pid, signal.SIGINT)
                seen = []
                while True:
                    msg = await ws.receive(timeout=30)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    seen.append(json.loads(msg.data))
        kinds = [m["type"] for m in seen]
        assert "response_done" in kinds, kinds
        assert not any(m.get("code") == "generation_failed" for m in seen)
        assert engine.proc.wait(timeout=30) == 0
        psutil.wait_procs([worker], timeout=10)
        assert not worker.is_running()
        assert "starting a new one" not in engine.output()
    finally:
        engine.kill()
