"""Transcripts: every finished turn reaches the database through the Backplane, once."""

from __future__ import annotations

import uuid

import asyncpg
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import BACKPLANE, DB
from tutorsrv.backplane import TurnRecord
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import AUTH, MakeClient, eventually, receive_json, receive_until, ws_path
from .web_helpers import create_student, create_tutor, register_admin, start_session

SLOW = {"scripted_token_count": 300, "scripted_token_delay_ms": 20.0}


async def messages(client: TestClient, admin: dict, session_id: str) -> list[dict]:
    resp = await client.get(f"/api/sessions/{session_id}/messages", headers=admin["headers"])
    assert resp.status == 200
    return (await resp.json())["messages"]


async def setup_session(client: TestClient) -> tuple[dict, dict]:
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin, greeting="Welcome to maths.")
    student = await create_student(client, admin)
    return admin, await start_session(client, admin, tutor, student)


async def test_turns_are_stored_including_an_interrupted_one(make_client: MakeClient) -> None:
    client = await make_client("all", llm=SLOW)
    admin, session = await setup_session(client)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await receive_until(ws, "response_done")  # the greeting

    await ws.send_json({"type": "text", "content": "first question"})
    for _ in range(3):
        await receive_json(ws)
    await ws.send_json({"type": "interrupt"})
    cut = (await receive_until(ws, "interrupted"))[-1]

    await ws.send_json({"type": "text", "content": "second question"})
    await ws.send_json({"type": "interrupt"})
    await receive_until(ws, "interrupted")
    await ws.close()

    async def three_turns() -> list[dict] | None:
        found = await messages(client, admin, session["session_id"])
        return found if len([m for m in found if m["role"] == "user"]) == 2 else None

    stored = await eventually(three_turns, "the turns to be stored", limit=15)
    assert stored[0] == {**stored[0], "role": "assistant", "content": "Welcome to maths."}
    assert stored[1]["role"] == "user" and stored[1]["content"] == "first question"
    reply = stored[2]
    assert reply["role"] == "assistant" and reply["interrupted"] is True
    assert reply["response_id"] == cut["response_id"]
    assert 0 < len(reply["content"].split()) < 300  # what was actually produced
    assert stored[3]["content"] == "second question"
    # Timestamps are in order and metrics came along.
    times = [m["timestamp"] for m in stored]
    assert times == sorted(times)
    assert reply["metrics"]["tokens"] >= 3


async def test_a_retried_delivery_is_stored_once(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin, session = await setup_session(client)
    turn = {
        "session_id": session["session_id"],
        "response_id": "r_retry",
        "student_text": "hello?",
        "student_at": "2026-11-24T08:00:00.000Z",
        "reply_text": "Hello!",
        "reply_at": "2026-11-24T08:00:01.000Z",
        "interrupted": False,
        "metrics": {"tokens": 2},
    }
    first = await client.post("/internal/v1/turns", json=turn, headers=AUTH)
    again = await client.post("/internal/v1/turns", json=turn, headers=AUTH)
    assert (first.status, await first.json()) == (201, {"stored": True})
    assert (again.status, await again.json()) == (200, {"stored": False})
    stored = await messages(client, admin, session["session_id"])
    assert [m["content"] for m in stored if m.get("response_id") == "r_retry"] == [
        "hello?",
        "Hello!",
    ]


async def test_a_revised_turn_replaces_older_revisions_only(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin, session = await setup_session(client)
    turn = {
        "session_id": session["session_id"],
        "response_id": "r_heard",
        "student_text": "explain",
        "student_at": "2026-11-24T08:00:00.000Z",
        "reply_text": "One two three four.",
        "reply_at": "2026-11-24T08:00:01.000Z",
        "metrics": {"tokens": 4},
    }
    heard = {**turn, "reply_text": "One two", "interrupted": True, "revision": 1}
    assert (await client.post("/internal/v1/turns", json=turn, headers=AUTH)).status == 201
    assert (await client.post("/internal/v1/turns", json=heard, headers=AUTH)).status == 201
    # A late retry of the first revision changes nothing.
    late = await client.post("/internal/v1/turns", json=turn, headers=AUTH)
    assert (late.status, await late.json()) == (200, {"stored": False})
    stored = [
        m
        for m in await messages(client, admin, session["session_id"])
        if m.get("response_id") == "r_heard" and m["role"] == "assistant"
    ]
    assert [(m["content"], m["interrupted"]) for m in stored] == [("One two", True)]
    for bad in (-1, "1", True, 2**31):
        resp = await client.post(
            "/internal/v1/turns", json={**heard, "revision": bad}, headers=AUTH
        )
        assert resp.status == 422 and (await resp.json())["field"] == "revision"


async def test_internal_api_needs_the_service_key_and_valid_turns(
    make_client: MakeClient,
) -> None:
    client = await make_client("all")
    _, session = await setup_session(client)
    turn = {"session_id": session["session_id"], "response_id": "r1", "reply_at": "x"}
    resp = await client.post("/internal/v1/turns", json=turn)
    assert resp.status == 401
    resp = await client.post(
        "/internal/v1/turns", json=turn, headers={"Authorization": "Bearer wrong-key-123456"}
    )
    assert resp.status == 401
    resp = await client.post("/internal/v1/turns", json=turn, headers=AUTH)
    assert resp.status == 422
    resp = await client.post("/internal/v1/turns", json={**turn, "reply_at": 5}, headers=AUTH)
    assert (await resp.json())["field"] == "reply_at"
    # An account token is not a service key.
    admin = await register_admin(client)
    resp = await client.post("/internal/v1/turns", json=turn, headers=admin["headers"])
    assert resp.status == 401


async def test_database_outage_loses_no_turn(make_client: MakeClient, postgres_url: str) -> None:
    client = await make_client("all")
    admin, session = await setup_session(client)
    db = client.server.app[DB]
    name = await db.fetchval("SELECT current_database()")

    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await receive_until(ws, "response_done")  # greeting, stored while the database is up

    # Stop the database for this app: refuse and cut every connection.
    super_conn = await asyncpg.connect(postgres_url)
    try:
        await super_conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await super_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        # The API says so clearly, and the conversation goes on.
        resp = await client.get("/api/sessions", headers=admin["headers"])
        assert resp.status == 503
        assert (await resp.json())["error"] == "database_unavailable"
        health = await client.get("/health")
        assert health.status == 503 and (await health.json())["database"] == "unavailable"

        await ws.send_json({"type": "text", "content": "during the outage"})
        done = await receive_until(ws, "response_done")
        reply = next(m for m in done if m["type"] == "text")
        assert "during the outage" in reply["content"]
        backplane = client.server.app[BACKPLANE]
        await eventually(lambda: backplane.retries > 0, "a failed delivery", limit=15)
        # The student is told the transcript waits (once the delivery has failed).
        if not any(m["type"] == "error" for m in done):
            done += await receive_until(ws, "error")
        told = [m for m in done if m["type"] == "error"]
        assert [(m["code"], m["fatal"]) for m in told] == [("transcript_delayed", False)]
    finally:
        await super_conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await super_conn.close()

    async def delivered() -> list[dict] | None:
        resp = await client.get(
            f"/api/sessions/{session['session_id']}/messages", headers=admin["headers"]
        )
        if resp.status != 200:
            return None
        found = (await resp.json())["messages"]
        return found if any(m["content"] == "during the outage" for m in found) else None

    stored = await eventually(delivered, "the buffered turn after the outage", limit=60)
    assert [m["role"] for m in stored] == ["assistant", "user", "assistant"]
    # ... and told again when it is saved.
    assert (await receive_json(ws))["type"] == "notice"
    await ws.close()


async def test_sessions_opened_directly_on_the_engine_are_not_persisted(
    make_client: MakeClient,
) -> None:
    # The engine test page opens sessions with the service key, outside any tenant.
    client = await make_client("all")
    resp = await client.post(
        "/v1/sessions", json={"tutor_id": "page", "student_id": str(uuid.uuid4())}, headers=AUTH
    )
    session = await resp.json()
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await ws.send_json({"type": "text", "content": "hi"})
    await receive_until(ws, "response_done")
    await ws.close()
    backplane = client.server.app[BACKPLANE]
    assert await backplane.flush(10)
    count = await client.server.app[DB].fetchval("SELECT count(*) FROM turns")
    assert count == 0


async def test_a_turn_the_store_refuses_does_not_block_later_ones(
    make_client: MakeClient,
) -> None:
    client = await make_client("all")
    admin, session = await setup_session(client)
    backplane = client.server.app[BACKPLANE]
    poison = TurnRecord(
        session_id=session["session_id"],
        response_id="r_poison",
        reply_text="bad \x00 byte",
        reply_at="2026-11-24T08:00:00.000Z",
    )
    good = TurnRecord(
        session_id=session["session_id"],
        response_id="r_good",
        reply_text="fine",
        reply_at="2026-11-24T08:00:01.000Z",
    )
    backplane.submit(poison)
    backplane.submit(good)
    assert await backplane.flush(10)
    assert backplane.rejected == 1 and backplane.pending == 0
    stored = await messages(client, admin, session["session_id"])
    assert [m["response_id"] for m in stored] == ["r_good"]
