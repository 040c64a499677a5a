"""Recorded utterances (the ``audio`` message) are decoded in a few long-lived child
processes (``decode_worker.py``), a bounded number at a time, in total and per organisation.

- per recording: the worker's CPU-time and memory limits (the kernel enforces them) and a
  wall-clock limit here; past any of them the recording fails with ``invalid_audio`` and
  the worker is replaced; nothing else in the server notices;
- at once: ``asr.decode_workers`` recordings in the whole process, and one at a time per
  organisation (per session where the engine was not told one), so one student's flood
  queues behind itself. Each connection already holds at most a few utterances waiting.

The workers stay up between recordings: a Python start with PyAV and NumPy costs a few
hundred milliseconds that a student would otherwise wait for at every recorded turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

import numpy as np

from ...config import ASRConfig
from .pcm import InvalidAudio
from .recording import RecordingTooLong

log = logging.getLogger(__name__)

WORKER = [sys.executable, "-m", "tutorsrv.engine.speech.decode_worker"]
START_SECONDS = 60.0
MAX_ANSWER_HEADER = 64 * 1024


class WorkerGone(Exception):
    """The worker ended or broke the protocol: it is replaced."""


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, memory_bytes: int) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            *WORKER,
            str(memory_bytes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=MAX_ANSWER_HEADER,
        )
        worker = cls(proc)
        try:
            async with asyncio.timeout(START_SECONDS):
                header, _ = await worker._answer()
        except BaseException:
            await worker.kill()
            raise
        if not header.get("ready"):
            await worker.kill()
            raise WorkerGone("the decoder did not start")
        return worker

    async def _answer(self) -> tuple[dict[str, Any], bytes]:
        assert self.proc.stdout is not None
        try:
            line = await self.proc.stdout.readline()
            if not line:
                raise WorkerGone("the decoder exited")
            header = json.loads(line)
            payload = await self.proc.stdout.readexactly(int(header["size"]))
        except (ValueError, KeyError, TypeError, asyncio.IncompleteReadError) as e:
            raise WorkerGone(f"the decoder broke off ({type(e).__name__})") from None
        return header, payload

    async def decode(self, job: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({**job, "size": len(data)}).encode() + b"\n")
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as e:
            raise WorkerGone(f"the decoder is gone ({type(e).__name__})") from None
        return await self._answer()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


class RecordingDecoder:
    """The decoding workers of one engine process."""

    def __init__(self, config: ASRConfig) -> None:
        self.max_seconds = config.max_utterance_seconds
        self.cpu_seconds = config.decode_cpu_seconds
        self.memory_bytes = config.decode_memory_mb * 1024 * 1024
        self._slots = asyncio.Semaphore(config.decode_workers)
        self._per_owner: dict[str, asyncio.Semaphore] = {}
        self._waiting: dict[str, int] = {}
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._closed = False

    async def start(self) -> None:
        """One worker up before the port serves: a decoder that cannot start stops start-up."""
        self._idle.append(await _Worker.start(self.memory_bytes))

    async def decode(self, data: bytes, owner: str) -> np.ndarray:
        """The recording as float32 samples at 16 kHz; InvalidAudio (RecordingTooLong for
        one over ``asr.max_utterance_seconds``) when it cannot be, for whatever reason."""
        own = self._per_owner.setdefault(owner, asyncio.Semaphore(1))
        self._waiting[owner] = self._waiting.get(owner, 0) + 1
        try:
            async with own, self._slots:
                header, payload = await self._run(data)
        finally:
            self._waiting[owner] -= 1
            if not self._waiting[owner]:
                del self._waiting[owner]
                del self._per_owner[owner]
        if "invalid" in header:
            error = RecordingTooLong if header.get("too_long") else InvalidAudio
            raise error(str(header["invalid"]))
        audio = np.frombuffer(payload, dtype=np.float32)
        if audio.size == 0:
            raise InvalidAudio("the audio contains no samples")
        return audio

    async def _run(self, data: bytes) -> tuple[dict[str, Any], bytes]:
        if self._closed:
            raise InvalidAudio("the server is shutting down")
        worker = None
        while self._idle and worker is None:
            worker = self._idle.pop()
            if worker.proc.returncode is not None:  # died while idle (e.g. the OOM killer)
                await worker.kill()
                worker = None
        if worker is None:
            worker = await _Worker.start(self.memory_bytes)
        self._busy.add(worker)
        keep = False
        limit = self.cpu_seconds * 2 + 5
        try:
            async with asyncio.timeout(limit):
                header, payload = await worker.decode(
                    {"max_seconds": self.max_seconds, "cpu_seconds": self.cpu_seconds}, data
                )
            keep = not header.get("recycle")
            return header, payload
        except TimeoutError:
            raise InvalidAudio(f"decoding the recording took longer than {limit:g} s") from None
        except WorkerGone:
            await worker.kill()
            if worker.proc.returncode == -signal.SIGPROF:
                raise InvalidAudio(
                    f"decoding the recording needs more than {self.cpu_seconds:g} s of CPU time"
                ) from None
            log.warning("a recording decoder exited with %s", worker.proc.returncode)
            raise InvalidAudio("the recording could not be decoded (the decoder failed)") from None
        finally:
            self._busy.discard(worker)
            if keep and not self._closed:
                self._idle.append(worker)
            else:
                await worker.kill()

    async def close(self) -> None:
        self._closed = True
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
