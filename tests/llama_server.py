"""llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) with the packaged GGUF,
started on loopback for tests that need a real model server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from tutorsrv.engine.llm.packaged import resolve

from .processes import free_port


@dataclass
class ModelServer:
    url: str  # base URL, without /v1
    proc: subprocess.Popen[bytes]


@asynccontextmanager
async def llama_server(*extra: str) -> AsyncIterator[ModelServer]:
    """Yields the running server; stops it afterwards. Start-up fails at once, with the
    server's own output, if the process dies."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(  # noqa: ASYNC220 - spawns only
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(resolve("smollm2-135m")),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    output = log.read().decode("utf-8", "replace")[-4000:]
                    raise AssertionError(f"llama_cpp.server exited {proc.returncode}:\n{output}")
                try:
                    async with http.get(url + "/v1/models") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "llama_cpp.server did not start"
                await asyncio.sleep(0.2)
        yield ModelServer(url, proc)
    finally:
        log.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
