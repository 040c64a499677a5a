"""One connection's conversation: turns in, streamed responses out, interruption.

The ``Conversation`` owns the task of the response in progress (at most one). It is created
per WebSocket connection and works on the session's history, so a reconnect resumes the same
conversation while the old connection's task dies with the old connection.

Every response ends with exactly one of ``response_done`` or ``interrupted``; after
``interrupted`` nothing more of that response is sent, audio included: a spoken response's
``Speaker`` runs as a child of the response task and has ended before ``interrupted`` goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from ..backplane import Backplane, TurnRecord
from ..knowledge import KnowledgeSearch, fit_passages
from ..registry import Message, Session, SessionRegistry, TutorProfile, now_iso
from . import protocol
from .llm.base import ChatMessage, GenerationStats, LLMBackend, LLMUnavailable
from .voice_output import Speaker, SpeechSettings

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]

_WORD = re.compile(r"\s*\S+")
# Spoken responses remembered for ``played`` reports that arrive after they ended.
_RECENT_SPOKEN = 8
# The longest a finished reply waits for its turn to reach the spool before response_done.
DURABLE_WAIT_SECONDS = 5.0


@dataclass
class VoiceTurn:
    """A student turn that was spoken: when the speech ended and how long ASR took."""

    speech_ended_at: float  # monotonic
    asr_ms: float


@dataclass(eq=False)
class Response:
    """One tutor response in progress and what it has produced so far."""

    id: str
    answering: Message | None  # the student turn it answers; None for the greeting
    stats: GenerationStats
    started: float  # monotonic
    parts: list[str] = field(default_factory=list)
    first_piece_at: float | None = None
    # Generation is over; the reply is whole and only being reported.
    finishing: bool = False
    recorded: bool = False
    sources: list[dict[str, Any]] = field(default_factory=list)
    speaker: Speaker | None = None
    voice: VoiceTurn | None = None
    # Set when recorded: the history entry and the transcript turn (``played`` revises both).
    message: Message | None = None
    turn: TurnRecord | None = None
    # The transcript: the spool seq of this turn's pending record, and whether the recorded
    # turn is on disk yet (``response_done`` waits for it).
    pending_seq: int | None = None
    pending: asyncio.Future[bool] | None = None
    durable: asyncio.Future[bool] | None = None
    played_ms: float | None = None  # a ``played`` report that came before the recording
    model: str = ""  # the model that writes it (none for the greeting)

    def metrics(self) -> dict[str, Any]:
        finished = time.monotonic()
        tokens = self.stats.completion_tokens or len(self.parts)
        first = self.first_piece_at
        generating = finished - first if first is not None else 0.0
        measured = {
            "ttft_ms": _ms(first - self.started) if first is not None else None,
            "duration_ms": _ms(finished - self.started),
            "tokens": tokens,
            "tokens_per_s": round(tokens / generating, 1) if generating > 0 else None,
            "prompt_tokens": self.stats.prompt_tokens,
            "cached_prompt_tokens": self.stats.cached_prompt_tokens,
            "trimmed_messages": self.stats.trimmed_messages,
        }
        if self.model:
            measured["model"] = self.model
        if self.speaker is not None:
            first_audio = self.speaker.first_audio_at
            measured["first_audio_ms"] = (
                _ms(first_audio - self.started) if first_audio is not None else None
            )
            measured["audio_ms"] = round(self.speaker.audio_ms, 1)
        if self.voice is not None:
            measured["asr_ms"] = self.voice.asr_ms
            if self.speaker is not None and self.speaker.first_audio_at is not None:
                # End of the student's speech to the tutor's first sound: what students feel.
                measured["speech_to_first_audio_ms"] = _ms(
                    self.speaker.first_audio_at - self.voice.speech_ended_at
                )
        return measured


class Conversation:
    def __init__(
        self,
        session: Session,
        registry: SessionRegistry,
        llm: LLMBackend,
        send: Send,
        *,
        default_system_prompt: str,
        transcript: Backplane | None = None,
        knowledge: KnowledgeSearch | None = None,
        top_k: int = 3,
        passage_tokens: int = 250,
        search_timeout: float = 3.0,
        on_response: Callable[[str, dict[str, Any]], None] | None = None,
        speech: SpeechSettings | None = None,
    ) -> None:
        self.session = session
        self.registry = registry
        self.llm = llm
        self.send = send
        self.default_system_prompt = default_system_prompt
        self.transcript = transcript
        self.knowledge = knowledge
        self.top_k = top_k
        self.passage_tokens = passage_tokens
        self.search_timeout = search_timeout
        # Told once of every finished response: its outcome (done, interrupted, error) and
        # its metrics (/metrics counts them).
        self.on_response = on_response
        # None: this engine cannot speak. Whether this session wants speech is
        # ``session.audio_output``.
        self.speech = speech
        self._task: asyncio.Task[None] | None = None
        self._response: Response | None = None
        # Turns and interruptions come from the read loop and from transcriptions; one at a
        # time, so two never cancel the same response or start two at once.
        self._lock = asyncio.Lock()
        self._spoken: OrderedDict[str, Response] = OrderedDict()

    @property
    def responding(self) -> asyncio.Task[None] | None:
        """The task of the response in progress, if any (shutdown waits for it)."""
        task = self._task
        return task if task is not None and not task.done() else None

    async def student_text(self, content: str, voice: VoiceTurn | None = None) -> None:
        """A student turn: stop whatever is being said, record the turn, answer it."""
        async with self._lock:
            await self._interrupt("new_turn")
            student = Message("user", content, now_iso())
            self.session.remember(student)
            self.registry.touch(self.session)
            response = Response(_new_id(), student, GenerationStats(), time.monotonic())
            response.voice = voice
            response.model = self.llm.model
            if self.transcript is not None:
                # Should this process die mid-reply, the student's words are still kept.
                response.pending_seq, response.pending = self.transcript.begin(
                    TurnRecord(
                        session_id=self.session.id,
                        response_id=response.id,
                        reply_text="",
                        reply_at=student.timestamp,
                        interrupted=True,
                        student_text=content,
                        student_at=student.timestamp,
                        metrics={"unfinished": True},
                    )
                )
            self._start(self._answer(response), response)

    async def greet(self) -> None:
        greeting = self.session.tutor.greeting.strip()
        if greeting:
            response = Response(_new_id(), None, GenerationStats(), time.monotonic())
            self._start(_fixed_pieces(greeting), response)

    async def interrupt(self, reason: str = "interrupt") -> bool:
        """Stop the response in progress and say so. Returns True if there was one."""
        async with self._lock:
            return await self._interrupt(reason)

    async def _interrupt(self, reason: str) -> bool:
        task, response = self._task, self._response
        if task is None or response is None or task.done():
            return False
        if response.finishing:
            # The reply is whole and only being reported: let it finish.
            await asyncio.shield(task)
            return False
        task.cancel()
        # gather() waits for the cancelled task without swallowing our own cancellation.
        await asyncio.gather(task, return_exceptions=True)
        # A task cancelled before it ever ran cannot record itself.
        self._record(response, interrupted=True)
        await self.send({"type": "interrupted", "response_id": response.id, "reason": reason})
        return True

    async def close(self) -> None:
        """The connection is going away: stop generating, say nothing more.

        The task is cancelled and the turn recorded before the first await, so this holds
        even when the caller is itself being cancelled."""
        task, response = self._task, self._response
        if task is None or response is None or task.done():
            return
        task.cancel()
        if not response.finishing:
            self._record(response, interrupted=True)
        await asyncio.gather(task, return_exceptions=True)

    async def played(self, response_id: str, audio_ms: float) -> bool:
        """The student heard ``audio_ms`` of a response's speech: if that was not all of it,
        the history and the transcript keep only the words heard. False: no such response."""
        response = self._spoken.get(response_id)
        if response is None or response.speaker is None:
            return False
        if response.message is None:
            # Still speaking: applied when it is recorded (cut off or complete).
            response.played_ms = audio_ms
            return True
        self._apply_played(response, audio_ms)
        return True

    def _apply_played(self, response: Response, audio_ms: float) -> None:
        speaker, message = response.speaker, response.message
        assert speaker is not None and message is not None
        heard = speaker.heard_text(audio_ms)
        if heard == message.content:
            return
        message.content = heard
        message.interrupted = True
        if self.transcript is not None and response.turn is not None:
            turn = response.turn
            turn.reply_text = heard
            turn.interrupted = True
            turn.metrics = {**turn.metrics, "audio_played_ms": round(audio_ms, 1)}
            turn.revision += 1
            self.transcript.submit(dataclasses.replace(turn))

    def _start(self, pieces: AsyncIterator[str], response: Response) -> None:
        if self.speech is not None and self.session.audio_output:
            response.speaker = Speaker(self.speech, response.id, self.send)
            self._spoken[response.id] = response
            while len(self._spoken) > _RECENT_SPOKEN:
                self._spoken.popitem(last=False)
        self._response = response
        self._task = asyncio.get_running_loop().create_task(self._respond(response, pieces))

    async def _answer(self, response: Response) -> AsyncIterator[str]:
        """Find course passages (if the session has a knowledge base), then stream the reply.
        Runs inside the response task, so an interrupt stops the search too."""
        question = response.answering.content if response.answering else ""
        passages = await self._passages(question)
        if passages:
            response.sources = [{k: v for k, v in p.items() if k != "content"} for p in passages]
            await self.send(
                {"type": "sources", "response_id": response.id, "sources": response.sources}
            )
        reply = self.llm.stream(
            self._prompt(passages),
            response.stats,
            conversation=self.session.id,
            max_tokens=self.session.tutor.max_reply_tokens or None,
            tenant=self.session.tenant_id,
        )
        async with aclosing(reply) as stream:
            async for piece in stream:
                yield piece

    async def _passages(self, question: str) -> list[dict[str, Any]]:
        kb_id = self.session.kb_id
        if not kb_id or not question:
            return []
        if self.knowledge is None:
            await self._kb_unavailable("this engine has no knowledge-base search configured")
            return []
        try:
            async with asyncio.timeout(self.search_timeout):
                found = await self.knowledge.search(kb_id, question, self.top_k)
            return fit_passages(found, self.passage_tokens, self.llm.count_tokens)
        except Exception as e:  # a turn without passages beats no turn
            log.warning(
                "knowledge search failed: %s",
                type(e).__name__,
                extra={"session_id": self.session.id},
            )
            await self._kb_unavailable("course material could not be searched this turn")
            return []

    async def _kb_unavailable(self, content: str) -> None:
        response = self._response
        await self.send(
            {
                **protocol.error("kb_unavailable", content),
                "response_id": response.id if response else None,
            }
        )

    def _prompt(self, passages: list[dict[str, Any]] | None = None) -> list[ChatMessage]:
        """System prompt, then the conversation. Passages go into the newest student turn,
        and that turn keeps them (``Message.prompt``) in later prompts: everything before the
        newest turn stays byte-identical, so the prompt cache covers the whole history."""
        messages = opening(self.session.tutor, self.default_system_prompt)[:1]
        for m in self.session.history:
            if m.content:
                messages.append({"role": m.role, "content": m.prompt or m.content})
        newest = self.session.history[-1] if self.session.history else None
        if passages and newest is not None and newest.role == "user":
            material = "\n\n".join(
                f"[{i}] {p['document']}{' — ' + p['heading'] if p['heading'] else ''}\n"
                f"{p['content']}"
                for i, p in enumerate(passages, start=1)
            )
            newest.prompt = (
                "Course material that may help (cite it as [1], [2], ...):\n\n"
                f"{material}\n\nStudent: {newest.content}"
            )
            messages[-1] = {"role": "user", "content": newest.prompt}
        return messages

    async def _respond(self, response: Response, pieces: AsyncIterator[str]) -> None:
        speaker = response.speaker
        speaking = asyncio.create_task(speaker.run()) if speaker is not None else None
        try:
            async with aclosing(pieces) as stream:  # type: ignore[type-var]
                async for piece in stream:
                    if response.first_piece_at is None:
                        response.first_piece_at = time.monotonic()
                        # A question whose answer has begun is on disk (prefill took longer).
                        await self._on_disk(response.pending)
                    response.parts.append(piece)
                    await self.send(
                        {"type": "text_stream", "token": piece, "response_id": response.id}
                    )
                    if speaker is not None:
                        speaker.feed(piece)
                    self.registry.touch(self.session)
            # The text is whole: send it now; the speech may go on for a while yet, and the
            # response can still be interrupted until it has been spoken.
            written_at = now_iso()
            await self.send(
                {
                    "type": "text",
                    "content": "".join(response.parts).strip(),
                    "role": "assistant",
                    "timestamp": written_at,
                    "response_id": response.id,
                }
            )
            if speaker is not None and speaking is not None:
                speaker.finish()
                await speaking
        except asyncio.CancelledError:
            await _stop(speaking)
            self._record(response, interrupted=True)
            raise
        except ConnectionError:
            # The socket went away under us; the connection's owner is cleaning up.
            await _stop(speaking)
            self._record(response, interrupted=True)
            return
        except Exception as exc:
            await _stop(speaking)
            log.exception("generation failed", extra={"session_id": self.session.id})
            self._record(response, interrupted=True, failed=True)
            response.finishing = True
            if isinstance(exc, LLMUnavailable):  # its message is written to be shown
                failure = f"the language model is unavailable: {exc}"
            else:
                failure = f"the language model failed: {type(exc).__name__}"
            with contextlib.suppress(ConnectionError):
                await self.send(protocol.error("generation_failed", failure))
                await self.send(
                    {"type": "interrupted", "response_id": response.id, "reason": "error"}
                )
            return

        response.finishing = True
        metrics = response.metrics()
        self._record(response, interrupted=False, metrics=metrics, timestamp=written_at)
        await self._on_disk(response.durable)
        # A socket that went away after the reply was complete loses nothing: history has it.
        with contextlib.suppress(ConnectionError):
            await self.send(
                {"type": "response_done", "response_id": response.id, "metrics": metrics}
            )

    def _record(
        self,
        response: Response,
        *,
        interrupted: bool,
        metrics: dict[str, Any] | None = None,
        failed: bool = False,
        timestamp: str | None = None,
    ) -> Message:
        """Put the reply in the history and hand the turn to the transcript, once."""
        content = "".join(response.parts).strip()
        message = Message("assistant", content, timestamp or now_iso(), response.id, interrupted)
        if response.recorded:
            return message
        response.recorded = True
        metrics = metrics or response.metrics()
        if self.on_response is not None:
            outcome = "error" if failed else "interrupted" if interrupted else "done"
            self.on_response(outcome, metrics)
        # An empty interrupted reply is not worth a place in the model's history, but the
        # transcript keeps the turn: the student's words count.
        if content or not interrupted:
            self.session.remember(message)
        response.message = message
        if self.transcript is not None:
            student = response.answering
            response.turn = TurnRecord(
                session_id=self.session.id,
                response_id=response.id,
                reply_text=content,
                reply_at=message.timestamp,
                interrupted=interrupted,
                student_text=student.content if student else None,
                student_at=student.timestamp if student else None,
                metrics=metrics,
                sources=response.sources,
            )
            response.durable = self.transcript.submit(
                dataclasses.replace(response.turn), closes=response.pending_seq
            )
        if response.played_ms is not None and response.speaker is not None:
            self._apply_played(response, response.played_ms)
        return message

    async def _on_disk(self, written: asyncio.Future[bool] | None) -> None:
        """Wait until a transcript record is in the spool, so that what the student sees
        (a reply begun, ``response_done``) is never lost to a crash. Bounded: a stuck disk
        delays the reply by at most DURABLE_WAIT_SECONDS; the turn then goes from memory."""
        if written is None:
            return
        try:
            async with asyncio.timeout(DURABLE_WAIT_SECONDS):
                await asyncio.shield(written)
        except TimeoutError:
            log.error(
                "transcript spool write is late; announcing the reply before it is on disk",
                extra={"session_id": self.session.id},
            )


def opening(tutor: TutorProfile, default_system_prompt: str) -> list[ChatMessage]:
    """How every prompt of a session with this tutor begins: the system prompt, then the
    greeting as the tutor's first message (``greet`` puts it in the history so)."""
    system = tutor.system_prompt.strip() or default_system_prompt
    messages: list[ChatMessage] = [{"role": "system", "content": system}]
    if tutor.greeting.strip():
        messages.append({"role": "assistant", "content": tutor.greeting.strip()})
    return messages


async def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a response's speaking task and wait until it has really stopped sending."""
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


def _new_id() -> str:
    return "r_" + uuid.uuid4().hex[:12]


async def _fixed_pieces(text: str) -> AsyncIterator[str]:
    for piece in _WORD.findall(text):
        await asyncio.sleep(0)
        yield piece


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)
