"""The command line, run as a real process: start-up errors and a real serve/stop cycle."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import API_KEY, AUTH
from .processes import TUTORSRV, clean_env, free_port


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    full_env = clean_env(env)
    return subprocess.run(
        TUTORSRV + args, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_engine_role_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    result = run_cli(["run", "--role", "engine"], {}, tmp_path)
    assert result.returncode == 2
    assert "engine.api_key" in result.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "engine.api_key"),
        ({"TUTORSRV_ENGINE_API_KEY": API_KEY}, "web.engine_urls"),
        (
            {
                "TUTORSRV_ENGINE_API_KEY": API_KEY,
                "TUTORSRV_WEB_ENGINE_URLS": "http://127.0.0.1:9",
            },
            "web.jwt_secret",
        ),
    ],
)
def test_web_role_refuses_to_start_without_its_settings(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    result = run_cli(["run", "--role", "web"], env, tmp_path)
    assert result.returncode == 2
    assert named in result.stderr


def test_bad_configuration_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[engine]\nmax_sesions = 5\n")
    result = run_cli(["run", "--role", "all", "--config", "c.toml"], {}, tmp_path)
    assert result.returncode == 2
    assert "max_sesions" in result.stderr
    result = run_cli(["run"], {"TUTORSRV_ENGINE_MAX_SESSIONS": "lots"}, tmp_path)
    assert result.returncode == 2
    assert "TUTORSRV_ENGINE_MAX_SESSIONS" in result.stderr


def test_missing_model_stops_start_up_with_a_clear_error(tmp_path: Path, database_url: str) -> None:
    env = {"TUTORSRV_LLM_MODEL_PATH": str(tmp_path / "none.gguf"), "DATABASE_URL": database_url}
    result = run_cli(["run", "--role", "all", "--port", str(free_port())], env, tmp_path)
    assert result.returncode == 3
    assert "no such file" in result.stderr


def test_a_corrupt_model_stops_start_up_before_the_port_opens(tmp_path: Path) -> None:
    """Exit 3 naming the model, and at no moment did the port accept a connection: a
    client (or a load balancer's health check) is refused, not left waiting."""
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4096))
    port = free_port()
    proc = subprocess.Popen(
        [*TUTORSRV, "run", "--role", "engine", "--port", str(port)],
        env=clean_env({"TUTORSRV_ENGINE_API_KEY": API_KEY, "TUTORSRV_LLM_MODEL_PATH": str(bad)}),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    accepted = 0
    try:
        while proc.poll() is None:
            with socket.socket() as probe:
                probe.settimeout(1)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    accepted += 1
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3
    assert "cannot start" in stderr and "corrupt.gguf" in stderr
    assert accepted == 0


@pytest.mark.parametrize("role", ["engine", "all"])
async def test_role_serves_and_stops_on_sigterm(
    tmp_path: Path, role: str, database_url: str
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUTORSRV_")}
    env.update({"TUTORSRV_LLM_BACKEND": "scripted", "DATABASE_URL": database_url})
    if role == "engine":
        env["TUTORSRV_ENGINE_API_KEY"] = API_KEY
    # Popen only spawns; the test never waits on the child while the loop must run.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [*TUTORSRV, "run", "--role", role, "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stderr.read()
                try:
                    async with http.get(base + "/health") as resp:
                        health = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, "server did not start"
                    await asyncio.sleep(0.1)
            assert health["role"] == role
            # The defaults load the real speech models before serving.
            assert health["asr"]["ready"] and health["tts"]["voices"] == ["en_US-joe-medium"]

            key = API_KEY
            key_file = tmp_path / ".tutorsrv" / "engine-api-key"
            if role == "all":
                assert key_file.stat().st_mode & 0o777 == 0o600
                key = key_file.read_text().strip()
                async with http.get(base + "/") as resp:
                    assert resp.status == 200
                    assert "tutorsrv is running" in await resp.text()
                async with http.get(base + "/test") as resp:
                    assert "Engine test page" in await resp.text()
                async with http.get(base + "/static/test.js") as resp:
                    assert resp.status == 200
            headers = {**AUTH, "Authorization": f"Bearer {key}"}
            body = {"tutor_id": "t", "student_id": "s"}
            async with http.post(base + "/v1/sessions", json=body, headers=headers) as resp:
                assert resp.status == 201
                session = await resp.json()
            async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                hello = await ws.receive_json(timeout=10)
                assert hello["type"] == "session"
                assert hello["audio"]["input"]["sample_rate"] == 16000
                await ws.send_json({"type": "text", "content": "hi"})
                audio_bytes = 0
                while True:
                    frame = await ws.receive(timeout=10)
                    if frame.type == aiohttp.WSMsgType.BINARY:
                        audio_bytes += len(frame.data)
                    elif frame.json()["type"] == "response_done":
                        break
                assert audio_bytes > 0  # the reply was spoken
                proc.send_signal(signal.SIGTERM)
                closing = await ws.receive(timeout=20)
                while closing.type == aiohttp.WSMsgType.TEXT:
                    assert closing.json()["code"] == "shutting_down"
                    closing = await ws.receive(timeout=20)
                assert ws.close_code == 1001
        assert proc.wait(timeout=30) == 0
        if role == "all":
            assert not key_file.exists()  # the key lives only as long as the server
        stderr = proc.stderr.read()
        assert key not in stderr and session["engine_token"] not in stderr  # no secrets logged
        assert f"session_id={session['session_id']}" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_fails_fast_and_leaves_the_running_key_alone(tmp_path: Path) -> None:
    key_file = tmp_path / ".tutorsrv" / "engine-api-key"
    key_file.parent.mkdir()
    key_file.write_text("the-running-servers-key\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(["run", "--role", "all", "--port", str(port)], {}, tmp_path)
    assert result.returncode == 3
    assert "cannot listen" in result.stderr
    assert key_file.read_text() == "the-running-servers-key\n"


def test_migrate_command_applies_once(tmp_path: Path, database_url: str) -> None:
    first = run_cli(["migrate"], {"DATABASE_URL": database_url}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied migration 001_" in first.stderr
    again = run_cli(["migrate"], {"DATABASE_URL": database_url}, tmp_path)
    assert again.returncode == 0
    assert "applied migration" not in again.stderr
    assert "up to date" in again.stdout


def test_unreachable_database_stops_start_up(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}
    result = run_cli(["run", "--role", "all", "--port", str(free_port())], env, tmp_path)
    assert result.returncode == 3
    assert "cannot connect to the database" in result.stderr
    assert not (tmp_path / ".tutorsrv" / "engine-api-key").exists()
