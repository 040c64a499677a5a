"""llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) with the packaged GGUF,
started on loopback for tests that need a real model server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from tutorsrv.engine.llm.llamacpp import packaged_model_path

from .processes import free_port


@asynccontextmanager
async def llama_server(*extra: str) -> AsyncIterator[str]:
    """Yields the server's base URL (without /v1); stops the server afterwards."""
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - spawns only
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(packaged_model_path()),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None, "llama_cpp.server exited"
                try:
                    async with http.get(url + "/v1/models") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "llama_cpp.server did not start"
                await asyncio.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
