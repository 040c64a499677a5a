"""Web-role sessions against the in-process engine (role all)."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import REGISTRY
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import AUTH, MakeClient, expect_close, receive_json, ws_path
from .web_helpers import create_student, create_tutor, register_admin, start_session


async def test_ending_a_session_closes_its_socket_and_keeps_its_transcript(
    make_client: MakeClient,
) -> None:
    client: TestClient = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"

    # The old web server's path still works.
    resp = await client.delete(
        f"/api/tutors/sessions/{session['session_id']}", headers=admin["headers"]
    )
    assert resp.status == 204
    code, _ = await expect_close(ws)
    assert code == 4410
    assert client.server.app[REGISTRY].get(session["session_id"]) is None

    resp = await client.get(f"/api/sessions/{session['session_id']}", headers=admin["headers"])
    row = await resp.json()
    assert row["status"] == "ended" and row["ended_at"]
    resp = await client.get(
        f"/api/sessions/{session['session_id']}/messages", headers=admin["headers"]
    )
    assert [m["content"] for m in (await resp.json())["messages"]] == ["Hello, I am Ada."]
    # Ending it again is harmless.
    resp = await client.delete(f"/api/sessions/{session['session_id']}", headers=admin["headers"])
    assert resp.status == 204


async def test_a_full_engine_answers_503_and_stores_nothing(make_client: MakeClient) -> None:
    client: TestClient = await make_client("all", engine={"max_sessions": 1})
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    await start_session(client, admin, tutor, student)
    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions",
        json={"student_id": student["id"]},
        headers=admin["headers"],
    )
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "engine_unavailable" and "maximum" in body["message"]
    listing = await (await client.get("/api/sessions", headers=admin["headers"])).json()
    assert len(listing["sessions"]) == 1


async def test_knowledge_bases_do_not_exist_yet(make_client: MakeClient) -> None:
    client: TestClient = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions",
        json={"student_id": student["id"], "kb_id": "kb-1"},
        headers=admin["headers"],
    )
    assert resp.status == 404
    assert (await resp.json())["error"] == "kb_not_found"
    assert len(client.server.app[REGISTRY]) == 0


async def test_deleting_a_tutor_or_student_ends_their_live_sessions(
    make_client: MakeClient,
) -> None:
    client: TestClient = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    other_tutor = await create_tutor(client, admin, name="Bo")
    student = await create_student(client, admin)
    by_tutor = await start_session(client, admin, tutor, student)
    by_student = await start_session(client, admin, other_tutor, student)
    sockets = []
    for session in (by_tutor, by_student):
        ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
        assert (await receive_json(ws))["type"] == "session"
        sockets.append(ws)

    resp = await client.delete(f"/api/tutors/{tutor['id']}", headers=admin["headers"])
    assert resp.status == 204
    assert (await expect_close(sockets[0]))[0] == 4410
    resp = await client.delete(f"/api/students/{student['id']}", headers=admin["headers"])
    assert resp.status == 204
    assert (await expect_close(sockets[1]))[0] == 4410
    assert len(client.server.app[REGISTRY]) == 0


async def test_the_web_record_follows_the_engine_when_it_expires_a_session(
    make_client: MakeClient,
) -> None:
    client: TestClient = await make_client("all", engine={"session_timeout_seconds": 0.3})
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    assert (await expect_close(ws))[0] == 4408  # the reaper, on the engine's clock

    url = f"/api/sessions/{session['session_id']}"
    deadline = time.monotonic() + 10
    while (row := await (await client.get(url, headers=admin["headers"])).json())[
        "status"
    ] == "active":
        assert time.monotonic() < deadline, "the web record never followed the engine"
        await asyncio.sleep(0.05)
    assert row["status"] == "expired" and row["ended_at"]
    # Deleting it now asks no engine and changes nothing.
    assert (await client.delete(url, headers=admin["headers"])).status == 204
    assert (await (await client.get(url, headers=admin["headers"])).json())["status"] == "expired"


async def test_internal_session_end_endpoint(make_client: MakeClient) -> None:
    client: TestClient = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    url = f"/internal/v1/sessions/{session['session_id']}/end"
    event = {"reason": "expired", "ended_at": "2026-11-24T09:00:00.000Z"}
    assert (await client.post(url, json=event)).status == 401
    bad = await client.post(url, json={**event, "reason": "bored"}, headers=AUTH)
    assert bad.status == 422 and (await bad.json())["field"] == "reason"
    first = await client.post(url, json=event, headers=AUTH)
    assert await first.json() == {"changed": True}
    again = await client.post(url, json=event, headers=AUTH)
    assert await again.json() == {"changed": False}
    row = await (
        await client.get(f"/api/sessions/{session['session_id']}", headers=admin["headers"])
    ).json()
    assert row["status"] == "expired"
