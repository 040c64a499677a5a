"""The embedded llama.cpp model in a supervised child process (``llm.out_of_process``).

The child (``llamacpp_worker.py``) holds the model; this side streams from it over a pipe.
When the child dies (a native crash, the OOM killer, an operator's kill) the reply in progress
ends with ``LLMUnavailable`` at once, the signal is logged, and a new child is started and
warmed up with back-off. Sessions and their history live in the engine, so every
conversation goes on: the next turn re-reads its history into the new child's cache.

The child is owned here: ``close()`` ends it (closing its input is enough; it is killed if it
does not go), and it exits by itself if the engine dies, because its input closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from .base import ChatMessage, GenerationStats, LLMLoadError, LLMUnavailable, estimate_tokens

log = logging.getLogger(__name__)

WORKER = [sys.executable, "-m", "tutorsrv.engine.llm.llamacpp_worker"]
# One event line can carry a whole prompt's worth of text; never more than this.
LINE_LIMIT = 4 * 1024 * 1024
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A probe after every restart, so that a child that cannot generate never takes a turn.
PROBE = [{"role": "user", "content": "Say hello."}]


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = {
            "SIGSEGV": " (a crash in native code; on Intel CPUs with AMX see docs/deploy.md)",
            "SIGILL": " (llama.cpp was built for another CPU: run `make install` on this one)",
            "SIGKILL": " (killed: out of memory, or by an operator)",
        }.get(name, "")
        return f"was killed by {name}{hint}"
    return f"exited with status {returncode}"


def _load_vocabulary(model: str | None) -> Any:
    """The model file's vocabulary only: no weights, no context (so no KV cache)."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    from .packaged import DEFAULT_MODEL, resolve

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    return LlamaModel(path_model=str(resolve(model or DEFAULT_MODEL)), params=params, verbose=False)


class ModelProcessDied(LLMUnavailable):
    pass


class ModelGenerationFailed(RuntimeError):
    """llama.cpp raised inside the child; the message (for the log) may hold internals."""


class _Child:
    """One child process and the requests it is answering."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.requests: dict[int, asyncio.Queue[dict[str, Any] | BaseException]] = {}
        self.reader: asyncio.Task[None] | None = None

    def send(self, message: dict[str, Any]) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            raise ModelProcessDied("the model process is not running")
        stdin.write(json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n")


class LlamaCppProcessBackend:
    name = "llamacpp"

    def __init__(
        self,
        options: dict[str, Any],
        *,
        model: str,
        load_timeout: float = 300.0,
        probe_timeout: float = 120.0,
    ) -> None:
        self.options = options
        self.model = model
        self.load_timeout = load_timeout
        self.probe_timeout = probe_timeout
        self.active = 0
        # Children started after a death (for /health and the metrics).
        self.restarts = 0
        self.last_failure = ""
        self.system_info = ""
        self._child: _Child | None = None
        self._ready = asyncio.Event()
        self._ids = itertools.count(1)
        self._restarter: asyncio.Task[None] | None = None
        self._closing = False
        self._vocabulary: Any = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    async def load(self) -> None:
        self._child = await self._spawn()
        # The model's vocabulary alone (no weights, a few MiB) in this process, so that
        # counting tokens (course passages) needs no round trip to the child.
        self._vocabulary = await asyncio.to_thread(_load_vocabulary, self.options.get("model"))
        self._ready.set()

    async def _spawn(self) -> _Child:
        """Start a child and wait until its model is loaded; LLMLoadError if it cannot be."""
        proc = await asyncio.create_subprocess_exec(
            *WORKER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        child = _Child(proc)
        assert proc.stdout is not None
        try:
            level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
            child.send({"op": "load", "options": self.options, "log_level": level})
            async with asyncio.timeout(self.load_timeout):
                line = await proc.stdout.readline()
            first = json.loads(line) if line else {}
        except (TimeoutError, ValueError, ModelProcessDied, ConnectionError):
            first = {}
        if first.get("event") != "ready":
            message = first.get("message")
            await self._end(child)
            if not message:
                message = f"the model process {describe_exit(proc.returncode)} while loading"
            raise LLMLoadError(message)
        self.system_info = first.get("system_info", "")
        child.reader = asyncio.create_task(self._read(child), name="llamacpp-child-reader")
        return child

    async def _read(self, child: _Child) -> None:
        """Route the child's events to their requests; on its death, fail them and restart."""
        assert child.proc.stdout is not None
        try:
            while line := await child.proc.stdout.readline():
                event = json.loads(line)
                waiting = child.requests.get(event.get("id"))
                if waiting is not None:
                    waiting.put_nowait(event)
        except (ValueError, ConnectionError) as e:  # readline's limit is a ValueError too
            log.error("the model process sent something unreadable (%s); restarting it", e)
            child.proc.kill()
        returncode = await child.proc.wait()
        why = describe_exit(returncode)
        for waiting in child.requests.values():
            waiting.put_nowait(ModelProcessDied(f"the model process {why}; it is restarting"))
        child.requests.clear()
        if self._closing or self._child is not child:
            return
        self._ready.clear()
        self._child = None
        self.last_failure = why
        log.error("the model process %s; starting a new one", why)
        self._restarter = asyncio.create_task(self._restart(), name="llamacpp-child-restart")

    async def _restart(self) -> None:
        for attempt in itertools.count():
            delay = RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)]
            await asyncio.sleep(delay)
            try:
                child = await self._spawn()
            except LLMLoadError as e:
                self.last_failure = str(e)
                log.error("the model process could not be restarted: %s", e)
                continue
            try:
                async with asyncio.timeout(self.probe_timeout):
                    stats = GenerationStats()
                    probe = self._generate(child, PROBE, stats)
                    async with contextlib.aclosing(probe):
                        async for _ in probe:
                            break
            except (LLMUnavailable, ModelGenerationFailed, TimeoutError) as e:
                self.last_failure = str(e) or "no token within the warm-up time"
                log.error("the restarted model process failed its warm-up: %s", self.last_failure)
                await self._end(child)
                continue
            self._child = child
            self.restarts += 1
            self._ready.set()
            log.warning("the model process is back (restart %d)", self.restarts)
            return

    def prefill(self, conversation: str, messages: list[ChatMessage]) -> None:
        """Ask the child to read a new session's opening while it is idle (no answer)."""
        self._tell({"op": "prefill", "conversation": conversation, "messages": messages})

    def forget(self, conversation: str) -> None:
        self._tell({"op": "forget", "conversation": conversation})

    def count_tokens(self, text: str) -> int:
        if self._vocabulary is None:
            return estimate_tokens(text)
        return len(self._vocabulary.tokenize(text.encode("utf-8"), False, False))

    def _tell(self, message: dict[str, Any]) -> None:
        # A child that is restarting holds no state to read into or to drop.
        if self._child is not None:
            with contextlib.suppress(ModelProcessDied, ConnectionError):
                self._child.send(message)

    async def stream(
        self,
        messages: list[ChatMessage],
        stats: GenerationStats,
        *,
        conversation: str | None = None,
        max_tokens: int | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        if self._child is None:
            raise LLMUnavailable(
                "the model is restarting after a failure; try again in a few seconds"
            )
        self.active += 1
        try:
            generation = self._generate(
                self._child, messages, stats, conversation, max_tokens, tenant
            )
            async with contextlib.aclosing(generation) as gen:
                async for piece in gen:
                    yield piece
        finally:
            self.active -= 1

    async def _generate(
        self,
        child: _Child,
        messages: list[ChatMessage],
        stats: GenerationStats,
        conversation: str | None = None,
        max_tokens: int | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        job_id = next(self._ids)
        events: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        child.requests[job_id] = events
        finished = False
        try:
            child.send(
                {
                    "op": "generate",
                    "id": job_id,
                    "messages": messages,
                    "conversation": conversation,
                    "max_tokens": max_tokens,
                    "tenant": tenant,
                }
            )
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                kind = event.get("event")
                if kind == "piece":
                    yield event["text"]
                elif kind in ("start", "done"):
                    for field in (
                        "prompt_tokens",
                        "cached_prompt_tokens",
                        "completion_tokens",
                        "trimmed_messages",
                        "finish_reason",
                    ):
                        if field in event:
                            setattr(stats, field, event[field])
                    if kind == "done":
                        finished = True
                        return
                elif kind == "failed":
                    finished = True
                    raise ModelGenerationFailed(event.get("message", ""))
        finally:
            child.requests.pop(job_id, None)
            if not finished:
                # The consumer went away (interrupt, new turn, disconnect): stop the child's
                # generation so the next request does not wait behind it.
                with contextlib.suppress(ModelProcessDied, ConnectionError):
                    child.send({"op": "cancel", "id": job_id})

    async def close(self) -> None:
        self._closing = True
        if self._restarter is not None:
            self._restarter.cancel()
            await asyncio.gather(self._restarter, return_exceptions=True)
        child, self._child = self._child, None
        self._ready.clear()
        self._vocabulary = None
        if child is not None:
            await self._end(child)

    async def _end(self, child: _Child) -> None:
        """Close the child's input (it exits), kill it if it does not, and reap it."""
        stdin = child.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        try:
            async with asyncio.timeout(5):
                await child.proc.wait()
        except TimeoutError:
            child.proc.kill()
            await child.proc.wait()
        if child.reader is not None and child.reader is not asyncio.current_task():
            await asyncio.gather(child.reader, return_exceptions=True)
