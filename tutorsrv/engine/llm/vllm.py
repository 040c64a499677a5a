"""vLLM in this process: the V1 ``AsyncLLM`` engine on the engine role's own event loop.

Written against vLLM's V1 API (``vllm.v1.engine.async_llm.AsyncLLM``, as in vLLM 0.10-0.11:
``from_engine_args``, ``get_tokenizer``, ``generate(prompt=, sampling_params=, request_id=)``
with ``RequestOutputKind.DELTA``, ``abort``, ``shutdown``). vLLM is imported only when this
backend is chosen (``pip install 'tutorsrv[vllm]'``); it needs a GPU machine. The tests drive
this adapter with a small fake of that interface; it has not been run against a real vLLM in
this repository's CI (no GPU there).

Prompt caching: vLLM's automatic prefix caching is switched on, and the prompt is the model's
own chat template over the conversation, so its prefix (system prompt and history) is
byte-stable from turn to turn and served from cache.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from .base import ChatMessage, GenerationStats, LLMLoadError, estimate_tokens


class VLLMBackend:
    name = "vllm"
    ready = True

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 0,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_tokens: int = 256,
        temperature: float = 0.6,
        top_p: float = 0.9,
        vllm_modules: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.engine_kwargs: dict[str, Any] = {
            "model": model,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "enable_prefix_caching": True,
        }
        if max_model_len:
            self.engine_kwargs["max_model_len"] = max_model_len
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        # Tests pass stand-ins for the three vLLM names used here; normally imported in load().
        self._modules = vllm_modules
        self._engine: Any = None
        self._tokenizer: Any = None
        self._sampling: Any = None
        self.active = 0

    async def load(self) -> None:
        modules = self._modules or _import_vllm()
        engine_args = modules["AsyncEngineArgs"](**self.engine_kwargs)
        try:
            self._engine = modules["AsyncLLM"].from_engine_args(engine_args)
            self._tokenizer = await self._engine.get_tokenizer()
        except Exception as e:
            raise LLMLoadError(f"vLLM could not load {self.model!r}: {e}") from None
        self._sampling = modules["SamplingParams"]
        self._delta = modules["RequestOutputKind"].DELTA

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def prompt(self, messages: list[ChatMessage]) -> str:
        return self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prefill(self, conversation: str, messages: list[ChatMessage]) -> None:
        """Nothing to read ahead here (vLLM's automatic prefix caching does it by itself)."""

    def forget(self, conversation: str) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def stream(
        self,
        messages: list[ChatMessage],
        stats: GenerationStats,
        *,
        conversation: str | None = None,
        max_tokens: int | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        if self._engine is None:
            raise RuntimeError("the vllm backend is not loaded")
        params = self._sampling(
            max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            output_kind=self._delta,
        )
        request_id = "tutorsrv-" + uuid.uuid4().hex
        finished = False
        self.active += 1
        try:
            async for output in self._engine.generate(
                prompt=self.prompt(messages), sampling_params=params, request_id=request_id
            ):
                if output.prompt_token_ids is not None:
                    stats.prompt_tokens = len(output.prompt_token_ids)
                cached = getattr(output, "num_cached_tokens", None)
                if cached:
                    stats.cached_prompt_tokens = cached
                completion = output.outputs[0]
                if completion.text:
                    stats.completion_tokens += len(completion.token_ids) or 1
                    yield completion.text
                if output.finished:
                    finished = True
                    stats.finish_reason = completion.finish_reason or "stop"
        finally:
            self.active -= 1
            if not finished:
                # Interrupted, replaced or disconnected: free the GPU for others now.
                await self._engine.abort(request_id)


def _import_vllm() -> dict[str, Any]:
    try:
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as e:
        raise LLMLoadError(
            f"llm.backend = 'vllm' needs vLLM installed (pip install 'tutorsrv[vllm]'): {e}"
        ) from None
    return {
        "AsyncLLM": AsyncLLM,
        "AsyncEngineArgs": AsyncEngineArgs,
        "SamplingParams": SamplingParams,
        "RequestOutputKind": RequestOutputKind,
    }
