"""A deterministic backend for tests and benchmarks: it replies with configured text.

It is chosen by name (``llm.backend = "scripted"``) and is never a fallback for a model that
failed to load. ``{message}`` in the text is replaced by the student's last message, so a test
can tell which turn a reply belongs to.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from .base import ChatMessage, GenerationStats, estimate_tokens

_WORD = re.compile(r"\s*\S+")


class ScriptedBackend:
    name = "scripted"
    ready = True
    model = "scripted"

    def __init__(self, text: str, token_count: int = 0, token_delay_ms: float = 0.0) -> None:
        self.text = text
        self.token_count = token_count
        self.token_delay = token_delay_ms / 1000.0
        # Generations in progress; tests use it to prove that cancellation reaches the backend.
        self.active = 0

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def pieces(self, messages: list[ChatMessage]) -> list[str]:
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        words = _WORD.findall(self.text.replace("{message}", last_user)) or ["…"]
        if not self.token_count:
            return words
        return [words[i % len(words)] for i in range(self.token_count)]

    def prefill(self, conversation: str, messages: list[ChatMessage]) -> None:
        """Nothing to read ahead here."""

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
        pieces = self.pieces(messages)
        cut = max_tokens is not None and len(pieces) > max_tokens
        if cut:
            pieces = pieces[:max_tokens]
        stats.prompt_tokens = sum(len(_WORD.findall(m["content"])) for m in messages)
        self.active += 1
        try:
            for piece in pieces:
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                else:
                    # Still yield to the loop so a zero-delay reply can be interrupted.
                    await asyncio.sleep(0)
                stats.completion_tokens += 1
                yield piece
            stats.finish_reason = "length" if cut else "stop"
        finally:
            self.active -= 1
