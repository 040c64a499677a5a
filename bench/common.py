"""Small helpers shared by the benchmark scripts (run them as `python bench/<name>.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (benchmarks state their machine)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM if the benchmark itself is killed (Linux), so no
    server outlives a benchmark that died."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Server:
    """An engine started by a benchmark (``launch_engine``), and what it measures of it."""

    proc: subprocess.Popen[bytes]
    port: int
    api_key: str
    log_path: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def rss_mib(self) -> float:
        return self.rss() / 2**20

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def alive(self) -> bool:
        return self.proc.poll() is None


def launch_engine(
    workdir: Path,
    port: int,
    api_key: str,
    settings: dict[str, str],
    log_level: str = "warning",
    role: str = "engine",
    python: str = sys.executable,
) -> Server:
    """``tutorsrv run --role engine`` (or ``role``) on loopback with a clean TUTORSRV_*
    environment plus ``settings``, by ``python`` (another venv's, for vLLM); its output goes
    to ``workdir/server.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUTORSRV_")}
    env.update(
        {
            "TUTORSRV_ENGINE_API_KEY": api_key,
            "TUTORSRV_SERVER_HOST": "127.0.0.1",
            "TUTORSRV_SERVER_PORT": str(port),
            "TUTORSRV_SERVER_LOG_LEVEL": log_level,
            "TUTORSRV_SERVER_STATE_DIR": str(workdir / "state"),
            "TUTORSRV_SERVER_SHUTDOWN_TIMEOUT_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
    )
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [python, "-m", "tutorsrv", "run", "--role", role],
            cwd=workdir if role != "engine" else ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    return Server(proc, port, api_key, log_path)


def stop_server(server: Server | None) -> int | None:
    """Terminate, wait, then kill. Returns the exit status (None if it never started)."""
    if server is None:
        return None
    proc = server.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


async def wait_healthy(
    http: aiohttp.ClientSession, server: Server, within: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"the server exited (status {server.proc.returncode})")
        try:
            async with http.get(
                server.base + "/health", timeout=aiohttp.ClientTimeout(total=2)
            ) as r:
                if r.status == 200:
                    return dict(await r.json())
                last = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            last = e
        await asyncio.sleep(0.1)
    raise TimeoutError(f"/health did not answer 200 within {within:.0f}s (last: {last!r})")
