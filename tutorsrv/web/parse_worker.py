"""One uploaded file parsed in a child process with hard limits:
``python -m tutorsrv.web.parse_worker``, driven by ``parsing.py``.

Parsers of untrusted files can take far more than the file's size suggests (stdlib
``html.parser`` is super-linear on some tag soup, a small PDF can hold thousands of pages
sharing one content stream). Here the kernel bounds that work: CPU seconds (RLIMIT_CPU, then
SIGXCPU) and address space (RLIMIT_AS, then MemoryError); the parent adds a wall-clock limit.
Whatever the file does, it costs one child process and never the server's event loop, its
GIL or the thread pool that checks passwords.

Input on stdin: one JSON line ``{"filename", "mode": "extract"|"check", "cpu_seconds",
"memory_bytes"}``, then the file's bytes to the end. Output on stdout: one JSON object,
``{"sections": [[heading, [paragraph, ...]], ...]}`` or ``{"pages": n}`` (check), or
``{"unreadable": message}``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

from .ingest import UnreadableFile, check_pdf, extract


def _limit(cpu_seconds: int, memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def main() -> int:
    job = json.loads(sys.stdin.buffer.readline())
    data = sys.stdin.buffer.read()
    _limit(int(job["cpu_seconds"]), int(job["memory_bytes"]))
    # Below the server and the model in the CPU's queue: on a small machine a parse takes a
    # core, and it should take it from idle time first, not from a student's reply.
    os.nice(10)
    result: dict[str, Any]
    try:
        if job["mode"] == "check":
            result = {"pages": check_pdf(data)}
        else:
            sections = extract(job["filename"], data)
            result = {"sections": [[s.heading, s.paragraphs] for s in sections]}
    except UnreadableFile as e:
        result = {"unreadable": str(e)}
    except MemoryError:
        result = {"too_big": "reading the file needs more memory than a file may use"}
    sys.stdout.write(json.dumps(result, ensure_ascii=False))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
