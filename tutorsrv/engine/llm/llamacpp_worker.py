"""The llama.cpp model in a child process: ``python -m tutorsrv.engine.llm.llamacpp_worker``.

Native model code can crash (a SIGSEGV in a CPU kernel, an illegal instruction in a build for
another CPU). In a child, that ends one reply instead of every session and the database; the
engine (``model_process.py``) sees the pipe close, names the signal and starts a new child.

Protocol: one JSON object per line. The first line from the parent is
``{"op": "load", "options": {...}}`` (LlamaCppBackend's keyword arguments); the child answers
``{"event": "ready", ...}`` or ``{"event": "load_failed", "message": ...}``. Then:

- parent: ``{"op": "generate", "id": n, "messages": [...], "conversation": "<session id>",
  "tenant": "<organisation>" | null, "max_tokens": n | null}``, ``{"op": "cancel", "id": n}``
- child: ``{"id": n, "event": "start", <prompt stats>}``, ``{"id": n, "event": "piece", "text"}``
  ..., then ``{"id": n, "event": "done", <stats>}`` or ``{"id": n, "event": "failed", "message"}``
- parent, unanswered: ``{"op": "prefill", "conversation": ..., "messages": [...]}`` (read a new
  session's opening while idle) and ``{"op": "forget", "conversation": ...}`` (it ended).

Jobs run one at a time on the main thread, in the order ``scheduling.Jobs`` gives (fair
between organisations, with time slices). A reader thread
takes the parent's lines, so a cancel reaches a generation in progress. End of input (the
engine stopped, or died) ends the child at once: it never outlives the engine. SIGINT and SIGTERM
are ignored: they are the engine's to handle (use SIGKILL to kill the child by hand).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from typing import Any, BinaryIO

from ...logs import setup_logging
from .base import GenerationStats, LLMLoadError
from .llamacpp import LlamaCppBackend
from .scheduling import Jobs

log = logging.getLogger(__name__)


class Channel:
    """Writes protocol lines to the parent; one writer at a time."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._out.write(line.encode("utf-8"))
            self._out.flush()


def _protocol_stdout() -> BinaryIO:
    """The protocol keeps the real stdout to itself; anything native code prints to fd 1
    goes to stderr (the engine's log) instead of corrupting the protocol."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(protocol_fd, "wb", buffering=0)


def _read_commands(
    stdin: BinaryIO,
    jobs: Jobs,
    cancelled: set[int],
    running: dict[int, threading.Event],
) -> None:
    for raw in stdin:
        try:
            command = json.loads(raw)
            if command.get("op") == "cancel":
                job_id = int(command["id"])
                cancelled.add(job_id)
                stop = running.get(job_id)
                if stop is not None:  # in progress: stop it now, even mid-prompt
                    stop.set()
            elif command.get("op") in ("generate", "prefill", "forget"):
                jobs.put(command)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not from the engine; nothing to answer
    # The engine closed the pipe or died: nothing more can be asked, nobody reads replies.
    os._exit(0)


def _generate(
    backend: LlamaCppBackend,
    command: dict[str, Any],
    channel: Channel,
    jobs: Jobs,
    cancelled: set[int],
    running: dict[int, threading.Event],
) -> None:
    job_id = int(command["id"])
    stop = threading.Event()
    running[job_id] = stop
    if job_id in cancelled:  # cancelled while it waited
        running.pop(job_id, None)
        cancelled.discard(job_id)
        jobs.finished()
        return
    stats = GenerationStats()
    started = False

    def put(text: str) -> None:
        nonlocal started
        if job_id in cancelled:
            stop.set()
            return
        if not started:
            started = True
            channel.send({"id": job_id, "event": "start", **asdict(stats)})
        channel.send({"id": job_id, "event": "piece", "text": text})

    requeued = False
    try:
        backend.generate_blocking(
            command["messages"],
            stats,
            stop,
            put,
            command.get("conversation"),
            command.get("max_tokens"),
            jobs.should_yield,
        )
    except Exception as e:
        channel.send({"id": job_id, "event": "failed", "message": f"{type(e).__name__}: {e}"})
    else:
        if stats.finish_reason == "yielded" and job_id not in cancelled:
            # Another tenant's turn waits: this one goes back in the queue and resumes from
            # what it has read (scheduling.py, time slices). Nothing was sent yet.
            requeued = True
            jobs.put(command)
            return
        if not started:
            channel.send({"id": job_id, "event": "start", **asdict(stats)})
        channel.send({"id": job_id, "event": "done", **asdict(stats)})
    finally:
        jobs.finished()
        running.pop(job_id, None)
        if not requeued:
            cancelled.discard(job_id)


def main() -> int:
    # A native crash writes every thread's Python stack to stderr (the engine's log).
    faulthandler.enable(all_threads=True)
    # Ctrl-C in a terminal and systemd's stop reach the whole process group; the engine
    # handles them (replies in progress get their grace) and then closes our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = Channel(_protocol_stdout())
    stdin = sys.stdin.buffer
    first = stdin.readline()
    if not first:
        return 0
    try:
        load = json.loads(first)
        setup_logging(load.get("log_level") or "INFO")
        options = load["options"]
        backend = LlamaCppBackend(**options)
        backend.load_blocking()
    except (LLMLoadError, ValueError, KeyError, TypeError) as e:
        channel.send({"event": "load_failed", "message": str(e)})
        return 3
    channel.send({"event": "ready", "model": backend.model, "system_info": backend.system_info})
    jobs = Jobs()
    cancelled: set[int] = set()
    running: dict[int, threading.Event] = {}
    threading.Thread(
        target=_read_commands,
        args=(stdin, jobs, cancelled, running),
        name="commands",
        daemon=True,
    ).start()
    while True:
        command = jobs.get()
        op = command.get("op")
        if op == "generate":
            _generate(backend, command, channel, jobs, cancelled, running)
        elif op == "forget":
            backend.forget_blocking(str(command.get("conversation")))
        elif op == "prefill":
            _prefill(backend, command, jobs)


def _prefill(backend: LlamaCppBackend, command: dict[str, Any], jobs: Jobs) -> None:
    try:
        backend.prefill_blocking(
            str(command["conversation"]), command["messages"], jobs.prefill_stop
        )
    except Exception:  # a prefill only saves time; its failure costs the next turn nothing
        log.exception("prefill failed")
    finally:
        jobs.prefill_done()


if __name__ == "__main__":
    sys.exit(main())
