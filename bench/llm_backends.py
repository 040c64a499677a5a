"""One model, three ways to serve it: llama.cpp in the engine, vLLM in the engine, vLLM's server.

What it measures
----------------
The same model (SmolLM2-135M-Instruct: the packaged GGUF for llama.cpp, the Hugging Face folder
made from it for vLLM, ``make test-vllm`` builds it) behind ``tutorsrv run --role engine``:

- ``llamacpp``: the default backend, the GGUF in its supervised child process.
- ``vllm``: vLLM in the engine's process (``.venv-vllm``), ``vllm_enforce_eager`` (no
  torch.compile; ``--vllm-compile`` measures with it).
- ``openai``: the engine (this venv) streaming from vLLM's OpenAI-compatible server.

Two workloads over the engine's WebSocket, greedy, ``max_tokens`` 64, no speech:

1. one student, the 10-turn fractions conversation of ``bench/llm_conversation.py``: TTFT
   (turn to first token) p50/p95 and decode tok/s p50 over the turns;
2. 8 students at once, 3 turns each, every round's 8 turns sent together: TTFT p50/p95 over
   the 24 turns and the tokens of all replies divided by the wall time (what batching buys).

Peak RSS counts the engine, its children and (openai) vLLM's server and its children.

    .venv/bin/python bench/llm_backends.py                      # all three (about 6 minutes)
    .venv/bin/python bench/llm_backends.py --backends vllm,openai
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from common import (
    ROOT,
    Server,
    cpu_model,
    fmt,
    free_port,
    launch_engine,
    percentile,
    stop_server,
    wait_healthy,
)
from llm_conversation import DECIMALS, FRACTIONS, TUTOR, Student, rss_mib

from tutorsrv.engine.protocol import SUBPROTOCOL

API_KEY = "bench-llm-backends-key-0123456789"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_MODEL = ROOT / ".venv-vllm" / "models" / "smollm2-135m"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
MAX_MODEL_LEN = 4096
KV_CACHE_BYTES = 1 << 30


def engine_settings(backend: str, args: argparse.Namespace, server_url: str = "") -> dict:
    common = {
        "TUTORSRV_LLM_TEMPERATURE": "0",
        "TUTORSRV_LLM_MAX_TOKENS": str(args.max_tokens),
        "TUTORSRV_ASR_ENABLED": "false",
        "TUTORSRV_TTS_ENABLED": "false",
        "TUTORSRV_ENGINE_MAX_SESSIONS_PER_STUDENT": "0",
        "TUTORSRV_ENGINE_CONNECT_DEADLINE_SECONDS": "0",
        "TUTORSRV_LLM_WARMUP_TIMEOUT_SECONDS": "600",
        **OFFLINE,
    }
    if backend == "llamacpp":
        return {**common, "TUTORSRV_LLM_MODEL": "smollm2-135m", "TUTORSRV_LLM_SEED": "1234"}
    if backend == "vllm":
        return {
            **common,
            "TUTORSRV_LLM_BACKEND": "vllm",
            "TUTORSRV_LLM_MODEL": str(VLLM_MODEL),
            "TUTORSRV_LLM_VLLM_ENFORCE_EAGER": "false" if args.vllm_compile else "true",
            "TUTORSRV_LLM_VLLM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "TUTORSRV_LLM_VLLM_KV_CACHE_BYTES": str(KV_CACHE_BYTES),
        }
    return {
        **common,
        "TUTORSRV_LLM_BACKEND": "openai",
        "TUTORSRV_LLM_BASE_URL": server_url,
        "TUTORSRV_LLM_MODEL": "smollm2",
    }


def start_vllm_server(workdir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(VLLM_MODEL),
        "--served-model-name",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--kv-cache-memory-bytes",
        str(KV_CACHE_BYTES),
        "--enable-prompt-tokens-details",
    ]
    if not args.vllm_compile:
        command.append("--enforce-eager")
    with open(workdir / "vllm-server.log", "wb") as log:
        proc = subprocess.Popen(
            command, env={**os.environ, **OFFLINE}, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM's server exited {proc.returncode}: see {log.name}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("vLLM's server did not start")
        time.sleep(0.5)


def tree_rss_mib(*roots: psutil.Process) -> float:
    return sum(rss_mib(root) for root in roots)


async def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as tmp:
        workdir = Path(tmp)
        vllm_server: subprocess.Popen | None = None
        server: Server | None = None
        started = time.monotonic()
        try:
            url = ""
            if backend == "openai":
                vllm_server, url = start_vllm_server(workdir, args)
            python = str(VLLM_PYTHON) if backend == "vllm" else sys.executable
            server = launch_engine(
                workdir, free_port(), API_KEY, engine_settings(backend, args, url), python=python
            )
            roots = [server.ps] + ([psutil.Process(vllm_server.pid)] if vllm_server else [])
            async with aiohttp.ClientSession() as http:
                await wait_healthy(http, server, 600)
                ready_s = time.monotonic() - started
                peak = [tree_rss_mib(*roots)]
                single = await conversation(http, server, 1, 10, roots, peak)
                batch = await conversation(http, server, args.concurrent, 3, roots, peak)
            return {"ready_s": ready_s, "single": single, "batch": batch, "rss_mib": peak[0]}
        finally:
            stop_server(server)
            if vllm_server is not None:
                vllm_server.terminate()
                vllm_server.wait(timeout=60)


async def conversation(
    http: aiohttp.ClientSession,
    server: Server,
    students: int,
    turns: int,
    roots: list[psutil.Process],
    peak: list[float],
) -> dict[str, Any]:
    """``students`` conversations of ``turns`` turns; each round's turns sent together."""
    sockets = []
    for n in range(students):
        async with http.post(
            server.base + "/v1/sessions",
            json={"tutor_id": "ada", "student_id": f"s{n}", "tutor": TUTOR},
            headers=server.headers,
        ) as resp:
            created = await resp.json()
        student = Student(await http.ws_connect(created["engine_url"], protocols=[SUBPROTOCOL]))
        await student.until("response_done")  # the greeting (fixed text, no model)
        sockets.append(student)
    metrics: list[dict[str, Any]] = []
    started = time.monotonic()

    async def ask(n: int, student: Student, index: int) -> dict[str, Any]:
        question = (FRACTIONS if n % 2 == 0 else DECIMALS)[index]
        await student.ws.send_json({"type": "text", "content": question})
        return (await student.until("response_done"))["metrics"]

    for index in range(turns):
        metrics += await asyncio.gather(*(ask(n, s, index) for n, s in enumerate(sockets)))
        peak[0] = max(peak[0], tree_rss_mib(*roots))
    seconds = time.monotonic() - started
    for student in sockets:
        await student.close()
    ttft = [m["ttft_ms"] for m in metrics if m.get("ttft_ms") is not None]
    return {
        "ttft_p50": percentile(ttft, 50),
        "ttft_p95": percentile(ttft, 95),
        "tok_s_p50": percentile([m["tokens_per_s"] for m in metrics if m["tokens_per_s"]], 50),
        "tokens": sum(m["tokens"] for m in metrics),
        "cached_p50": percentile([m["cached_prompt_tokens"] for m in metrics], 50),
        "seconds": seconds,
    }


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"Load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    compile_note = "torch.compile" if args.vllm_compile else "enforce_eager"
    print(
        f"Model: SmolLM2-135M-Instruct (llama.cpp: GGUF Q4_1; vLLM: bf16, {compile_note}); "
        f"greedy, max_tokens {args.max_tokens}\n"
    )
    print(
        "| backend | ready in | 1 student x 10 turns: TTFT p50 / p95 | tok/s p50 "
        f"| {args.concurrent} students x 3 turns: TTFT p50 / p95 | total tok/s | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend, r in results.items():
        one, many = r["single"], r["batch"]
        print(
            f"| {backend} | {r['ready_s']:.0f} s "
            f"| {fmt(one['ttft_p50'], 0)} / {fmt(one['ttft_p95'], 0)} ms "
            f"| {fmt(one['tok_s_p50'])} "
            f"| {fmt(many['ttft_p50'], 0)} / {fmt(many['ttft_p95'], 0)} ms "
            f"| {many['tokens'] / many['seconds']:.1f} "
            f"| {r['rss_mib'] / 1024:.2f} GiB |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="llamacpp,vllm,openai")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--vllm-compile", action="store_true", help="vLLM with torch.compile")
    args = parser.parse_args()
    if {"vllm", "openai"} & set(args.backends.split(",")) and not VLLM_MODEL.is_dir():
        print("no .venv-vllm: run `make test-vllm` first", file=sys.stderr)
        return 2
    results = {}
    for backend in args.backends.split(","):
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        try:
            results[backend] = asyncio.run(run_backend(backend, args))
        except Exception as e:  # report what was measured before the failure
            print(f"{backend} failed: {type(e).__name__}: {e}", file=sys.stderr)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
