"""Is the tutor right? Accuracy of each candidate model on school questions, and its speed.

What it measures
----------------
Each candidate (a packaged model's name, or a GGUF path) runs in its own child process, so
its memory is its own, through ``LlamaCppBackend`` as the engine runs it: the product's
default system prompt (``llm.default_system_prompt``), the product's sampling settings
(``llm.temperature``, ``llm.top_p``, ``llm.max_tokens``) with a fixed seed, llama.cpp built by
``make install``.

1. Accuracy: every question of ``bench/tutor_questions.py`` (English and Chinese; arithmetic,
   algebra, science, language, and follow-ups that need the history). A question's earlier
   turns are asked first and the model's own replies kept, as in a real session; only the
   last reply is graded, automatically (numbers: the expected value must appear; words: each
   required group must appear; see that module for the rules and their leniency).
2. Voice latency: a 10-turn conversation from a cold KV cache. TTFT (prompt evaluation +
   first token) at turn 1 and turn 10, decode tok/s (median over the turns).
3. Memory: the child's peak RSS (model + KV cache + Python).

Run it (the three packaged models: about 25 minutes on 2 cores)::

    .venv/bin/python bench/tutor_quality.py
    .venv/bin/python bench/tutor_quality.py --models qwen2.5-0.5b --limit 20 --show-wrong

``--json FILE`` writes every reply and verdict, for reading what went wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import cpu_model, fmt
from tutor_questions import QUESTIONS, Question, grade

from tutorsrv.config import LLMConfig
from tutorsrv.engine.llm.base import ChatMessage, GenerationStats
from tutorsrv.engine.llm.llamacpp import LlamaCppBackend
from tutorsrv.engine.llm.packaged import CATALOGUE, resolve

CONVERSATION = [
    "Hi! Can you help me with fractions?",
    "What is one half plus one quarter?",
    "Why do we need a common denominator?",
    "What is 2/3 of 12?",
    "How do I turn 3/4 into a decimal?",
    "And into a percentage?",
    "Which is bigger, 5/8 or 3/5?",
    "How do I simplify 18/24?",
    "What is 1/3 times 3/7?",
    "Thanks! Can you give me one practice question?",
]


def run_one(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """In the child: load one model, answer everything, return the results."""
    config = LLMConfig()
    backend = LlamaCppBackend(
        str(resolve(model)),
        n_ctx=config.n_ctx,
        n_threads=args.threads,
        max_tokens=config.max_tokens,
        temperature=config.temperature if args.temperature is None else args.temperature,
        top_p=config.top_p,
        seed=args.seed,
    )
    started = time.monotonic()
    backend.load_blocking()
    load_s = time.monotonic() - started
    system: ChatMessage = {"role": "system", "content": config.default_system_prompt}

    def ask(messages: list[ChatMessage]) -> tuple[str, float, float, int]:
        """(reply, ttft s, decode tok/s, tokens)"""
        pieces: list[str] = []
        times: list[float] = []
        stats = GenerationStats()
        begun = time.monotonic()

        def put(text: str) -> None:
            pieces.append(text)
            times.append(time.monotonic())

        backend.generate_blocking(messages, stats, threading.Event(), put)
        ttft = times[0] - begun if times else float("nan")
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 2 else float("nan")
        return "".join(pieces).strip(), ttft, rate, len(times)

    questions = [q for q in QUESTIONS if args.language in ("all", q.language)]
    if args.limit:
        questions = questions[: args.limit]
    answers = []
    for question in questions:
        messages: list[ChatMessage] = [system]
        reply = ""
        for turn in question.turns:
            messages.append({"role": "user", "content": turn})
            reply, _, _, _ = ask(messages)
            messages.append({"role": "assistant", "content": reply})
        answers.append({"id": question.id, "reply": reply, "right": grade(question, reply)})
        if args.progress:
            mark = "ok " if answers[-1]["right"] else "BAD"
            print(f"  {model} {mark} {question.id}", file=sys.stderr, flush=True)

    # Voice latency from a cold cache: nothing of an earlier prompt may be reused.
    backend._llama.reset()
    backend._llama._ctx.kv_cache_clear()
    messages = [system]
    ttfts: list[float] = []
    rates: list[float] = []
    for turn in CONVERSATION:
        messages.append({"role": "user", "content": turn})
        reply, ttft, rate, _ = ask(messages)
        messages.append({"role": "assistant", "content": reply})
        ttfts.append(ttft)
        if rate == rate:  # not NaN
            rates.append(rate)
    return {
        "model": model,
        "load_s": load_s,
        "answers": answers,
        "ttft_turn1_s": ttfts[0],
        "ttft_turn10_s": ttfts[-1],
        "decode_tok_s": statistics.median(rates) if rates else None,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def summarise(results: list[dict[str, Any]], questions: dict[str, Question]) -> None:
    print(
        f"\nMachine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"Questions: {len(questions)} ({_counts(questions)})\n")
    header = (
        "| model | right (all) | English | Chinese | arith | algebra | science | language "
        "| follow-up | TTFT turn 1 | TTFT turn 10 | decode tok/s | peak RSS |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for result in results:
        by: dict[str, list[bool]] = defaultdict(list)
        for answer in result["answers"]:
            question = questions[answer["id"]]
            for key in ("all", question.language, question.category):
                by[key].append(answer["right"])

        def share(key: str, by: dict[str, list[bool]] = by) -> str:
            marks = by.get(key, [])
            if not marks:
                return "n/a"
            return f"{sum(marks)}/{len(marks)} ({100 * sum(marks) / len(marks):.0f} %)"

        print(
            f"| {result['model']} | {share('all')} | {share('en')} | {share('zh')} "
            f"| {share('arithmetic')} | {share('algebra')} | {share('science')} "
            f"| {share('language')} | {share('followup')} "
            f"| {fmt(result['ttft_turn1_s'], 2)} s | {fmt(result['ttft_turn10_s'], 2)} s "
            f"| {fmt(result['decode_tok_s'])} | {result['rss_mib']:.0f} MiB |"
        )


def _counts(questions: dict[str, Question]) -> str:
    count: dict[str, int] = defaultdict(int)
    for q in questions.values():
        count[q.language] += 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(count.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(CATALOGUE), help="comma-separated")
    parser.add_argument("--language", choices=("all", "en", "zh"), default="all")
    parser.add_argument("--limit", type=int, default=0, help="first N questions only")
    parser.add_argument("--temperature", type=float, help="default: llm.temperature")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--json", help="write every reply and verdict here")
    parser.add_argument("--show-wrong", action="store_true", help="print the wrong replies")
    parser.add_argument("--progress", action="store_true", help="a line per question")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # in the child: this model only
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        Path(args.out).write_text(json.dumps(run_one(args.one, args)), encoding="utf-8")
        return 0

    results = []
    for model in args.models.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            child = [sys.executable, __file__, "--one", model, "--out", out.name]
            for flag in ("language", "limit", "temperature", "seed", "threads"):
                value = getattr(args, flag)
                if value is not None:
                    child += [f"--{flag}", str(value)]
            if args.progress:
                child.append("--progress")
            started = time.monotonic()
            subprocess.run(child, check=True)
            result = json.loads(Path(out.name).read_text(encoding="utf-8"))
        result["wall_s"] = time.monotonic() - started
        results.append(result)
        right = sum(a["right"] for a in result["answers"])
        print(
            f"{model}: {right}/{len(result['answers'])} right, {result['wall_s']:.0f} s",
            file=sys.stderr,
        )
    questions = {q.id: q for q in QUESTIONS}
    summarise(results, {a["id"]: questions[a["id"]] for a in results[0]["answers"]})
    if args.show_wrong:
        for result in results:
            for answer in result["answers"]:
                if not answer["right"]:
                    print(f"\n[{result['model']}] {answer['id']}: {answer['reply'][:300]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, ensure_ascii=False, indent=1), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
