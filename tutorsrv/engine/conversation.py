"""One connection's conversation: turns in, streamed responses out, interruption.

The ``Conversation`` owns the task of the response in progress (at most one). It is created
per WebSocket connection and works on the session's history, so a reconnect resumes the same
conversation while the old connection's task dies with the old connection.

Every response ends with exactly one of ``response_done`` or ``interrupted``; after
``interrupted`` nothing more of that response is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from ..backplane import TurnRecord
from ..registry import Message, Session, SessionRegistry, now_iso
from . import protocol
from .llm.base import ChatMessage, GenerationStats, LLMBackend

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

_WORD = re.compile(r"\s*\S+")


class Conversation:
    def __init__(
        self,
        session: Session,
        registry: SessionRegistry,
        llm: LLMBackend,
        send: Send,
        *,
        default_system_prompt: str,
        record_turn: Callable[[TurnRecord], None] | None = None,
    ) -> None:
        self.session = session
        self.registry = registry
        self.llm = llm
        self.send = send
        self.default_system_prompt = default_system_prompt
        self.record_turn = record_turn
        # The student message the response in progress answers (None for the greeting).
        self._answering: Message | None = None
        self._task: asyncio.Task[None] | None = None
        self._response_id: str | None = None
        # Set once a response has finished generating and is only reporting; interrupting
        # it then would announce "interrupted" for a reply the student already has whole.
        self._finishing = False

    async def student_text(self, content: str) -> None:
        """A student turn: stop whatever is being said, record the turn, answer it."""
        await self.interrupt(reason="new_turn")
        turn_started = time.monotonic()
        self._answering = Message("user", content, now_iso())
        self.session.history.append(self._answering)
        self.registry.touch(self.session)
        stats = GenerationStats()
        self._start(self.llm.stream(self._prompt(), stats), stats, turn_started)

    async def greet(self) -> None:
        greeting = self.session.tutor.greeting.strip()
        if greeting:
            self._answering = None
            self._start(_fixed_pieces(greeting), GenerationStats(), time.monotonic())

    async def interrupt(self, reason: str = "interrupt") -> bool:
        """Stop the response in progress and say so. Returns True if there was one."""
        task, response_id = self._task, self._response_id
        if task is None or task.done():
            return False
        if self._finishing:
            # Generation is over; the reply is whole and only being reported. Let it finish.
            await asyncio.shield(task)
            return False
        task.cancel()
        # gather() waits for the cancelled task without swallowing our own cancellation.
        await asyncio.gather(task, return_exceptions=True)
        await self.send({"type": "interrupted", "response_id": response_id, "reason": reason})
        return True

    async def close(self) -> None:
        """The connection is going away: stop generating, say nothing more.

        The task is cancelled before the first await, so this holds even when the caller
        is itself being cancelled."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _start(
        self, pieces: AsyncIterator[str], stats: GenerationStats, turn_started: float
    ) -> None:
        self._response_id = "r_" + uuid.uuid4().hex[:12]
        self._finishing = False
        self._task = asyncio.get_running_loop().create_task(
            self._respond(self._response_id, pieces, stats, turn_started)
        )

    def _prompt(self) -> list[ChatMessage]:
        system = self.session.tutor.system_prompt.strip() or self.default_system_prompt
        messages: list[ChatMessage] = [{"role": "system", "content": system}]
        for m in self.session.history:
            if m.content:
                messages.append({"role": m.role, "content": m.content})
        return messages

    async def _respond(
        self,
        response_id: str,
        pieces: AsyncIterator[str],
        stats: GenerationStats,
        turn_started: float,
    ) -> None:
        parts: list[str] = []
        first_piece_at: float | None = None
        try:
            async with aclosing(pieces) as stream:  # type: ignore[type-var]
                async for piece in stream:
                    if first_piece_at is None:
                        first_piece_at = time.monotonic()
                    parts.append(piece)
                    await self.send(
                        {"type": "text_stream", "token": piece, "response_id": response_id}
                    )
                    self.registry.touch(self.session)
        except asyncio.CancelledError:
            self._record(
                response_id,
                parts,
                interrupted=True,
                metrics=_metrics(stats, parts, turn_started, first_piece_at),
            )
            raise
        except ConnectionError:
            # The socket went away under us; the connection's owner is cleaning up.
            self._record(
                response_id,
                parts,
                interrupted=True,
                metrics=_metrics(stats, parts, turn_started, first_piece_at),
            )
            return
        except Exception as exc:
            log.exception("generation failed", extra={"session_id": self.session.id})
            self._record(
                response_id,
                parts,
                interrupted=True,
                metrics=_metrics(stats, parts, turn_started, first_piece_at),
            )
            self._finishing = True
            failure = f"the language model failed: {type(exc).__name__}"
            with contextlib.suppress(ConnectionError):
                await self.send(protocol.error("generation_failed", failure))
                await self.send(
                    {"type": "interrupted", "response_id": response_id, "reason": "error"}
                )
            return

        self._finishing = True
        metrics = _metrics(stats, parts, turn_started, first_piece_at)
        message = self._record(response_id, parts, interrupted=False, metrics=metrics)
        # A socket that went away after the reply was complete loses nothing: history has it.
        with contextlib.suppress(ConnectionError):
            await self._report(message, response_id, metrics)

    async def _report(self, message: Message, response_id: str, metrics: dict[str, Any]) -> None:
        await self.send(
            {
                "type": "text",
                "content": message.content,
                "role": "assistant",
                "timestamp": message.timestamp,
                "response_id": response_id,
            }
        )
        await self.send({"type": "response_done", "response_id": response_id, "metrics": metrics})

    def _record(
        self,
        response_id: str,
        parts: list[str],
        *,
        interrupted: bool,
        metrics: dict[str, Any] | None = None,
    ) -> Message:
        message = Message("assistant", "".join(parts).strip(), now_iso(), response_id, interrupted)
        # An interrupted reply keeps what was produced; an empty one still goes to the
        # transcript (the student's words count) but not into the model's history.
        if message.content or not interrupted:
            self.session.history.append(message)
        if self.record_turn is not None:
            student = self._answering
            self.record_turn(
                TurnRecord(
                    session_id=self.session.id,
                    response_id=response_id,
                    reply_text=message.content,
                    reply_at=message.timestamp,
                    interrupted=interrupted,
                    student_text=student.content if student else None,
                    student_at=student.timestamp if student else None,
                    metrics=metrics or {},
                )
            )
        return message


async def _fixed_pieces(text: str) -> AsyncIterator[str]:
    for piece in _WORD.findall(text):
        await asyncio.sleep(0)
        yield piece


def _metrics(
    stats: GenerationStats, parts: list[str], turn_started: float, first_piece_at: float | None
) -> dict[str, Any]:
    finished = time.monotonic()
    tokens = stats.completion_tokens or len(parts)
    generating = finished - first_piece_at if first_piece_at is not None else 0.0
    return {
        "ttft_ms": _ms(first_piece_at - turn_started) if first_piece_at is not None else None,
        "duration_ms": _ms(finished - turn_started),
        "tokens": tokens,
        "tokens_per_s": round(tokens / generating, 1) if generating > 0 else None,
        "prompt_tokens": stats.prompt_tokens,
        "cached_prompt_tokens": stats.cached_prompt_tokens,
        "trimmed_messages": stats.trimmed_messages,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
