"""Connections cannot pile up: idle HTTP connections are closed, the open-file limit is
raised at start, and a flood of accept errors is one log line per interval, not thousands."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.logs import AcceptErrorThrottle

from .conftest import AUTH
from .processes import ServerProcess


class Loop:
    def __init__(self) -> None:
        self.passed: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.passed.append(context)


def test_accept_errors_are_summed_up_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttle = AcceptErrorThrottle(interval=10.0, clock=lambda: now[0])
    loop = Loop()
    flood = {"message": "socket.accept() out of system resource", "exception": OSError(24)}
    with caplog.at_level(logging.ERROR, logger="tutorsrv"):
        for _ in range(1500):
            throttle(loop, flood)  # type: ignore[arg-type]
        now[0] += 10
        for _ in range(20):
            throttle(loop, flood)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "1 times" in lines[0] and "1500 times" in lines[1]  # the first, then the sum
    # Anything else still goes to asyncio's own handler.
    throttle(loop, {"message": "Task exception was never retrieved"})  # type: ignore[arg-type]
    assert [c["message"] for c in loop.passed] == ["Task exception was never retrieved"]


async def test_an_idle_connection_is_closed_and_a_websocket_is_not(tmp_path: Path) -> None:
    engine = ServerProcess(
        "engine",
        {
            "TUTORSRV_ENGINE_API_KEY": AUTH["Authorization"][7:],
            "TUTORSRV_LLM_BACKEND": "scripted",
            "TUTORSRV_SERVER_IDLE_CONNECTION_SECONDS": "1",
        },
        tmp_path,
    )
    await engine.start()
    try:
        assert "open-file limit:" in engine.output()
        idle = socket.create_connection(("127.0.0.1", engine.port))
        idle.settimeout(15)
        try:
            assert idle.recv(1) == b""  # closed by the server, not by the 15 s timeout
        finally:
            idle.close()
        async with aiohttp.ClientSession() as http:
            body = {"tutor_id": "t1", "student_id": "s1"}
            async with http.post(engine.base + "/v1/sessions", json=body, headers=AUTH) as r:
                session = await r.json()
            async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                assert (await ws.receive_json(timeout=10))["type"] == "session"
                await asyncio.sleep(2.5)
                await ws.send_json({"type": "ping"})
                assert (await ws.receive_json(timeout=10))["type"] == "pong"
    finally:
        engine.stop()
