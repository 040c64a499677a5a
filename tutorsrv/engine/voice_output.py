"""Tutor speech for one response: the reply's text in, ``audio_start`` / binary PCM frames /
``audio_end`` out, while the language model is still writing.

Text arrives token by token (``feed``); each completed clause is queued, and one task
synthesises the queue in order and sends the audio. Cancelling that task (the response's
owner does, on any interruption) drops the queue and whatever is being synthesised: no frame
of the response can follow its ``interrupted``, because the owner sends that only after this
task has ended.

Each clause's place on the audio timeline is kept, so ``played`` ("the student heard this
many ms") can be turned back into the words that were heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import protocol
from .speech.clauses import ClauseSplitter, speakable
from .speech.pcm import FORMAT, SAMPLE_WIDTH, duration_ms, frames
from .speech.tts import Synthesizer, Voice

log = logging.getLogger(__name__)

SendJSON = Callable[[dict[str, Any]], Awaitable[None]]
SendBytes = Callable[[bytes], Awaitable[None]]


@dataclass
class SpokenClause:
    text: str  # as written (what the transcript keeps)
    start_ms: float  # where its audio begins in the response's audio
    end_ms: float


@dataclass
class SpeechSettings:
    """What every response of one connection speaks with."""

    synthesizer: Synthesizer
    voice: Voice
    send_bytes: SendBytes
    frame_ms: int = 100
    clause_min_chars: int = 40


class Speaker:
    def __init__(self, settings: SpeechSettings, response_id: str, send: SendJSON) -> None:
        self.settings = settings
        self.response_id = response_id
        self.send = send
        self._splitter = ClauseSplitter(soft_min_chars=settings.clause_min_chars)
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.clauses: list[SpokenClause] = []
        self.audio_ms = 0.0
        self.first_audio_at: float | None = None  # monotonic, when the first frame went out
        self._started = False
        self._failed = False

    @property
    def sample_rate(self) -> int:
        return self.settings.voice.sample_rate

    def feed(self, text: str) -> None:
        for clause in self._splitter.feed(text):
            self._queue.put_nowait(clause)

    def finish(self) -> None:
        """The reply is complete: speak what is left, then end the audio."""
        for clause in self._splitter.flush():
            self._queue.put_nowait(clause)
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """The speaking task: returns once the last frame and ``audio_end`` are sent."""
        while (clause := await self._queue.get()) is not None:
            words = speakable(clause)
            pcm = await self._synthesize(words) if words and not self._failed else b""
            start = self.audio_ms
            if pcm:
                await self._send_audio(pcm)
            self.clauses.append(SpokenClause(clause, start, self.audio_ms))
        if self._started:
            await self.send(
                {
                    "type": "audio_end",
                    "response_id": self.response_id,
                    "audio_ms": round(self.audio_ms, 1),
                }
            )

    async def _synthesize(self, words: str) -> bytes:
        try:
            return await self.settings.synthesizer.synthesize(self.settings.voice, words)
        except Exception as e:  # speech fails alone: the text reply goes on
            log.exception("speech synthesis failed")
            self._failed = True
            with contextlib.suppress(ConnectionError):
                await self.send(
                    {
                        **protocol.error(
                            "speech_failed",
                            f"the reply could not be spoken ({type(e).__name__}); "
                            "it continues as text",
                        ),
                        "response_id": self.response_id,
                    }
                )
            return b""

    async def _send_audio(self, pcm: bytes) -> None:
        if not self._started:
            self._started = True
            await self.send(
                {
                    "type": "audio_start",
                    "response_id": self.response_id,
                    "format": FORMAT,
                    "sample_rate": self.sample_rate,
                    "channels": 1,
                }
            )
        frame_bytes = self.sample_rate * SAMPLE_WIDTH * self.settings.frame_ms // 1000
        for frame in frames(pcm, frame_bytes):
            await self.settings.send_bytes(frame)
            if self.first_audio_at is None:
                self.first_audio_at = time.monotonic()
            self.audio_ms += duration_ms(len(frame), self.sample_rate)

    def heard_text(self, played_ms: float) -> str:
        """The reply as far as ``played_ms`` of its audio was heard (clauses never spoken,
        because the response was cut off first, were not heard either)."""
        heard: list[str] = []
        for clause in self.clauses:
            if clause.end_ms <= played_ms:
                heard.append(clause.text)
            elif clause.start_ms < played_ms:
                # Part of a clause: its words in proportion to the part of its audio played.
                words = clause.text.split()
                fraction = (played_ms - clause.start_ms) / (clause.end_ms - clause.start_ms)
                heard.append(" ".join(words[: int(len(words) * fraction)]))
                break
            else:
                break
        return "".join(heard).strip()
