"""The embedded model's build and placement: what the portable build and the child process cost.

What it measures
----------------
For the llama.cpp build installed in the venv that runs this script (compare builds by running
it from two venvs), with the packaged SmolLM2 (``--model`` for another):

- ``load``: from creating the backend to a loaded model (for ``process``: spawning the child,
  importing llama.cpp there and loading);
- ``cold TTFT``: a new conversation whose prompt (~220 tokens: a tutor's system prompt and a
  question) shares nothing with the KV cache, so it is evaluated whole;
- ``warm TTFT``: the next turn of the same conversation (only the new question is evaluated);
- ``decode``: tokens per second after the first token;
- RSS of this process and, for ``process``, of the child (the model's memory lives there).

Placements: ``thread`` (``llm.out_of_process = false``: a worker thread of this process) and
``process`` (the default: a supervised child, tokens over a pipe). ``--no-repack`` loads the
model without llama.cpp's repacked weight buffers (``use_extra_bufts = false``, the runtime
alternative to a build without AMX) to show what the repack is worth with this model.

Greedy decoding, fixed seed, ``--rounds`` conversations per placement; each round starts with a
prompt no earlier round used, so every cold TTFT is really cold.

    .venv/bin/python bench/llm_build.py
    .venv/bin/python bench/llm_build.py --model /path/to/model.gguf --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from typing import Any

import psutil
from common import cpu_model, fmt, percentile

from tutorsrv.config import LLMConfig
from tutorsrv.engine.llm import create_backend
from tutorsrv.engine.llm.base import ChatMessage, GenerationStats
from tutorsrv.engine.llm.llamacpp import load_without_repack

SYSTEM = (
    "You are Ada, a patient mathematics tutor for students aged 11 to 16. Explain one step at "
    "a time, in short sentences, and check understanding with a question at the end. Never "
    "give the whole answer to homework at once; guide the student to it. When the student is "
    "wrong, say what is right in their attempt before you correct it. Use plain words, avoid "
    "jargon, and give a small worked example when a rule is new. If a question is not about "
    "mathematics, answer briefly and bring the conversation back to the lesson. Keep every "
    "reply under eighty words. The current topic is fractions, decimals and percentages, and "
    "the class has just learnt how to add fractions with different denominators."
)
QUESTIONS = [
    "How do I add one third and one quarter?",
    "What is three fifths as a percentage?",
    "Why do we need a common denominator?",
    "Is 0.75 the same as three quarters?",
    "How do I turn 40 percent into a fraction?",
    "What is two sevenths plus three sevenths?",
    "Can you explain equivalent fractions?",
    "How do I compare five eighths and two thirds?",
    "What is half of three quarters?",
    "How do I write 1.2 as a fraction?",
    "What is one tenth as a decimal?",
    "How do I simplify twelve sixteenths?",
]
FOLLOW_UP = "Can you give me one more example?"


async def timed_turn(llm: Any, messages: list[ChatMessage]) -> tuple[float, float, int, str]:
    stats = GenerationStats()
    started = time.monotonic()
    first = last = 0.0
    parts: list[str] = []
    async for piece in llm.stream(messages, stats):
        last = time.monotonic()
        if not parts:
            first = last
        parts.append(piece)
    decode = (len(parts) - 1) / (last - first) if len(parts) > 1 and last > first else 0.0
    return (first - started) * 1000, decode, len(parts), "".join(parts)


def rss_mib(llm: Any) -> tuple[float, float]:
    own = psutil.Process().memory_info().rss / 2**20
    pid = getattr(llm, "pid", None)
    child = psutil.Process(pid).memory_info().rss / 2**20 if pid else 0.0
    return own, child


async def run(placement: str, args: argparse.Namespace, offset: int) -> dict[str, Any]:
    config = LLMConfig(
        model=args.model,
        out_of_process=placement == "process",
        max_tokens=args.max_tokens,
        temperature=0.0,
        seed=1234,
        n_threads=args.threads,
    )
    started = time.monotonic()
    llm = create_backend(config)
    await llm.load()
    load_s = time.monotonic() - started
    cold, warm, decode = [], [], []
    try:
        for i in range(args.rounds):
            question = QUESTIONS[(offset + i) % len(QUESTIONS)]
            # A new first line each round: nothing of this prompt is in the KV cache.
            system = f"Session {offset + i}. {SYSTEM}"
            messages: list[ChatMessage] = [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
            ttft, speed, _, reply = await timed_turn(llm, messages)
            cold.append(ttft)
            decode.append(speed)
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": FOLLOW_UP},
            ]
            ttft, speed, _, _ = await timed_turn(llm, messages)
            warm.append(ttft)
            decode.append(speed)
        own, child = rss_mib(llm)
    finally:
        await llm.close()
    return {
        "placement": placement,
        "load_s": load_s,
        "cold": cold,
        "warm": warm,
        "decode": decode,
        "rss_own": own,
        "rss_child": child,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="packaged name or GGUF path")
    p.add_argument("--placements", default="thread,process")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="0: one per core")
    p.add_argument("--no-repack", action="store_true", help="use_extra_bufts = false")
    args = p.parse_args()
    if args.no_repack:
        if "process" in args.placements:
            raise SystemExit("--no-repack applies in this process only: --placements thread")
        import llama_cpp.llama_cpp as native

        load_without_repack(native)  # what tutorsrv does for a build with AMX kernels

    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode().strip()
    print(f"# machine: {cpu_model()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"# load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# llama.cpp build: {info}")
    print(f"# model: {args.model}")
    print(f"# repack: {'off (use_extra_bufts = false)' if args.no_repack else 'on'}")
    print()
    header = (
        "| placement | load s | cold TTFT p50 ms | p95 | warm TTFT p50 ms | p95 "
        "| decode tok/s p50 | RSS engine MiB | RSS child MiB |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, placement in enumerate(args.placements.split(",")):
        r = asyncio.run(run(placement, args, offset=n * args.rounds))
        print(
            f"| {placement} | {r['load_s']:.2f} | {fmt(percentile(r['cold'], 50))} "
            f"| {fmt(percentile(r['cold'], 95))} | {fmt(percentile(r['warm'], 50))} "
            f"| {fmt(percentile(r['warm'], 95))} | {fmt(percentile(r['decode'], 50))} "
            f"| {r['rss_own']:.0f} | {r['rss_child']:.0f} |",
            flush=True,
        )
    print(f"\n# load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
