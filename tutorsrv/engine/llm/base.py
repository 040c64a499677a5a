"""The one streaming interface every LLM backend implements.

A backend turns a list of chat messages into an async stream of text pieces. Cancellation is
part of the contract: when the consumer stops iterating (interrupt, new turn, disconnect) and
closes the stream, the backend must stop generating promptly and free the model for the next
caller. Use ``contextlib.aclosing`` around the iteration so that happens at once, not at GC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass
class GenerationStats:
    """Filled in by the backend while it streams; read by the caller when it ends."""

    prompt_tokens: int = 0
    # Prompt tokens that did not have to be evaluated again thanks to a cached prefix.
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    # Messages dropped from the front of the history to fit the context window.
    trimmed_messages: int = 0
    finish_reason: str = ""


class LLMBackend(Protocol):
    name: str
    model: str

    @property
    def ready(self) -> bool:
        """False while the model cannot take a turn (e.g. its process is restarting)."""
        ...

    async def load(self) -> None:
        """Load the model. Raise with a clear message if it cannot be loaded."""

    async def close(self) -> None:
        """Release the model and any worker threads."""

    def stream(
        self,
        messages: list[ChatMessage],
        stats: GenerationStats,
        *,
        conversation: str | None = None,
        max_tokens: int | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        """Stream the assistant's reply to ``messages`` as text pieces. ``conversation`` (the
        session id) lets a backend keep each conversation's prompt state apart, and
        ``tenant`` (its organisation) share the model fairly; ``max_tokens`` (the tutor's
        limit) replaces the configured reply length."""
        ...

    def prefill(self, conversation: str, messages: list[ChatMessage]) -> None:
        """A new conversation opens with ``messages``: read them ahead, when idle, so its
        first turn is as fast as later ones. Returns at once; a backend may ignore it."""

    def forget(self, conversation: str) -> None:
        """The conversation has ended: drop whatever is kept for it."""

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is to this model (exact where the backend has the
        tokenizer at hand, else ``estimate_tokens``). Cheap enough for the event loop."""
        ...


def estimate_tokens(text: str) -> int:
    """A tokenizer-free count that errs high: a token per CJK character, one per 3.5 other
    characters (English runs about 4 characters a token with these vocabularies)."""
    cjk = sum(1 for c in text if "\u3000" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af")
    return cjk + -(-(len(text) - cjk) * 2 // 7)


class LLMLoadError(RuntimeError):
    """The configured model could not be loaded; the message says what to fix."""


class LLMUnavailable(RuntimeError):
    """The model cannot answer this turn (its process died and is restarting, its server is
    unreachable). The message is safe to show a student: no secrets, no internals."""
