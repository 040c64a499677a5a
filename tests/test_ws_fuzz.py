"""Fuzz the session WebSocket (docs/protocol.md) with hypothesis: random JSON values, random
strings and random binary frames, in random order, each example on a fresh engine session.

Whatever arrives, the server answers only with documented messages, keeps the socket open
unless it closes with a documented code, stays responsive (a ping is answered), and another
session connected all along keeps working."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tutorsrv.app import create_app
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import AUTH, make_config, new_session, receive_until, ws_path

MAX_MESSAGE_BYTES = 4096
MAX_TEXT_CHARS = 200
QUIET_SECONDS = 0.1
SERVER_TYPES = {
    "session",
    "text_stream",
    "text",
    "response_done",
    "interrupted",
    "error",
    "pong",
    "sources",
}
# Close codes a fuzzed client may legitimately get: an oversized frame.
DOCUMENTED_CLOSES = {1009}
CLIENT_TYPES = ["text", "interrupt", "ping", "config", "played", "audio", "audio_end"]

# Strings with any code point, lone UTF-16 surrogates included (hypothesis leaves them out by
# default): json.dumps writes those as \ud800 escapes, which a client can send.
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
# Objects that look like client messages get further into the handler than random JSON.
message_like = st.builds(
    lambda kind, extra: {"type": kind, **extra},
    st.sampled_from(CLIENT_TYPES) | st.text(max_size=12) | json_values,
    st.dictionaries(
        st.sampled_from(["content", "id", "response_id", "audio_ms", "audio_output", "data"])
        | st.text(max_size=8),
        json_values | st.text(max_size=MAX_TEXT_CHARS + 20) | any_text,
        max_size=3,
    ),
)
text_frames = st.one_of(
    json_values.map(json.dumps),
    message_like.map(json.dumps),
    st.text(max_size=60),  # mostly not JSON at all
    st.just('{"type": "text", "content": "what is 2+2?"}'),
    st.just('{"type": "interrupt"}'),
).map(lambda raw: ("text", raw))
binary_frames = st.binary(max_size=2048).map(lambda data: ("binary", data))
oversized_frames = st.one_of(
    st.binary(min_size=MAX_MESSAGE_BYTES + 1, max_size=MAX_MESSAGE_BYTES + 512).map(
        lambda data: ("binary", data)
    ),
    st.integers(MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES + 512).map(
        lambda n: ("text", json.dumps({"type": "text", "content": "x" * n}))
    ),
)


@st.composite
def frames(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Up to 12 frames; about one example in five also has an oversized one somewhere."""
    items = draw(st.lists(st.one_of(text_frames, text_frames, binary_frames), max_size=12))
    if draw(st.integers(0, 4)) == 4:
        items.insert(draw(st.integers(0, len(items))), draw(oversized_frames))
    return items


def check_message(message: Any) -> None:
    assert isinstance(message, dict), message
    assert message.get("type") in SERVER_TYPES, message
    if message["type"] == "error":
        assert isinstance(message.get("code"), str) and message["code"], message
        assert isinstance(message.get("content"), str), message
        assert isinstance(message.get("fatal"), bool), message


class ServerErrors(logging.Handler):
    """Records unhandled handler exceptions (aiohttp logs them at ERROR)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def read_until_quiet(ws: ClientWebSocketResponse) -> list[dict[str, Any]]:
    """What is still coming (a reply that outlived the pong), until the socket goes quiet."""
    seen: list[dict[str, Any]] = []
    while True:
        try:
            msg = await ws.receive(timeout=QUIET_SECONDS)
        except TimeoutError:
            return seen
        assert msg.type == WSMsgType.TEXT, msg
        message = json.loads(msg.data)
        check_message(message)
        seen.append(message)


async def run_example(client: TestClient, frames: list[tuple[str, Any]], n: int) -> None:
    session = await new_session(client, student_id=f"fuzz-{n}")
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    replies: list[dict[str, Any]] = []
    close_code: int | None = None
    try:
        first = await ws.receive_json(timeout=10)
        assert first["type"] == "session", first
        for kind, data in frames:
            if ws.closed:
                break
            if kind == "text":
                await ws.send_str(data)
            else:
                await ws.send_bytes(data)
        if not ws.closed:
            await ws.send_json({"type": "ping", "id": f"end-{n}"})
        # Read until our pong (the socket is alive and in order) or a close.
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type == WSMsgType.TEXT:
                message = json.loads(msg.data)
                check_message(message)
                replies.append(message)
                if message["type"] == "pong" and message.get("id") == f"end-{n}":
                    replies += await read_until_quiet(ws)
                    break
                continue
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED), msg
            close_code = msg.data if msg.type == WSMsgType.CLOSE else ws.close_code
            break
    finally:
        await ws.close()
        resp = await client.delete(f"/v1/sessions/{session['session_id']}", headers=AUTH)
        assert resp.status == 204
    if close_code is not None:
        assert close_code in DOCUMENTED_CLOSES, (close_code, replies)
        assert any(kind == "binary" and len(d) > MAX_MESSAGE_BYTES for kind, d in frames) or any(
            kind == "text" and len(d.encode()) > MAX_MESSAGE_BYTES for kind, d in frames
        ), "closed without an oversized frame"
    else:
        fatal = [m for m in replies if m["type"] == "error" and m["fatal"]]
        assert not fatal, fatal


async def start_engine(tmp_path: Path) -> TestClient:
    config = make_config(
        engine={"max_message_bytes": MAX_MESSAGE_BYTES, "max_text_chars": MAX_TEXT_CHARS},
        llm={"scripted_token_count": 5, "scripted_token_delay_ms": 0},
        server={"state_dir": str(tmp_path / "state")},
    )
    client = TestClient(TestServer(create_app(config, "engine")))
    await client.start_server()
    return client


async def connect(client: TestClient, student_id: str) -> ClientWebSocketResponse:
    session = await new_session(client, student_id=student_id)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await ws.receive_json(timeout=10))["type"] == "session"
    return ws


async def full_turn(ws: ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "text", "content": "still there?"})
    seen = await receive_until(ws, "response_done", wait=10)
    for message in seen:
        check_message(message)
    assert [m["type"] for m in seen].count("text_stream") == 5
    assert not [m for m in seen if m["type"] in ("error", "interrupted")], seen


def test_random_frames_never_break_the_engine(tmp_path: Path) -> None:
    # Hypothesis drives the examples synchronously, so the server gets its own event loop
    # and lives across all of them, next to a bystander session connected all along.
    loop = asyncio.new_event_loop()
    errors = ServerErrors()
    logging.getLogger().addHandler(errors)
    client: TestClient | None = None
    try:
        client = loop.run_until_complete(start_engine(tmp_path))
        bystander = loop.run_until_complete(connect(client, "bystander"))
        counter = itertools.count()

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(frames=frames())
        def fuzz(frames: list[tuple[str, Any]]) -> None:
            assert client is not None
            loop.run_until_complete(
                asyncio.wait_for(run_example(client, frames, next(counter)), 30)
            )

        fuzz()
        # The bystander is unaffected, the server holds just it, and nothing blew up.
        assert not bystander.closed
        loop.run_until_complete(full_turn(bystander))
        health = loop.run_until_complete(client.get("/health"))
        assert health.status == 200
        assert loop.run_until_complete(health.json())["sessions"] == 1
        assert not errors.records, [r.getMessage() for r in errors.records]
    finally:
        logging.getLogger().removeHandler(errors)
        if client is not None:
            loop.run_until_complete(client.close())
        loop.close()
