"""PCM s16le mono: the wire format of microphone input and of tutor speech."""

from __future__ import annotations

import numpy as np

SAMPLE_WIDTH = 2  # bytes per sample (s16le)
FORMAT = "pcm_s16le"


class InvalidAudio(ValueError):
    """Audio that cannot be taken as what it claims to be."""


def to_float(pcm: bytes) -> np.ndarray:
    """s16le bytes to float32 in [-1, 1)."""
    if len(pcm) % SAMPLE_WIDTH:
        raise InvalidAudio(
            f"PCM s16le audio has an even number of bytes; this frame has {len(pcm)}"
        )
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def to_pcm(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] to s16le bytes."""
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def duration_ms(pcm_bytes: int, sample_rate: int) -> float:
    return pcm_bytes / SAMPLE_WIDTH / sample_rate * 1000.0


def resample(samples: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """Linear-interpolation resampling: enough for speech going into Whisper or Silero,
    which both low-pass far below the new Nyquist frequency anyway."""
    if rate == to_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    count = round(len(samples) * to_rate / rate)
    positions = np.arange(count, dtype=np.float64) * (rate / to_rate)
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


def frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """Cut ``pcm`` into frames of at most ``frame_bytes`` (an even number)."""
    size = max(SAMPLE_WIDTH, frame_bytes - frame_bytes % SAMPLE_WIDTH)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]
