"""A whole recorded utterance (the ``audio`` message) to 16 kHz mono samples, bounded first.

A compressed file says little about what it decodes to: 70 KB of FLAC silence with a low
declared sample rate once decoded and resampled to 1.7 GiB before any length was checked. So
the limits come before the work and during it, never after:

- the declared sample rate must be one speech is recorded at (8-192 kHz), in the stream and
  in every decoded frame (resampling 100 Hz up to 16 kHz multiplies the data 160 times);
- a declared duration over the limit is refused before any decoding;
- decoding goes frame by frame and stops as soon as the audio decoded so far is over the
  limit, so memory stays at about one limit's worth of samples whatever the file claims.
"""

from __future__ import annotations

import io

import numpy as np

from .pcm import InvalidAudio
from .vad import SAMPLE_RATE

MIN_RATE = 8_000
MAX_RATE = 192_000


class RecordingTooLong(InvalidAudio):
    """Longer than ``asr.max_utterance_seconds`` (the message says by how much)."""


def _too_long(seconds: float, limit: float, *, declared: bool) -> RecordingTooLong:
    what = "declares" if declared else "is at least"
    return RecordingTooLong(f"the recording {what} {seconds:.1f} s; the limit is {limit:g} s")


def _check_rate(rate: int | None) -> None:
    if not rate or not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidAudio(
            f"a sample rate of {rate} Hz is not supported "
            f"({MIN_RATE // 1000}-{MAX_RATE // 1000} kHz)"
        )


def decode_recording(data: bytes, max_seconds: float) -> np.ndarray:
    """Any container/codec FFmpeg knows (WAV, WebM/Opus, Ogg, FLAC, MP3 ...) to float32
    samples at 16 kHz mono. Blocking, and run in a limited child process in the server
    (``decode_pool.py``)."""
    import av

    chunks: list[np.ndarray] = []
    seconds = 0.0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise InvalidAudio("the recording has no audio stream")
            _check_rate(stream.rate)
            declared = 0.0
            if stream.duration is not None and stream.time_base is not None:
                declared = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                declared = container.duration / av.time_base
            if declared > max_seconds:
                raise _too_long(declared, max_seconds, declared=True)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                _check_rate(frame.sample_rate)
                seconds += frame.samples / frame.sample_rate
                if seconds > max_seconds:
                    raise _too_long(seconds, max_seconds, declared=False)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except InvalidAudio:
        raise
    except Exception as e:  # PyAV raises many kinds for undecodable input
        raise InvalidAudio(f"the audio could not be decoded ({type(e).__name__})") from None
    if not chunks:
        raise InvalidAudio("the audio contains no samples")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    if audio.size == 0:
        raise InvalidAudio("the audio contains no samples")
    return audio
