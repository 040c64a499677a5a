"""Uploaded files are parsed in limited child processes (``parse_worker.py``), a bounded
number at a time, in total and per organisation.

The limits, each with the reason it exists:
- per file: CPU seconds and memory in the child (the kernel enforces them) and a wall-clock
  limit here; a file over any of them fails with a message, and the server does not notice;
- at once: ``kb.max_parallel_parsing`` children in the whole process, so parsing never takes
  every core from conversations, and one at a time per organisation, so one organisation's
  batch of uploads queues behind itself, not in front of everyone else's;
- waiting: ``kb.max_pending_upload_bytes`` of one organisation's uploads held in memory
  until they are read; an upload past it is refused (429), so one account cannot fill the
  server's memory with files. One upload is always admitted.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..config import KBConfig
from .ingest import Section, UnreadableFile

WORKER = [sys.executable, "-m", "tutorsrv.web.parse_worker"]


class ParsingBusy(Exception):
    """This organisation already has ``kb.max_pending_upload_bytes`` of uploads waiting."""


class ParseLimits:
    """The limits and slots of one web process."""

    def __init__(self, config: KBConfig) -> None:
        self.config = config
        self._slots = asyncio.Semaphore(config.max_parallel_parsing)
        self._per_tenant: dict[str, asyncio.Semaphore] = {}
        self.pending_bytes: Counter[str] = Counter()

    def reserve(self, tenant: str, size: int) -> None:
        """Count ``size`` more bytes of ``tenant``'s uploads in progress, or refuse them."""
        held = self.pending_bytes[tenant]
        if held and held + size > self.config.max_pending_upload_bytes:
            raise ParsingBusy(tenant)
        self.pending_bytes[tenant] += size

    def release(self, tenant: str, size: int) -> None:
        self.pending_bytes[tenant] -= size
        if self.pending_bytes[tenant] <= 0:
            del self.pending_bytes[tenant]
            self._per_tenant.pop(tenant, None)

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        own = self._per_tenant.setdefault(tenant, asyncio.Semaphore(1))
        async with own, self._slots:
            yield

    async def extract(self, tenant: str, filename: str, data: bytes) -> list[Section]:
        result = await self._run(tenant, filename, data, "extract")
        return [Section(heading, list(paragraphs)) for heading, paragraphs in result["sections"]]

    async def check_pdf(self, tenant: str, data: bytes) -> int:
        return int((await self._run(tenant, "upload.pdf", data, "check"))["pages"])

    async def _run(self, tenant: str, filename: str, data: bytes, mode: str) -> dict[str, Any]:
        cpu = self.config.parse_cpu_seconds
        job = {
            "filename": filename,
            "mode": mode,
            "cpu_seconds": max(1, round(cpu)),
            "memory_bytes": self.config.parse_memory_mb * 1024 * 1024,
        }
        async with self.slot(tenant):
            proc = await asyncio.create_subprocess_exec(
                *WORKER,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                # CPU time is the child's own limit; this one also covers waiting (a child
                # that sleeps or blocks costs no CPU but still holds a slot).
                async with asyncio.timeout(cpu * 2 + 10):
                    out, _ = await proc.communicate(json.dumps(job).encode() + b"\n" + data)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                limit = cpu * 2 + 10
                raise UnreadableFile(f"reading the file took longer than {limit:g} s") from None
            finally:
                if proc.returncode is None:  # cancelled: do not leave it running
                    proc.kill()
                    await proc.wait()
        if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
            raise UnreadableFile(f"reading the file needs more than {cpu:g} s of CPU time")
        try:
            result = json.loads(out)
        except ValueError:
            raise UnreadableFile(
                f"the file could not be read (the reader exited with {proc.returncode})"
            ) from None
        if "unreadable" in result:
            raise UnreadableFile(result["unreadable"])
        if "too_big" in result:
            raise UnreadableFile(result["too_big"])
        return result
