"""Each conversation's place in the model, kept while another one talks.

A llama.cpp context has one KV cache. With several students on one model, each turn of
another student overwrites it, and the next turn of the first one re-reads its whole history
(seconds with a 1.5B model: about 12 ms per prompt token on 2 cores). So when the context
passes from one conversation to another, the leaving conversation's KV cells are copied out
(``llama_state_seq_get_data``: the cells of sequence 0 and their tokens, no logits) and the
arriving one's copied back in. Measured here: 6.3 MiB of state (288 tokens of SmolLM2) saved
in 3.9 ms and restored in 2.0 ms; Qwen 1.5B holds ~28 KiB a token, so a 1,000-token
conversation is ~27 MiB and ~25 ms for both copies, against ~12 s to read it again.

Saved states are bounded (``llm.session_state_bytes``), least recently used first out; a
conversation whose state was dropped re-reads its prompt once, as before. Not thread-safe:
the backend's single model thread is the only caller.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class SavedState:
    tokens: list[int]
    data: Any  # a ctypes uint8 array
    size: int


class SessionStates:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._saved: OrderedDict[str, SavedState] = OrderedDict()
        self.bytes = 0
        # Counters for /health and the benchmark.
        self.saves = 0
        self.restores = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._saved)

    def __contains__(self, key: str) -> bool:
        return key in self._saved

    def save(self, key: str, llama: Any) -> None:
        """Copy the live KV cache (sequence 0) out as ``key``'s state."""
        import llama_cpp

        self.discard(key)
        n_tokens = llama.n_tokens
        if n_tokens <= 0 or self.budget_bytes <= 0:
            return
        ctx = llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        if size <= 0 or size > self.budget_bytes:
            return
        data = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, data, size, 0)
        if written <= 0:
            return
        self._saved[key] = SavedState(llama.input_ids[:n_tokens].tolist(), data, written)
        self.bytes += written
        self.saves += 1
        while self.bytes > self.budget_bytes and self._saved:
            _, dropped = self._saved.popitem(last=False)
            self.bytes -= dropped.size
            self.evictions += 1

    def restore(self, key: str, llama: Any) -> bool:
        """Replace the live KV cache with ``key``'s saved state (which is then no longer
        kept here: the live cache is the newest copy). False if there is none."""
        import llama_cpp

        saved = self._saved.pop(key, None)
        if saved is None:
            return False
        self.bytes -= saved.size
        llama._ctx.kv_cache_clear()
        llama.n_tokens = 0
        if llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, saved.data, saved.size, 0) <= 0:
            return False  # an empty cache: the prompt is simply read again
        n = len(saved.tokens)
        llama.input_ids[:n] = saved.tokens
        llama.n_tokens = n
        # No logits were saved: the next generation must evaluate at least one token.
        llama._requires_eval = True
        self.restores += 1
        return True

    def discard(self, key: str) -> None:
        saved = self._saved.pop(key, None)
        if saved is not None:
            self.bytes -= saved.size
