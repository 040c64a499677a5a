"""A child process that decodes recorded utterances, one after another, under hard limits:
``python -m tutorsrv.engine.speech.decode_worker MEMORY_BYTES``, driven by
``decode_pool.py``.

The decoder (FFmpeg through PyAV) works on untrusted bytes; ``recording.py`` bounds what it
may produce, and this process bounds what it may cost: its address space (RLIMIT_AS, then
MemoryError) for good, and each job's CPU time (a profiling timer, ITIMER_PROF, which counts
this process's CPU time to the microsecond; when it runs out the kernel's SIGPROF ends the
process, even inside the codec's C code). A decoder that goes wrong costs this process,
never the server's event loop or its GIL.

Jobs on stdin, answers on stdout, each a JSON line followed by ``size`` raw bytes:
``{"size", "max_seconds", "cpu_seconds"}`` + the recording, then
``{"size"}`` + float32 samples at 16 kHz, or ``{"size": 0, "invalid": message}`` (with
``"too_long": true`` for a recording over the length limit, and ``"recycle": true`` when
this process ran out of memory and exits: the pool starts a fresh one).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from typing import Any, BinaryIO


def _answer(out: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    out.write(json.dumps({"size": len(payload), **header}).encode() + b"\n")
    out.write(payload)
    out.flush()


def serve(memory_bytes: int, jobs: BinaryIO, out: BinaryIO) -> None:
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # A recording waits for a turn anyway; a student's reply in progress goes first.
    os.nice(5)
    # Imported under the limit: the decoder's libraries are part of what it may use.
    import av  # noqa: F401  (loaded now, not during a student's first recording)

    from .pcm import InvalidAudio
    from .recording import RecordingTooLong, decode_recording

    _answer(out, {"ready": True})
    while line := jobs.readline():
        job = json.loads(line)
        data = jobs.read(int(job["size"]))
        # No handler for SIGPROF: its default action ends the process.
        signal.setitimer(signal.ITIMER_PROF, float(job["cpu_seconds"]))
        try:
            audio = decode_recording(data, float(job["max_seconds"]))
        except RecordingTooLong as e:
            _answer(out, {"invalid": str(e), "too_long": True})
        except InvalidAudio as e:
            _answer(out, {"invalid": str(e)})
        except MemoryError:
            # A process that hit its address-space limit may be left in a poor state.
            message = "decoding the recording needs more memory than a recording may use"
            _answer(out, {"invalid": message, "recycle": True})
            return
        else:
            _answer(out, {}, audio.tobytes())
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)


if __name__ == "__main__":
    # Answers go to a copy of stdout; anything a library prints goes to stderr instead of
    # into the answers.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(int(sys.argv[1]), sys.stdin.buffer, answers)
