"""The vLLM adapter against a small fake of vLLM's V1 AsyncLLM interface (no GPU here)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest

from tutorsrv.engine.llm.base import GenerationStats, LLMLoadError
from tutorsrv.engine.llm.vllm import VLLMBackend


class RequestOutputKind(Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float
    top_p: float
    output_kind: RequestOutputKind


@dataclass
class AsyncEngineArgs:
    model: str
    dtype: str
    gpu_memory_utilization: float
    tensor_parallel_size: int
    enable_prefix_caching: bool
    max_model_len: int | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int] | None
    outputs: list[Completion]
    finished: bool
    num_cached_tokens: int | None = None


class Tokenizer:
    def apply_chat_template(
        self, messages: list[dict], tokenize: bool, add_generation_prompt: bool
    ):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@dataclass
class FakeAsyncLLM:
    """Streams the words of ``reply`` as DELTA outputs, one per event-loop turn."""

    args: AsyncEngineArgs
    reply: str = "Seven times eight is fifty six."
    prompts: list[str] = field(default_factory=list)
    params: list[SamplingParams] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    shut_down: bool = False

    @classmethod
    def from_engine_args(cls, args: AsyncEngineArgs) -> FakeAsyncLLM:
        if args.model == "missing/model":
            raise OSError("no such model")
        FakeAsyncLLM.last = cls(args)  # type: ignore[attr-defined]
        return FakeAsyncLLM.last  # type: ignore[attr-defined]

    async def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    async def generate(self, prompt: str, sampling_params: SamplingParams, request_id: str):
        self.prompts.append(prompt)
        self.params.append(sampling_params)
        words = self.reply.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(0)
            last = i == len(words) - 1
            yield RequestOutput(
                prompt_token_ids=[1] * 12 if i == 0 else None,
                outputs=[Completion((" " if i else "") + word, [i], "stop" if last else None)],
                finished=last,
                num_cached_tokens=8 if i == 0 else None,
            )

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


MODULES: dict[str, Any] = {
    "AsyncLLM": FakeAsyncLLM,
    "AsyncEngineArgs": AsyncEngineArgs,
    "SamplingParams": SamplingParams,
    "RequestOutputKind": RequestOutputKind,
}
MESSAGES = [
    {"role": "system", "content": "You are a tutor."},
    {"role": "user", "content": "What is 7 x 8?"},
]


async def loaded(**kw: Any) -> tuple[VLLMBackend, FakeAsyncLLM]:
    backend = VLLMBackend("org/model", vllm_modules=MODULES, max_model_len=4096, **kw)
    await backend.load()
    return backend, FakeAsyncLLM.last  # type: ignore[attr-defined]


async def test_engine_arguments_and_chat_template() -> None:
    backend, engine = await loaded(tensor_parallel_size=2, gpu_memory_utilization=0.5)
    assert engine.args == AsyncEngineArgs(
        model="org/model",
        dtype="auto",
        gpu_memory_utilization=0.5,
        tensor_parallel_size=2,
        enable_prefix_caching=True,
        max_model_len=4096,
    )
    stats = GenerationStats()
    text = "".join([p async for p in backend.stream(MESSAGES, stats)])
    assert text == "Seven times eight is fifty six."
    assert engine.prompts == ["<system>You are a tutor.<user>What is 7 x 8?<assistant>"]
    assert engine.params[0].output_kind is RequestOutputKind.DELTA
    assert (stats.prompt_tokens, stats.cached_prompt_tokens) == (12, 8)
    assert stats.completion_tokens == 6 and stats.finish_reason == "stop"
    assert engine.aborted == []  # a finished request needs no abort
    await backend.close()
    assert engine.shut_down


async def test_the_prompt_prefix_is_stable_across_turns() -> None:
    backend, engine = await loaded()
    first = [*MESSAGES]
    second = [
        *MESSAGES,
        {"role": "assistant", "content": "56"},
        {"role": "user", "content": "And 8 x 8?"},
    ]
    for messages in (first, second):
        async for _ in backend.stream(messages, GenerationStats()):
            pass
    # Prefix caching pays off only if the second prompt starts with the first's history.
    assert engine.prompts[1].startswith(engine.prompts[0].removesuffix("<assistant>"))


async def test_stopping_early_aborts_the_request() -> None:
    backend, engine = await loaded()
    stats = GenerationStats()
    async with aclosing(backend.stream(MESSAGES, stats)) as stream:
        async for _ in stream:
            break
    assert len(engine.aborted) == 1 and engine.aborted[0].startswith("tutorsrv-")
    assert backend.active == 0


async def test_cancellation_aborts_the_request() -> None:
    backend, engine = await loaded()
    engine.reply = " ".join(["word"] * 10_000)

    async def consume() -> None:
        async for _ in backend.stream(MESSAGES, GenerationStats()):
            pass

    task = asyncio.create_task(consume())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(engine.aborted) == 1


async def test_a_model_that_cannot_load_stops_start_up() -> None:
    backend = VLLMBackend("missing/model", vllm_modules=MODULES)
    with pytest.raises(LLMLoadError, match="could not load 'missing/model'"):
        await backend.load()


async def test_without_vllm_installed_the_error_says_how_to_get_it() -> None:
    backend = VLLMBackend("org/model")
    with pytest.raises(LLMLoadError, match=r"tutorsrv\[vllm\]"):
        await backend.load()
