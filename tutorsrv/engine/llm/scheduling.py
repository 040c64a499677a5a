"""The model process's work queue: which job its one model runs next, and when a long one
makes way.

Three kinds of job come from the engine: generations (a student's turn), forgets (a
session ended: cheap) and prefills (read a new session's opening ahead: worth it only when
the model would otherwise be idle). The order:

1. forgets, at once;
2. generations, fairly: the next one belongs to the organisation (``tenant``) served least
   recently, so a school whose 30 students talk at once does not make another school's one
   student wait behind all 30 turns; a session without a tenant counts as its own; one
   tenant's turns go first come, first served;
3. prefills when nothing else waits, except that a session's own pending prefill runs just
   before its first turn (it is the start of that very prompt). Another tenant's turn stops
   a prefill in progress between two prompt batches.

Time slices: a generation reads its prompt 64 tokens at a time (``llamacpp.PROMPT_SLICE``).
When another tenant's turn is waiting, the one in progress yields after a slice (it has read
at least one this time), goes back in the queue and later resumes from what it read (its KV
cells are kept as its session's saved state). One student's long prompt (a flooded history,
a long pasted text) then costs another school at most one slice of waiting (0.7 s with Qwen
1.5B on 2 cores), not the whole prompt (up to 2,000 tokens: 24 s). A reply
that streams is not interrupted: its length is bounded by ``max_tokens``.

Thread-safe: the reader thread puts, the model thread gets and asks ``should_yield``.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, deque
from typing import Any


def tenant_key(command: dict[str, Any]) -> str:
    tenant = command.get("tenant")
    return f"tenant:{tenant}" if tenant else f"session:{command.get('conversation')}"


class Jobs:
    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._urgent: deque[dict[str, Any]] = deque()
        self._prefills: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # When each tenant was last given the model (a counter, not a clock).
        self._served: dict[str, int] = {}
        self._turns = itertools.count()
        # The generation in progress (its tenant), and the prefill in progress.
        self._running: str | None = None
        self._prefilling: str | None = None
        self.prefill_stop = threading.Event()

    def put(self, command: dict[str, Any]) -> None:
        op, conversation = command.get("op"), str(command.get("conversation"))
        with self._ready:
            if op == "prefill":
                self._prefills[conversation] = command
            else:
                if op == "forget":
                    self._prefills.pop(conversation, None)
                    # A session without a tenant was its own key: drop it (bounded memory).
                    self._served.pop(f"session:{conversation}", None)
                self._urgent.append(command)
                if op == "generate" and self._prefilling not in (None, conversation):
                    self.prefill_stop.set()
            self._ready.notify()

    def get(self) -> dict[str, Any]:
        """The next job (blocking). A generation returned here is the running one until
        ``finished``."""
        with self._ready:
            while not self._urgent and not self._prefills:
                self._ready.wait()
            if self._urgent:
                command = self._next_urgent()
                own = str(command.get("conversation"))
                if command.get("op") == "generate" and own in self._prefills:
                    self._urgent.appendleft(command)  # its opening first, then itself
                    return self._start_prefill(self._prefills.pop(own))
                if command.get("op") == "generate":
                    key = tenant_key(command)
                    self._served[key] = next(self._turns)
                    self._running = key
                return command
            _, command = self._prefills.popitem(last=False)
            return self._start_prefill(command)

    def _next_urgent(self) -> dict[str, Any]:
        for index, command in enumerate(self._urgent):
            if command.get("op") != "generate":
                del self._urgent[index]
                return command
        best = min(
            range(len(self._urgent)),
            key=lambda i: (self._served.get(tenant_key(self._urgent[i]), -1), i),
        )
        command = self._urgent[best]
        del self._urgent[best]
        return command

    def _start_prefill(self, command: dict[str, Any]) -> dict[str, Any]:
        self._prefilling = str(command["conversation"])
        self.prefill_stop = threading.Event()
        return command

    def should_yield(self) -> bool:
        """Between two prompt batches of the running generation: does another tenant's turn
        wait?"""
        with self._ready:
            running = self._running
            return any(c.get("op") == "generate" and tenant_key(c) != running for c in self._urgent)

    def finished(self) -> None:
        with self._ready:
            self._running = None

    def prefill_done(self) -> None:
        with self._ready:
            self._prefilling = None
