"""The student's voice on one connection: microphone frames (or a whole recording) in,
``speech_started`` / ``transcription`` out, and a student turn for the conversation.

Frames go through the utterance detector (Silero VAD) in a worker thread, in arrival order.
Speech start stops the tutor at once (barge-in). A finished utterance is queued for
transcription, which one task owned by this object works through in order, so the read loop
keeps listening (and can barge in again) while Whisper runs. ``close`` cancels that task.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..config import ASRConfig
from ..limits import TokenBucket
from . import protocol
from .conversation import Conversation, VoiceTurn
from .speech.asr import Transcriber
from .speech.decode_pool import RecordingDecoder
from .speech.pcm import SAMPLE_WIDTH, InvalidAudio, to_float
from .speech.recording import RecordingTooLong
from .speech.vad import SAMPLE_RATE, SileroVAD, SpeechStarted, UtteranceDetector, UtteranceEnded

log = logging.getLogger(__name__)

# Seconds of audio a client may send ahead of real time in one burst.
BURST_SECONDS = 10.0

# Utterances of one connection waiting for transcription; more are dropped with an error.
MAX_WAITING_UTTERANCES = 3
INPUT_FORMAT = {"format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "channels": 1}


class VoiceInput:
    def __init__(
        self,
        transcriber: Transcriber,
        recordings: RecordingDecoder,
        vad: SileroVAD,
        config: ASRConfig,
        conversation: Conversation,
        accepting: Callable[[], bool],
        on_transcribed: Callable[[float], None] | None = None,
    ) -> None:
        self.transcriber = transcriber
        self.recordings = recordings
        self.config = config
        self.conversation = conversation
        self.send: Callable[[dict[str, Any]], Awaitable[None]] = conversation.send
        self.accepting = accepting
        self.on_transcribed = on_transcribed
        self.detector = UtteranceDetector(
            vad,
            threshold=config.vad_threshold,
            start_ms=config.speech_start_ms,
            end_silence_ms=config.end_silence_ms,
            pad_ms=config.speech_pad_ms,
            max_seconds=config.max_utterance_seconds,
        )
        # Seconds of audio, refilled at max_realtime_factor per second.
        self._budget = TokenBucket(config.max_realtime_factor, BURST_SECONDS)
        self._utterances: asyncio.Queue[tuple[np.ndarray, float]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        # Speech was heard since the last `audio_end` (the VAD may have ended the utterance
        # on a pause before the push-to-talk button was released: that release is no error).
        self._heard_since_release = False

    async def pcm(self, data: bytes) -> None:
        """One binary frame of the microphone stream."""
        try:
            samples = to_float(data)
        except InvalidAudio as e:
            await self.send(protocol.error("invalid_audio", str(e)))
            return
        seconds = len(data) / SAMPLE_WIDTH / SAMPLE_RATE
        if self._budget.take(amount=min(seconds, BURST_SECONDS)) > 0:
            await self.send(
                protocol.error(
                    "rate_limited",
                    "audio is arriving much faster than real time; this frame was dropped",
                )
            )
            return
        events = await asyncio.to_thread(self.detector.feed, samples)
        for event in events:
            if isinstance(event, SpeechStarted):
                await self._speech_started()
            else:
                await self._utterance_ended(event)

    async def end(self) -> None:
        """``audio_end``: push-to-talk released; the utterance ends now."""
        ended = await asyncio.to_thread(self.detector.end_now)
        heard, self._heard_since_release = self._heard_since_release, False
        if ended is not None:
            await self._utterance_ended(ended)
        elif not heard:
            await self.send(protocol.error("no_speech", "no speech was heard before audio_end"))

    async def recording(self, data: Any) -> None:
        """``audio``: a whole recorded utterance, base64 in any format FFmpeg decodes."""
        if not isinstance(data, str) or not data:
            await self.send(protocol.error("invalid_field", "'data' must be base64 audio"))
            return
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            await self.send(protocol.error("invalid_audio", "'data' is not valid base64"))
            return
        try:
            session = self.conversation.session
            audio = await self.recordings.decode(raw, session.tenant_id or "session:" + session.id)
        except RecordingTooLong as e:
            await self.send(protocol.error("utterance_too_long", str(e)))
            return
        except InvalidAudio as e:
            await self.send(protocol.error("invalid_audio", str(e)))
            return
        await self.conversation.interrupt(reason="barge_in")
        await self._queue(audio)

    async def _speech_started(self) -> None:
        self._heard_since_release = True
        await self.send({"type": "speech_started"})
        await self.conversation.interrupt(reason="barge_in")

    async def _utterance_ended(self, ended: UtteranceEnded) -> None:
        if ended.reason == "too_long":
            await self.send(
                protocol.error(
                    "utterance_too_long",
                    f"an utterance is cut after {self.config.max_utterance_seconds:g} s; "
                    "what came so far is answered",
                )
            )
        await self._queue(ended.audio)

    async def _queue(self, audio: np.ndarray) -> None:
        """Hand an utterance to this connection's transcription task, unless
        MAX_WAITING_UTTERANCES already wait (each holds up to max_utterance_seconds of audio,
        and a flood of them once grew memory by 290 MiB in 20 s): then it is dropped."""
        if self._utterances.qsize() >= MAX_WAITING_UTTERANCES:
            await self.send(
                protocol.error(
                    "rate_limited",
                    f"{MAX_WAITING_UTTERANCES} utterances are already waiting to be "
                    "transcribed; this one was dropped",
                )
            )
            return
        self._utterances.put_nowait((audio, time.monotonic()))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._transcribe_queued(), name="transcription")

    async def _transcribe_queued(self) -> None:
        while not self._utterances.empty():
            audio, ended_at = self._utterances.get_nowait()
            try:
                transcript = await self.transcriber.transcribe(audio)
            except Exception as e:
                log.exception(
                    "transcription failed", extra={"session_id": self.conversation.session.id}
                )
                await self.send(
                    protocol.error(
                        "transcription_failed",
                        f"the speech could not be transcribed ({type(e).__name__})",
                    )
                )
                continue
            asr_ms = round(transcript.seconds * 1000.0, 1)
            if self.on_transcribed is not None:
                self.on_transcribed(transcript.seconds)
            if not transcript.text:
                await self.send(protocol.error("no_speech", "no words were recognised"))
                continue
            await self.send(
                {
                    "type": "transcription",
                    "content": transcript.text,
                    "final": True,
                    "asr_ms": asr_ms,
                }
            )
            if not self.accepting():
                await self.send(
                    protocol.error("shutting_down", "the server is shutting down; no new turns")
                )
                continue
            self.conversation.registry.touch(self.conversation.session)
            await self.conversation.student_text(transcript.text, voice=VoiceTurn(ended_at, asr_ms))

    async def close(self) -> None:
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(worker, return_exceptions=True)
