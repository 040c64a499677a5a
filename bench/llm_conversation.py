"""Many students on one engine: time to first token per turn, with and without saved states.

What it measures
----------------
A real engine (``tutorsrv run --role engine``, the embedded llama.cpp model in its child
process, the default model unless ``--model``) and N students (default 10) who each hold a
10-turn conversation over the engine's WebSocket. Their turns interleave round-robin, as in a
class where everyone talks in turn: student 1's turn 1, student 2's turn 1, ..., student 1's
turn 2, ... One turn at a time, so each figure is the model's own speed, not queueing.

For every turn the engine's ``response_done`` metrics give: TTFT (response start to first
token: prompt evaluation is most of it), prompt tokens, cached prompt tokens (not evaluated
again), decode tok/s. Per turn index: TTFT p50/p95 over the students.

Modes (one fresh engine each):

- ``states``: the default. When the model passes from one conversation to another, the
  leaving one's KV cells are saved and the arriving one's restored (``llm.session_state_bytes``),
  and each new session's opening (system prompt + greeting) is read ahead while the model is
  idle.
- ``shared``: ``llm.session_state_bytes = 0``: one KV cache for everyone, as before; each turn
  re-reads its conversation's whole history after another student spoke (only the shared
  system prompt is reused).

Sampling is greedy (temperature 0, fixed seed) so both modes hold the same conversations.

Run it (default model, 10 x 10 turns, both modes: about 20 minutes on 2 cores)::

    .venv/bin/python bench/llm_conversation.py
    .venv/bin/python bench/llm_conversation.py --model smollm2-135m --students 4 --modes states
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from common import cpu_model, fmt, free_port, launch_engine, percentile, stop_server, wait_healthy

from tutorsrv.engine.llm.packaged import DEFAULT_MODEL
from tutorsrv.engine.protocol import SUBPROTOCOL

API_KEY = "bench-llm-conversation-key-0123456789"

FRACTIONS = [
    "Hi! I don't really understand what a fraction is. Can you explain?",
    "So in 3/4, what do the 3 and the 4 mean?",
    "How do I know if 2/3 is bigger than 3/5?",
    "Why is 2/4 the same as 1/2?",
    "How do I simplify 12/18?",
    "How do I add 1/3 and 1/4? They have different bottoms.",
    "What is 5/6 minus 1/4?",
    "How do I multiply 2/3 by 3/5?",
    "And how do I divide 3/4 by 1/2? Why do we flip the second one?",
    "Can you give me one word problem with fractions to practise?",
]
DECIMALS = [
    "Hello, can you help me with decimals?",
    "What does the 7 in 0.75 mean?",
    "How do I turn 0.4 into a fraction?",
    "Is 0.5 bigger than 0.45?",
    "How do I add 2.35 and 1.8?",
    "What is 10 percent of 250?",
    "How do I write 3/8 as a decimal?",
    "How do I round 3.14159 to two decimal places?",
    "What is 0.6 times 0.5?",
    "Can you give me a decimal question to try?",
]
TUTOR = {
    "name": "Ada",
    "greeting": "Hello! I'm Ada, your maths tutor. What would you like to practise today?",
}


async def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "TUTORSRV_LLM_MODEL": args.model,
        "TUTORSRV_LLM_TEMPERATURE": "0",
        "TUTORSRV_LLM_SEED": "1234",
        "TUTORSRV_LLM_MAX_TOKENS": str(args.max_tokens),
        "TUTORSRV_ASR_ENABLED": "false",
        "TUTORSRV_TTS_ENABLED": "false",
        "TUTORSRV_ENGINE_MAX_SESSIONS_PER_STUDENT": "0",
        "TUTORSRV_ENGINE_CONNECT_DEADLINE_SECONDS": "0",
    }
    if mode == "shared":
        settings["TUTORSRV_LLM_SESSION_STATE_BYTES"] = "0"
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        server = launch_engine(Path(tmp), free_port(), API_KEY, settings)
        try:
            async with aiohttp.ClientSession() as http:
                await wait_healthy(http, server, 600)
                return await converse(http, server, args)
        finally:
            stop_server(server)


class Student:
    """One socket, read all the time (as a browser does: it answers the server's pings while
    the student waits for the others' turns), its messages queued for the benchmark."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self.messages.put_nowait(json.loads(message.data))
            self.messages.put_nowait(RuntimeError(f"socket closed: {self.ws.close_code}"))
        except Exception as e:
            self.messages.put_nowait(e)

    async def until(self, kind: str) -> dict[str, Any]:
        while True:
            data = await asyncio.wait_for(self.messages.get(), 600)
            if isinstance(data, BaseException):
                raise data
            if data["type"] == "error":
                raise RuntimeError(f"engine error: {data}")
            if data["type"] == kind:
                return data

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self.reader, return_exceptions=True)


async def converse(http: aiohttp.ClientSession, server: Any, args: argparse.Namespace) -> dict:
    sockets = []
    for student in range(args.students):
        async with http.post(
            server.base + "/v1/sessions",
            json={"tutor_id": "ada", "student_id": f"s{student}", "tutor": TUTOR},
            headers=server.headers,
        ) as r:
            created = await r.json()
        one = Student(await http.ws_connect(created["engine_url"], protocols=[SUBPROTOCOL]))
        await one.until("response_done")  # the greeting (fixed text, no model)
        sockets.append(one)
    # The students read the greeting before they ask: the engine reads each opening then.
    await asyncio.sleep(args.think_s)
    turns: list[list[dict[str, Any]]] = [[] for _ in range(10)]
    started = time.monotonic()
    peak_rss = 0.0
    for index in range(10):
        for student, ws in enumerate(sockets):
            question = (FRACTIONS if student % 2 == 0 else DECIMALS)[index]
            if index == 0:
                question = f"I'm student number {student + 1}. {question}"
            await ws.ws.send_json({"type": "text", "content": question})
            done = await ws.until("response_done")
            turns[index].append(done["metrics"])
            peak_rss = max(peak_rss, rss_mib(server.ps))
    seconds = time.monotonic() - started
    for ws in sockets:
        await ws.close()
    return {"turns": turns, "seconds": seconds, "rss_mib": peak_rss}


def rss_mib(process: psutil.Process) -> float:
    """The engine and its children (the model process)."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"Load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"Model: {args.model}; {args.students} students x 10 turns, round-robin, one turn at a "
        f"time; max_tokens {args.max_tokens}, greedy\n"
    )
    for mode, result in results.items():
        print(
            f"mode {mode}: {result['seconds']:.0f} s for {args.students * 10} turns, "
            f"peak RSS (engine + model) {result['rss_mib']:.0f} MiB"
        )
        print(
            "| turn | TTFT p50 | TTFT p95 | prompt tokens (median) | cached (median) | tok/s p50 |"
        )
        print("|---|---|---|---|---|---|")
        for index, metrics in enumerate(result["turns"], start=1):
            ttft = [m["ttft_ms"] for m in metrics if m.get("ttft_ms") is not None]
            rate = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s")]
            prompt = sorted(m["prompt_tokens"] for m in metrics)
            cached = sorted(m["cached_prompt_tokens"] for m in metrics)
            p50, p95 = fmt(percentile(ttft, 50), 0), fmt(percentile(ttft, 95), 0)
            print(
                f"| {index} | {p50} ms | {p95} ms "
                f"| {prompt[len(prompt) // 2]} | {cached[len(cached) // 2]} "
                f"| {fmt(percentile(rate, 50))} |"
            )
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--students", type=int, default=10)
    parser.add_argument("--modes", default="states,shared")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--think-s", type=float, default=15.0, help="pause after the greetings, before turn 1"
    )
    args = parser.parse_args()
    results = {}
    for mode in args.modes.split(","):
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        try:
            results[mode] = asyncio.run(run_mode(mode, args))
        except Exception as e:  # report what was measured before the failure
            print(f"mode {mode} failed: {type(e).__name__}: {e}", file=sys.stderr)
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
