"""Recordings are decoded in limited child processes (engine/speech/decode_pool.py): the
answer is the in-process decode's, a recording over its CPU allowance ends its worker and
fails on its own, a dead worker is replaced, and the pool's concurrency is bounded in total
and per organisation."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import av
import numpy as np
import pytest

from tutorsrv.config import ASRConfig
from tutorsrv.engine.speech.decode_pool import RecordingDecoder
from tutorsrv.engine.speech.pcm import InvalidAudio
from tutorsrv.engine.speech.recording import RecordingTooLong, decode_recording

from .speech import silent_flac

FIXTURE = Path(__file__).parent / "fixtures" / "what_is_seven_times_eight.wav"


def heavy_flac(seconds: float = 299, rate: int = 192_000) -> bytes:
    """~60 KB of stereo FLAC silence at 192 kHz, under a 300 s limit: about a second of CPU
    to decode and resample here, a hundred times a normal recording's."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="stereo")
        stream.format = "s16"
        zeros = np.zeros((1, 2 * 4096), dtype=np.int16)
        for pts in range(0, int(seconds * rate), 4096):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="stereo")
            frame.sample_rate, frame.pts = rate, pts
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@pytest.fixture
async def decoder() -> RecordingDecoder:
    pool = RecordingDecoder(ASRConfig())
    await pool.start()
    yield pool
    await pool.close()


def pids(pool: RecordingDecoder) -> set[int]:
    return {w.proc.pid for w in [*pool._idle, *pool._busy]}


async def test_the_pool_decodes_as_the_process_would(decoder: RecordingDecoder) -> None:
    data = FIXTURE.read_bytes()
    audio = await decoder.decode(data, "school-a")
    assert np.array_equal(audio, decode_recording(data, 30))
    (worker,) = pids(decoder)
    # The worker stays for the next recording, and carries its memory limit.
    assert (await decoder.decode(data, "school-a")).size == audio.size
    assert pids(decoder) == {worker}
    limits = await asyncio.to_thread(Path(f"/proc/{worker}/limits").read_text)
    address_space = next(line for line in limits.splitlines() if "address space" in line)
    assert str(1024 * 1024 * 1024) in address_space


async def test_bad_recordings_fail_alone_and_the_worker_goes_on(
    decoder: RecordingDecoder,
) -> None:
    (worker,) = pids(decoder)
    with pytest.raises(RecordingTooLong, match="declares 600"):
        await decoder.decode(silent_flac(600, 16000), "school-a")
    with pytest.raises(InvalidAudio, match="could not be decoded"):
        await decoder.decode(bytes(range(256)) * 40, "school-a")
    with pytest.raises(InvalidAudio, match="100 Hz is not supported"):
        await decoder.decode(silent_flac(10, 100), "school-a")
    assert pids(decoder) == {worker}
    assert (await decoder.decode(FIXTURE.read_bytes(), "school-a")).size > 0


async def test_a_recording_over_its_cpu_allowance_ends_its_worker_only() -> None:
    pool = RecordingDecoder(ASRConfig(max_utterance_seconds=300, decode_cpu_seconds=0.2))
    await pool.start()
    try:
        heavy = heavy_flac()
        assert len(heavy) < 100_000
        (first,) = pids(pool)
        with pytest.raises(InvalidAudio, match=r"more than 0.2 s of CPU time"):
            await pool.decode(heavy, "school-a")
        assert first not in pids(pool)
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        # The next recording gets a fresh worker.
        assert (await pool.decode(FIXTURE.read_bytes(), "school-b")).size > 0
        assert len(pids(pool)) == 1
    finally:
        await pool.close()


async def test_a_worker_that_died_while_idle_is_replaced(decoder: RecordingDecoder) -> None:
    (worker,) = pids(decoder)
    os.kill(worker, signal.SIGKILL)
    await asyncio.sleep(0.2)  # let the loop reap it
    assert (await decoder.decode(FIXTURE.read_bytes(), "school-a")).size > 0
    assert worker not in pids(decoder) and len(pids(decoder)) == 1


async def test_a_worker_killed_mid_recording_fails_that_recording() -> None:
    pool = RecordingDecoder(ASRConfig(max_utterance_seconds=300))
    await pool.start()
    try:
        (worker,) = pids(pool)
        job = asyncio.create_task(pool.decode(heavy_flac(), "school-a"))
        await asyncio.sleep(0.3)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(InvalidAudio, match="decoder failed"):
            await job
        assert (await pool.decode(FIXTURE.read_bytes(), "school-a")).size > 0
    finally:
        await pool.close()


async def most_at_once(pool: RecordingDecoder, owners: list[str], data: bytes) -> int:
    """Decode ``data`` once per entry of ``owners``, all at once; the most workers busy."""
    seen = [0]
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(len(pool._busy))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(pool.decode(data, owner) for owner in owners))
    finally:
        done.set()
        await watcher
    assert all(r.size > 0 for r in results)
    return max(seen)


async def test_workers_are_bounded_in_total_and_per_organisation() -> None:
    pool = RecordingDecoder(ASRConfig(max_utterance_seconds=300, decode_workers=3))
    await pool.start()
    try:
        heavy = heavy_flac(60)
        # School A sends three at once, school B one: A's queue behind each other.
        assert await most_at_once(pool, ["school-a"] * 3 + ["school-b"], heavy) == 2
        # Five schools at once: three workers at most.
        assert await most_at_once(pool, [f"school-{n}" for n in range(5)], heavy) == 3
        assert len(pids(pool)) == 3
        assert not pool._waiting and not pool._per_owner  # nothing left behind
    finally:
        await pool.close()
    assert not pids(pool)
