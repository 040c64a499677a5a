"""The start-up check that the model can really generate, not just load.

A model can load and still be unable to answer: a build of llama.cpp that crashes in its
first matrix multiplication on this CPU, a model server that lists the model but fails every
request, weights that load but are broken. One short generation before the port serves turns
each of those into a failed start (exit 3) that names the model, instead of a crash or an
error at a student's first question.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from .base import ChatMessage, GenerationStats, LLMBackend, LLMLoadError

PROMPT: list[ChatMessage] = [
    {"role": "system", "content": "You are a friendly tutor."},
    {"role": "user", "content": "Say hello."},
]


async def warm_up(llm: LLMBackend, limit_seconds: float) -> float:
    """Generate until the first piece of text; returns the seconds it took (time to first
    token, cold). Raises LLMLoadError naming the model and the likely cause."""
    what = f"the model {llm.model!r} (llm.backend = {llm.name!r})"
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit_seconds):
            stream = llm.stream(list(PROMPT), GenerationStats())
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for piece in stream:
                    if piece:
                        return time.monotonic() - started
    except TimeoutError:
        raise LLMLoadError(
            f"{what} loaded but gave no token within llm.warmup_timeout_seconds = {limit_seconds:g}"
        ) from None
    except LLMLoadError:
        raise
    except Exception as e:
        raise LLMLoadError(
            f"{what} loaded but its warm-up generation failed: {e or type(e).__name__}. "
            "A crash here on an Intel CPU with AMX, or after copying the venv from another "
            "machine, is the llama.cpp build (docs/deploy.md, 'CPUs and builds'); "
            "a corrupt model file gives it too"
        ) from None
    raise LLMLoadError(f"{what} loaded but its warm-up generation produced no text")
