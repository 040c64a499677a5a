"""Whole recordings (the `audio` message) are bounded before and while they decode: a file
that claims or decodes to more than the limit costs almost nothing (decompression bombs)."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest
from faster_whisper.audio import decode_audio

from tutorsrv.engine.speech.pcm import InvalidAudio
from tutorsrv.engine.speech.recording import RecordingTooLong, decode_recording

from .speech import silent_flac

FIXTURE = Path(__file__).parent / "fixtures" / "what_is_seven_times_eight.wav"
MiB = 2**20


def peak_bytes(data: bytes, limit: float) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        decode_recording(data, limit)
        failure = None
    except InvalidAudio as e:
        failure = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return failure, peak


def test_a_real_recording_decodes_to_16_khz_mono() -> None:
    audio = decode_recording(FIXTURE.read_bytes(), 30)
    reference = decode_audio(str(FIXTURE), sampling_rate=16000)
    assert audio.dtype.name == "float32" and audio.ndim == 1
    assert abs(len(audio) - len(reference)) <= 160  # within 10 ms of faster-whisper's own


def test_a_low_declared_sample_rate_is_refused_before_decoding() -> None:
    bomb = silent_flac(600, 100)  # 100 Hz: resampling to 16 kHz would multiply it 160 times
    assert len(bomb) < 20_000
    failure, peak = peak_bytes(bomb, 30)
    assert isinstance(failure, InvalidAudio) and "100 Hz is not supported" in str(failure)
    assert peak < 1 * MiB


def test_a_declared_length_over_the_limit_is_refused_before_decoding() -> None:
    failure, peak = peak_bytes(silent_flac(600, 16000), 30)
    assert isinstance(failure, RecordingTooLong) and "declares 600" in str(failure)
    assert peak < 1 * MiB


def test_an_undeclared_length_stops_decoding_at_the_limit() -> None:
    bomb = silent_flac(1200, 16000, declare_length=False)  # 20 minutes, ~220 KB
    full = decode_audio(io.BytesIO(bomb), sampling_rate=16000)
    assert len(full) >= 1200 * 16000  # what decoding it whole produced (the old path)
    failure, peak = peak_bytes(bomb, 30)
    assert isinstance(failure, RecordingTooLong) and "at least 30" in str(failure)
    # About one limit's worth of float32 samples (30 s: 1.9 MB), not 20 minutes' (77 MB).
    assert peak < 8 * MiB


def test_just_under_the_limit_is_decoded_whole() -> None:
    audio = decode_recording(silent_flac(25, 16000, declare_length=False), 30)
    assert 24.9 * 16000 <= len(audio) <= 25.3 * 16000


@pytest.mark.parametrize("data", [b"", b"RIFF\x00\x00", bytes(range(256)) * 40])
def test_undecodable_data_is_invalid_audio(data: bytes) -> None:
    with pytest.raises(InvalidAudio):
        decode_recording(data, 30)
