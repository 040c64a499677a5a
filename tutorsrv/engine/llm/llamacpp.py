"""llama.cpp backend (the embedded default): a GGUF model in this process, on the CPU.

One ``Llama`` instance is not thread-safe and has one KV cache, so every call runs on a single
dedicated worker thread: calls are serialised by construction and the event loop never blocks.
Tokens cross back to the loop through an ``asyncio.Queue``; a ``threading.Event`` tells the
worker to stop when the consumer goes away (interrupt, new turn, disconnect).

Prompt reuse, two layers:
- llama.cpp keeps the KV cache of the last prompt, and ``Llama.generate`` re-evaluates only the
  part after the longest common prefix. One growing conversation therefore reads only its new
  turn each time.
- With several conversations on one model they would overwrite each other's KV cache. Each
  generation names its conversation (the session id); when the context passes to another
  conversation, the leaving one's KV cells are saved and the arriving one's restored
  (``session_states.py``, bounded by ``llm.session_state_bytes``). ``prefill`` reads a new
  session's system prompt and greeting while the model is idle, so its first turn reads only
  the question. (llama-cpp-python's ``LlamaRAMCache`` was measured and dropped: each saved state
  also copies the ~96 MiB logits buffer, and saving cost 0.2-0.35 s after every reply.)

Stopping: the stop flag is checked between output tokens and between slices of
``PROMPT_SLICE`` (64) tokens of prompt evaluation, so an interrupt during a long prompt takes
effect after the slice in progress, not after the whole prompt. What was evaluated stays in
the KV cache, and the next prompt that shares it starts from there. The same points let a
long prompt make way for another organisation's turn (``scheduling.py``).

By default this class runs inside a child process (``model_process.py``, ``llm.out_of_process``)
so that a crash of native code ends one reply, not the engine. CPUs and builds: the Makefile
builds llama.cpp for a portable instruction set without AMX (docs/deploy.md, "CPUs and
builds"); a build that has AMX kernels anyway gets weight repacking switched off here, because
the AMX repack path crashes on Sapphire Rapids (llama.cpp#20824).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import ChatMessage, GenerationStats, LLMLoadError
from .packaged import DEFAULT_MODEL, model_name, resolve
from .session_states import SessionStates

log = logging.getLogger(__name__)

_DONE = object()


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


# Prompts are evaluated this many tokens at a time, with a chance to stop or make way between
# two slices. Measured here: the same prompt speed from 64 to 512 tokens a slice (SmolLM2
# 357-392 tok/s, Qwen 1.5B 84-87 tok/s), but a 512-token slice of Qwen 1.5B lasts 6 s and a
# 64-token one 0.7 s: the longest wait it imposes on an interrupt or on another school's turn.
PROMPT_SLICE = 64

# A conversation that outgrows the context is trimmed down to this share of it (see
# fit_to_context): the turns after that are cheap until it is full again.
TRIM_TO = 0.6


def _message_key(message: ChatMessage) -> str:
    return hashlib.sha256(f"{message['role']}\0{message['content']}".encode()).hexdigest()


class _Stopped(Exception):
    """Raised between two batches of prompt evaluation when the generation was stopped."""


class _Yielded(Exception):
    """Raised between two batches of prompt evaluation to make way for another turn."""


class LlamaCppBackend:
    name = "llamacpp"
    ready = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        n_ctx: int = 2048,
        n_threads: int = 0,
        n_threads_decode: int = 0,
        max_tokens: int = 256,
        temperature: float = 0.2,
        top_p: float = 0.9,
        seed: int = -1,
        session_state_bytes: int = 512 * 2**20,
    ) -> None:
        # A packaged model's name (packaged.py) or a GGUF file's path.
        self.model_entry = model
        self.model = model_name(model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_threads_decode = n_threads_decode or self.n_threads
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.states = SessionStates(session_state_bytes)
        # The conversation whose prompt is in the live KV cache (None: nobody's to keep).
        self._owner: str | None = None
        # Per conversation: the message its trimmed prompts start from (fit_to_context).
        self._trim_anchors: dict[str, str] = {}
        self._llama: Any = None
        self._format: Any = None
        self._eos_text = ""
        # What llama.cpp says it was built with (instruction sets, repack), for /health.
        self.system_info = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self._eval_batch: Any = None
        # The stop flag of the generation in progress (one at a time on this model).
        self._stop: threading.Event | None = None
        # Asked between prompt batches: should this generation make way (model_process's
        # scheduler; None in the thread backend, which runs turns first come, first served).
        self._yield_now: Any = None
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
        path = resolve(self.model_entry)
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads_decode,
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
        # Prompt evaluation in batches that a stop can come between (see _eval_until_stopped).
        self._eval_batch = llama.eval
        llama.eval = self._eval_until_stopped
        self._llama = llama
        log.info("llama.cpp model loaded: %s (n_ctx=%d)", path.name, self.n_ctx)

    def _eval_until_stopped(self, tokens: Any) -> None:
        """Llama.eval, one slice at a time, checking the current generation's stop flag (and
        whether it should make way) in between. Each call appends to the KV cache after the
        tokens already in it, as Llama.eval does batch after batch itself."""
        size = min(self._llama.n_batch, PROMPT_SLICE)
        for start in range(0, len(tokens), size):
            stop = self._stop
            if stop is not None and stop.is_set():
                raise _Stopped
            # At least one slice per turn on the model, so a yielding prompt makes progress.
            if start and self._yield_now is not None and self._yield_now():
                raise _Yielded
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

    def fit_to_context(
        self,
        messages: list[ChatMessage],
        reply_tokens: int | None = None,
        conversation: str | None = None,
    ) -> tuple[list[int], int]:
        """Tokens of the prompt, dropping the oldest turns (never the system prompt, never the
        newest message) until it leaves room for a full reply. Returns (tokens, dropped).

        Whole exchanges go, so the history still starts with a student turn. The number to
        drop is found by binary search over those starting points (fewer turns, fewer
        tokens): O(log n) renderings of the prompt, where dropping one at a time re-rendered
        and re-tokenised it once per dropped turn (quadratic in a long history, on the
        model's only thread).

        With a ``conversation``, trimming is sticky: once a long conversation must lose its
        oldest turns, it loses enough to come down to ``TRIM_TO`` of the budget, and later
        turns start from that same message for as long as they fit. Every prompt then
        shares its prefix with the previous one and only the new turn is read, instead of
        the whole window re-read at every turn (a dropped turn changes the prefix)."""
        budget = self.n_ctx - (reply_tokens or self.max_tokens)
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

        def first_fitting(limit: int, lo: int = 0) -> int:
            """Index into ``starts`` of the first start whose prompt fits ``limit``."""
            hi = len(starts) - 1
            if len(tokens_from(starts[lo])) <= limit:
                return lo
            while lo < hi:
                mid = (lo + hi) // 2
                if len(tokens_from(starts[mid])) <= limit:
                    hi = mid
                else:
                    lo = mid + 1
            return hi

        anchor = self._trim_anchors.get(conversation) if conversation else None
        chosen = None
        if anchor is not None:
            for index, start in enumerate(starts):
                if _message_key(turns[start]) == anchor:
                    if len(tokens_from(start)) <= budget:
                        chosen = index
                    break
        if chosen is None:
            chosen = first_fitting(budget)
            if conversation is not None:
                if chosen > 0:  # trimming: make room for the next turns too
                    chosen = first_fitting(int(budget * TRIM_TO), chosen)
                    self._trim_anchors[conversation] = _message_key(turns[starts[chosen]])
                else:
                    self._trim_anchors.pop(conversation, None)
        start = starts[chosen] if starts else 0
        tokens = tokens_from(start)
        if len(tokens) > budget:
            # A single message longer than the window: keep its end, which is what the
            # model must answer.
            tokens = tokens[-budget:]
        return tokens, start

    def prefill(self, conversation: str, messages: list[ChatMessage]) -> None:
        """Read a conversation's opening (system prompt, greeting) into its saved state while
        the model has nothing else to do; skipped when a reply is waiting or running."""

        def work() -> None:
            if self.active or self._llama is None:
                return
            try:
                self.prefill_blocking(conversation, messages, threading.Event())
            except Exception:
                log.exception("prefill failed")

        self._executor.submit(work)

    def forget(self, conversation: str) -> None:
        """The conversation has ended: drop its saved state."""
        self._executor.submit(self.forget_blocking, conversation)

    def count_tokens(self, text: str) -> int:
        # Tokenizing reads only the vocabulary, never the context the worker thread uses.
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def stream(
        self,
        messages: list[ChatMessage],
        stats: GenerationStats,
        *,
        conversation: str | None = None,
        max_tokens: int | None = None,
        tenant: str | None = None,
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
                self.generate_blocking(messages, stats, stop, put, conversation, max_tokens)
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
        conversation: str | None = None,
        max_tokens: int | None = None,
        yield_now: Any = None,
    ) -> None:
        """One generation in the calling thread: ``put`` gets each piece, ``stop`` ends it
        (between tokens, or between batches of the prompt). Used by ``stream`` and by the
        model's child process. ``yield_now()`` True between two prompt batches ends it with
        ``finish_reason = "yielded"`` and nothing put: the caller runs it again later, and
        it resumes from what it read."""
        llama = self._llama
        reply_tokens = min(max_tokens or self.max_tokens, self.n_ctx // 2)
        tokens, dropped = self.fit_to_context(messages, reply_tokens, conversation)
        self._take_context(conversation)
        stats.prompt_tokens = len(tokens)
        stats.trimmed_messages = dropped
        stats.cached_prompt_tokens = self._reusable_prefix(tokens)
        chunks = llama.create_completion(
            prompt=tokens,
            max_tokens=reply_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[self._eos_text] if self._eos_text else [],
            stream=True,
        )
        self._stop = stop
        self._yield_now = yield_now
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
        except _Yielded:
            stats.finish_reason = "yielded"
        finally:
            self._stop = None
            self._yield_now = None
            chunks.close()

    def prefill_blocking(
        self, conversation: str, messages: list[ChatMessage], stop: threading.Event
    ) -> int:
        """Evaluate ``messages``' prompt into ``conversation``'s context without generating;
        returns the tokens evaluated. The next turn shares this prefix (the template adds the
        student's turn after it), so it reads only its own message."""
        llama = self._llama
        tokens, _ = self.fit_to_context(messages)
        self._take_context(conversation)
        reuse = min(self._reusable_prefix(tokens), len(tokens))
        if not llama._ctx.kv_cache_seq_rm(-1, reuse, -1):
            llama.reset()
            reuse = 0
        llama.n_tokens = reuse
        self._stop = stop
        try:
            llama.eval(tokens[reuse:])
        except _Stopped:
            pass
        finally:
            self._stop = None
        return llama.n_tokens - reuse

    def forget_blocking(self, conversation: str) -> None:
        self.states.discard(conversation)
        self._trim_anchors.pop(conversation, None)
        if self._owner == conversation:
            self._owner = None  # the live cache stays: its prefix may serve the next prompt

    def _take_context(self, conversation: str | None) -> None:
        """Give the live KV cache to ``conversation``: save the current owner's cells, restore
        the newcomer's. An anonymous generation (None: warm-up, probes) keeps nothing."""
        if conversation is not None and conversation == self._owner:
            return
        if self._owner is not None:
            self.states.save(self._owner, self._llama)
        self._owner = conversation
        if conversation is not None:
            self.states.restore(conversation, self._llama)

    def _reusable_prefix(self, tokens: list[int]) -> int:
        """How many prompt tokens llama.cpp will not have to evaluate (for the metrics)."""
        from llama_cpp import Llama

        best = Llama.longest_token_prefix(self._llama._input_ids.tolist(), tokens)
        # llama.cpp re-evaluates the last prompt token even on a full hit, to get fresh logits.
        return min(best, len(tokens) - 1)
