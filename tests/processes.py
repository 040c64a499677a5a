"""Real ``tutorsrv run`` processes on loopback, for tests that cross process boundaries."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

TUTORSRV = [sys.executable, "-m", "tutorsrv"]
# The child imports the same tutorsrv as the tests, whatever the current directory.
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TUTORSRV_") and k != "DATABASE_URL"
    }
    env["PYTHONPATH"] = str(ROOT)
    # Speech models cost a second or two per start and put binary frames among the JSON;
    # the tests that want them say so (TUTORSRV_ASR_ENABLED=true).
    env["TUTORSRV_ASR_ENABLED"] = "false"
    env["TUTORSRV_TTS_ENABLED"] = "false"
    # The fast model where llamacpp runs: these tests need a real model, not a right one.
    # The test of the default model sets TUTORSRV_LLM_MODEL="" (the default, Qwen 1.5B).
    env["TUTORSRV_LLM_MODEL"] = "smollm2-135m"
    env.update(extra)
    return env


class ServerProcess:
    """One server process; ``stop()`` sends SIGTERM and waits, ``kill()`` does not ask."""

    def __init__(
        self,
        role: str,
        env: dict[str, str],
        cwd: Path,
        port: int | None = None,
        python: str = sys.executable,
    ):
        self.role = role
        # Another environment's interpreter runs this checkout's tutorsrv too (tests/vllm).
        self.python = python
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cwd = cwd
        self.env = clean_env(env)
        self.proc: subprocess.Popen[str] | None = None
        self.log = cwd / f"{role}-{self.port}.log"
        # True: its own process group, which a test can signal as a terminal would.
        self.start_new_session = False

    async def start(self, wait: float = 90.0) -> ServerProcess:
        log = self.log.open("a")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - spawns; never waited on in the loop
            [self.python, "-m", "tutorsrv", "run", "--role", self.role, "--port", str(self.port)],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=self.start_new_session,
        )
        deadline = time.monotonic() + wait
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc.poll() is None, f"{self.role} exited:\n{self.output()}"
                try:
                    async with http.get(self.base + "/health") as resp:
                        if resp.status in (200, 503):
                            return self
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, f"{self.role} did not start:\n{self.output()}"
                await asyncio.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, wait: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def web_and_engine(
    tmp_path: Path,
    database_url: str,
    *,
    api_key: str,
    jwt_secret: str,
    engine_env: dict[str, str] | None = None,
    web_env: dict[str, str] | None = None,
) -> tuple[ServerProcess, ServerProcess]:
    """A split deployment on loopback, not started yet: an engine that reports to the web
    role, and a web role that places sessions on the engine, sharing one service key."""
    engine = ServerProcess("engine", {}, tmp_path)
    web = ServerProcess("web", {}, tmp_path)
    engine.env.update(
        {
            "TUTORSRV_ENGINE_API_KEY": api_key,
            "TUTORSRV_ENGINE_BACKPLANE_URL": web.base,
            "TUTORSRV_LLM_BACKEND": "scripted",
            **(engine_env or {}),
        }
    )
    web.env.update(
        {
            "TUTORSRV_ENGINE_API_KEY": api_key,
            "TUTORSRV_WEB_JWT_SECRET": jwt_secret,
            "TUTORSRV_WEB_ENGINE_URLS": engine.base,
            "DATABASE_URL": database_url,
            **(web_env or {}),
        }
    )
    return engine, web
