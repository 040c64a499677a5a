"""The vLLM adapter's own logic against a small fake of vLLM's AsyncLLM: engine arguments,
counting, clean-up on failure. The real vLLM is driven by tests/vllm/ (make test-vllm)."""

from __future__ import annotations

import asyncio
import sys
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pytest

from tutorsrv.engine.llm.base import GenerationStats, LLMLoadError, LLMUnavailable
from tutorsrv.engine.llm.vllm import CPU_DEFAULT_KV_CACHE_BYTES, VLLMBackend

from .conftest import eventually


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
    enforce_eager: bool
    enable_prefix_caching: bool
    max_model_len: int | None = None
    kv_cache_memory_bytes: int | None = None


@dataclass
class ChatParams:
    chat_template: str | None = None


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
    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return [0] * len(text.split())


class Renderer:
    """vLLM applies the model's chat template and tokenises (a word a token, here)."""

    def __init__(self) -> None:
        self.rendered: list[str] = []

    async def render_chat_async(self, conversations: list[list[dict]], params: ChatParams):
        assert isinstance(params, ChatParams)
        prompts = []
        for messages in conversations:
            text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
            self.rendered.append(text)
            prompts.append({"type": "token", "prompt_token_ids": [0] * len(text.split())})
        return conversations, prompts


@dataclass
class FakeAsyncLLM:
    """Streams the words of ``reply`` as DELTA outputs, one per event-loop turn, each after
    a token that adds no text (as a multi-byte character's first half does). Closing or
    cancelling the stream drops the request, as vLLM's ``generate`` does."""

    args: AsyncEngineArgs
    reply: str = "Seven times eight is fifty six."
    renderer: Renderer = field(default_factory=Renderer)
    params: list[SamplingParams] = field(default_factory=list)
    unfinished: set[str] = field(default_factory=set)
    shut_down: bool = False
    errored: bool = False  # vLLM's engine processes died
    die_after: int = -1  # outputs streamed before the engine dies

    @classmethod
    def from_engine_args(cls, args: AsyncEngineArgs) -> FakeAsyncLLM:
        if args.model == "missing/model":
            raise OSError("no such model\n(a long traceback's worth of detail)")
        FakeAsyncLLM.last = cls(args)  # type: ignore[attr-defined]
        return FakeAsyncLLM.last  # type: ignore[attr-defined]

    def get_tokenizer(self) -> Tokenizer:
        if self.args.model == "broken/tokenizer":
            raise ValueError("tokenizer.json is corrupt")
        return Tokenizer()

    def get_num_unfinished_requests(self) -> int:
        return len(self.unfinished)

    async def generate(self, prompt: dict, sampling_params: SamplingParams, request_id: str):
        assert prompt["type"] == "token"
        self.params.append(sampling_params)
        self.unfinished.add(request_id)
        words = self.reply.split(" ")
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(0)
                if i == self.die_after:
                    self.errored = True
                    raise RuntimeError("EngineDeadError")
                yield RequestOutput(None, [Completion("", [100 + i])], finished=False)
                last = i == len(words) - 1
                yield RequestOutput(
                    prompt_token_ids=prompt["prompt_token_ids"],
                    outputs=[Completion((" " if i else "") + word, [i], "stop" if last else None)],
                    finished=last,
                    num_cached_tokens=8 if i == 0 else None,
                )
        finally:
            self.unfinished.discard(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


def modules(*, cpu: bool = False) -> dict[str, Any]:
    return {
        "AsyncLLM": FakeAsyncLLM,
        "AsyncEngineArgs": AsyncEngineArgs,
        "SamplingParams": SamplingParams,
        "RequestOutputKind": RequestOutputKind,
        "ChatParams": ChatParams,
        "is_cpu": lambda: cpu,
    }


MESSAGES = [
    {"role": "system", "content": "You are a tutor."},
    {"role": "user", "content": "What is 7 x 8?"},
]


async def loaded(cpu: bool = False, **kw: Any) -> tuple[VLLMBackend, FakeAsyncLLM]:
    backend = VLLMBackend("org/model", vllm_modules=modules(cpu=cpu), max_model_len=4096, **kw)
    await backend.load()
    return backend, FakeAsyncLLM.last  # type: ignore[attr-defined]


async def test_engine_arguments_and_a_streamed_reply() -> None:
    backend, engine = await loaded(tensor_parallel_size=2, gpu_memory_utilization=0.5)
    assert engine.args == AsyncEngineArgs(
        model="org/model",
        dtype="auto",
        gpu_memory_utilization=0.5,
        tensor_parallel_size=2,
        enforce_eager=False,
        enable_prefix_caching=True,
        max_model_len=4096,
    )
    stats = GenerationStats()
    text = "".join([p async for p in backend.stream(MESSAGES, stats)])
    assert text == "Seven times eight is fifty six."
    assert engine.renderer.rendered == ["<system>You are a tutor.<user>What is 7 x 8?<assistant>"]
    assert engine.params[0].output_kind is RequestOutputKind.DELTA
    assert (stats.prompt_tokens, stats.cached_prompt_tokens) == (8, 8)
    # Six words, each after a token with no text of its own: twelve tokens.
    assert stats.completion_tokens == 12 and stats.finish_reason == "stop"
    assert backend.engine_requests == 0 and backend.active == 0
    assert backend.count_tokens("seven times eight") == 3
    await backend.close()
    assert engine.shut_down


async def test_a_cpu_engine_gets_a_kv_cache_of_its_own_size() -> None:
    """On a CPU, vLLM reads gpu_memory_utilization as a share of all RAM: 0.9 fails."""
    _, engine = await loaded(cpu=True)
    assert engine.args.kv_cache_memory_bytes == CPU_DEFAULT_KV_CACHE_BYTES
    _, engine = await loaded(cpu=True, kv_cache_bytes=123 << 20, enforce_eager=True)
    assert engine.args.kv_cache_memory_bytes == 123 << 20 and engine.args.enforce_eager


async def test_stopping_early_ends_the_request_in_vllm() -> None:
    backend, engine = await loaded()
    engine.reply = " ".join(["word"] * 10_000)
    stats = GenerationStats()
    async with aclosing(backend.stream(MESSAGES, stats)) as stream:
        async for _ in stream:
            assert backend.engine_requests == 1
            break
    assert backend.engine_requests == 0 and backend.active == 0
    assert stats.finish_reason == ""


async def test_cancellation_ends_the_request_in_vllm() -> None:
    backend, engine = await loaded()
    engine.reply = " ".join(["word"] * 10_000)

    async def consume() -> None:
        async for _ in backend.stream(MESSAGES, GenerationStats()):
            pass

    task = asyncio.create_task(consume())
    for _ in range(5):
        await asyncio.sleep(0)
    assert backend.engine_requests == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.engine_requests == 0 and backend.active == 0


async def test_a_model_that_cannot_load_stops_start_up_in_one_line() -> None:
    backend = VLLMBackend("missing/model", vllm_modules=modules())
    with pytest.raises(LLMLoadError, match="could not load 'missing/model'") as caught:
        await backend.load()
    assert "\n" not in str(caught.value)


async def test_a_failure_after_the_engine_started_shuts_it_down() -> None:
    backend = VLLMBackend("broken/tokenizer", vllm_modules=modules())
    with pytest.raises(LLMLoadError, match=r"tokenizer\.json is corrupt"):
        await backend.load()
    assert FakeAsyncLLM.last.shut_down  # type: ignore[attr-defined]


async def test_a_local_path_that_does_not_exist_is_named() -> None:
    backend = VLLMBackend("/srv/models/nowhere", vllm_modules=modules())
    with pytest.raises(LLMLoadError, match="'/srv/models/nowhere' is not a folder"):
        await backend.load()


async def test_without_vllm_installed_the_error_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    backend = VLLMBackend("org/model")
    with pytest.raises(LLMLoadError, match=r"tutorsrv\[vllm\]"):
        await backend.load()


async def test_a_dead_engine_fails_turns_clearly_and_is_started_again() -> None:
    backend, engine = await loaded()
    engine.die_after = 2
    stats = GenerationStats()
    with pytest.raises(LLMUnavailable, match="starting again"):
        async for _ in backend.stream(MESSAGES, stats):
            pass
    assert not backend.ready and backend.last_failure
    # Turns while it restarts fail at once, with the same clear error.
    with pytest.raises(LLMUnavailable, match="try again"):
        async for _ in backend.stream(MESSAGES, GenerationStats()):
            pass
    await eventually(lambda: backend.ready, "the restarted engine")
    assert engine.shut_down  # the dead one was shut down
    assert FakeAsyncLLM.last is not engine and backend.restarts == 1  # type: ignore[attr-defined]
    text = "".join([p async for p in backend.stream(MESSAGES, GenerationStats())])
    assert text == "Seven times eight is fifty six."
    await backend.close()


async def test_an_error_that_is_not_the_engine_dying_is_passed_on() -> None:
    backend, engine = await loaded()

    async def refuse(*args: Any) -> Any:
        raise ValueError("prompt longer than max_model_len")
        yield

    engine.generate = refuse  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="max_model_len"):
        async for _ in backend.stream(MESSAGES, GenerationStats()):
            pass
    assert backend.ready and backend.restarts == 0
