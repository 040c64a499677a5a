"""Voice activity: where a student's utterance starts and ends in a stream of samples.

The model is the Silero VAD that ships inside faster-whisper (an ONNX file), run one 32 ms
window at a time with its recurrent state carried over, so a live stream costs about 0.1 ms
of CPU per window. ``UtteranceDetector`` turns its probabilities into events: speech started
(the tutor must stop talking) and utterance ended (transcribe it).
"""

from __future__ import annotations

import collections
import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # samples: 32 ms, the window the 16 kHz Silero model takes
CONTEXT = 64  # samples of the previous window the model sees in front of each window
WINDOW_MS = WINDOW * 1000 / SAMPLE_RATE


def default_model_path() -> str:
    from faster_whisper.utils import get_assets_path

    return os.path.join(get_assets_path(), "silero_vad_v6.onnx")


class SileroVAD:
    """The model, shared by every connection; each stream keeps its own ``VADState``."""

    def __init__(self, path: str | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # One window is tiny: threads would cost more than they save.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            path or default_model_path(), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probability(self, state: VADState, window: np.ndarray) -> float:
        """Speech probability of one ``WINDOW``-sample window; advances ``state``."""
        model_input = np.concatenate([state.context, window])[np.newaxis, :]
        out, state.h, state.c = self._session.run(
            None, {"input": model_input, "h": state.h, "c": state.c}
        )
        state.context = window[-CONTEXT:]
        return float(np.asarray(out).ravel()[0])


@dataclass
class VADState:
    h: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))


@dataclass
class SpeechStarted:
    pass


@dataclass
class UtteranceEnded:
    audio: np.ndarray  # float32, 16 kHz
    reason: str  # "silence", "audio_end" or "too_long"

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


VADEvent = SpeechStarted | UtteranceEnded


class UtteranceDetector:
    """One microphone stream's turn detection. Not thread-safe: one caller at a time (the
    connection's read loop, which hands each ``feed`` to a worker thread and awaits it)."""

    def __init__(
        self,
        vad: SileroVAD,
        *,
        threshold: float = 0.5,
        start_ms: float = 150.0,
        end_silence_ms: float = 500.0,
        pad_ms: float = 300.0,
        max_seconds: float = 30.0,
    ) -> None:
        self.vad = vad
        self.threshold = threshold
        # Hysteresis: once speaking, only clearly lower probabilities count as silence.
        self.silence_threshold = max(0.0, threshold - 0.15)
        self.start_windows = max(1, math.ceil(start_ms / WINDOW_MS))
        self.end_windows = max(1, math.ceil(end_silence_ms / WINDOW_MS))
        self.pad_windows = max(0, math.ceil(pad_ms / WINDOW_MS))
        self.max_windows = max(1, int(max_seconds * 1000 / WINDOW_MS))
        self._state = VADState()
        self._lock = threading.Lock()
        self._leftover = np.zeros(0, np.float32)
        # Idle: the latest windows, so an utterance keeps its first syllable and some lead-in.
        self._recent: collections.deque[np.ndarray] = collections.deque(
            maxlen=self.pad_windows + self.start_windows
        )
        self._voiced_run = 0
        self._utterance: list[np.ndarray] | None = None  # not None while speaking
        self._silent_run = 0

    @property
    def speaking(self) -> bool:
        return self._utterance is not None

    def feed(self, samples: np.ndarray) -> list[VADEvent]:
        """Add 16 kHz float samples; returns what they completed. Blocking (runs the model)."""
        with self._lock:
            events: list[VADEvent] = []
            data = np.concatenate([self._leftover, samples]) if len(self._leftover) else samples
            whole = len(data) - len(data) % WINDOW
            self._leftover = data[whole:].copy()
            for start in range(0, whole, WINDOW):
                window = data[start : start + WINDOW].astype(np.float32, copy=False)
                event = self._window(window, self.vad.probability(self._state, window))
                if event is not None:
                    events.append(event)
            return events

    def end_now(self) -> UtteranceEnded | None:
        """Push-to-talk release: the utterance in progress ends here (None: no speech)."""
        with self._lock:
            if self._utterance is None:
                self._recent.clear()
                self._voiced_run = 0
                return None
            return self._finish("audio_end")

    def _window(self, window: np.ndarray, probability: float) -> VADEvent | None:
        if self._utterance is None:
            self._recent.append(window)
            self._voiced_run = self._voiced_run + 1 if probability >= self.threshold else 0
            if self._voiced_run >= self.start_windows:
                self._utterance = list(self._recent)
                self._recent.clear()
                self._voiced_run = 0
                self._silent_run = 0
                return SpeechStarted()
            return None
        self._utterance.append(window)
        self._silent_run = self._silent_run + 1 if probability < self.silence_threshold else 0
        if self._silent_run >= self.end_windows:
            return self._finish("silence")
        if len(self._utterance) >= self.max_windows:
            return self._finish("too_long")
        return None

    def _finish(self, reason: str) -> UtteranceEnded:
        assert self._utterance is not None
        windows = self._utterance
        # Keep some of the closing silence (a clipped last word transcribes worse), not all.
        surplus = self._silent_run - self.pad_windows
        if surplus > 0:
            windows = windows[:-surplus]
        self._utterance = None
        self._silent_run = 0
        return UtteranceEnded(np.concatenate(windows), reason)
