"""Shared fixtures: an engine app on a test server, with the scripted backend by default."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient

from tutorsrv.app import create_app
from tutorsrv.config import Config, load_config

API_KEY = "test-engine-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_config(**sections: dict[str, Any]) -> Config:
    """Test defaults (scripted backend, known key, fast reaper) plus per-test overrides."""
    overrides: dict[str, dict[str, Any]] = {
        "engine": {"api_key": API_KEY, "reaper_interval_seconds": 0.05},
        "llm": {"backend": "scripted"},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(environ={}, overrides=overrides)


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def factory(role: str = "engine", **sections: dict[str, Any]) -> TestClient:
        app: web.Application = create_app(make_config(**sections), role)
        return await aiohttp_client(app)

    return factory


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
