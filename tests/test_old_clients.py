"""The old system's clients, as they were written, against tutorsrv (docs/api.md, "Migrating
from the old GPU server"): a form login, ``status == "active"``, ``?token=`` appended to an
``engine_url`` that already has one, the ``/ws/{id}`` path, and a JSON-only ``onmessage``
that parses every frame. And the other side of the negotiation: a client that offers the
``tutorsrv.v1`` subprotocol gets the full protocol, speech included."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import MakeClient, expect_close, receive_json, receive_until
from .web_helpers import PASSWORD, bearer, create_student, create_tutor, register_admin

# The engine speaks (piper), so any binary frame a JSON-only client got would be audio.
SPEAKING = {"tts": {"enabled": True}, "llm": {"scripted_text": "You said: {message}."}}


async def old_client_session(client: TestClient) -> tuple[dict[str, Any], str]:
    """The old frontend's steps: form login, then a session for a student, read from the raw
    body the way its scripts did."""
    admin = await register_admin(client)
    resp = await client.post(
        "/api/auth/login", data={"username": admin["email"], "password": PASSWORD}
    )
    assert resp.status == 200, await resp.text()
    login = await resp.json()
    assert login["token_type"] == "bearer"
    headers = bearer(login["access_token"])
    tutor = await create_tutor(client, {"headers": headers}, greeting="")
    student = await create_student(client, {"headers": headers})
    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions", json={"student_id": student["id"]}, headers=headers
    )
    assert resp.status == 201
    raw = await resp.text()
    # Compact JSON: a script that searches for '"session_id":"' finds it.
    assert '"session_id":"' in raw and ": " not in raw
    created = json.loads(raw)
    assert created["status"] == "active"
    return created, created["engine_url"] + "?token=" + created["engine_token"]


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def json_only_turn(client: TestClient, url: str) -> list[dict[str, Any]]:
    """Connect offering no subprotocol, say hello, and parse every frame as JSON (as
    ``ws.onmessage = e => JSON.parse(e.data)`` does) until the reply's ``text``."""
    ws = await client.ws_connect(path_of(url))
    try:
        assert ws.protocol is None
        seen: list[dict[str, Any]] = []
        await ws.send_json({"type": "text", "content": "Hello"})
        while not seen or seen[-1]["type"] != "response_done":
            msg = await ws.receive(timeout=30)
            assert msg.type == WSMsgType.TEXT, f"a JSON-only client got {msg.type}"
            seen.append(json.loads(msg.data))
        return seen
    finally:
        await ws.close()


async def test_the_old_frontend_flow_works_unchanged(make_client: MakeClient) -> None:
    client = await make_client("all", **SPEAKING)
    _, url = await old_client_session(client)
    # The old clients appended ?token= to engine_url; ours already carries the same token.
    assert url.count("token=") == 2
    seen = await json_only_turn(client, url)
    session = seen[0]
    assert session["type"] == "session" and session["subprotocol"] is None
    assert session["audio"]["output"] is None
    texts = [m for m in seen if m["type"] == "text"]
    assert texts and texts[0]["content"] == "You said: Hello." and texts[0]["role"] == "assistant"
    assert not [m for m in seen if m["type"] in ("audio_start", "audio_end")]


async def test_the_old_servers_socket_path_and_an_appended_token(make_client: MakeClient) -> None:
    client = await make_client("all", **SPEAKING)
    created, _ = await old_client_session(client)
    sid, token = created["session_id"], created["engine_token"]
    for query in (f"token={token}", f"token={token}&token={token}"):
        seen = await json_only_turn(client, f"/ws/{sid}?{query}")
        assert seen[0]["session_id"] == sid
        assert any(m["type"] == "text" for m in seen)


@pytest.mark.parametrize(
    "query",
    ["token={t}?token=other", "token={t}&token=other", "token={t}&token="],
)
async def test_differing_copies_of_the_token_are_refused(
    make_client: MakeClient, query: str
) -> None:
    client = await make_client("all")
    created, _ = await old_client_session(client)
    sid = created["session_id"]
    ws = await client.ws_connect(f"/ws/ws/{sid}?" + query.format(t=created["engine_token"]))
    code, before = await expect_close(ws)
    assert code == 4401
    assert before[-1]["code"] == "invalid_token" and "more than once" in before[-1]["content"]


async def test_a_json_only_client_cannot_switch_speech_on(make_client: MakeClient) -> None:
    client = await make_client("all", **SPEAKING)
    _, url = await old_client_session(client)
    ws = await client.ws_connect(path_of(url))
    assert (await receive_json(ws))["type"] == "session"
    await ws.send_json({"type": "config", "audio_output": True})
    error = await receive_json(ws)
    assert error["code"] == "audio_unavailable" and SUBPROTOCOL in error["content"]
    assert error["fatal"] is False
    # The socket stays usable, and still sends no binary frame.
    await ws.send_json({"type": "text", "content": "still there?"})
    seen = await receive_until(ws, "response_done")
    assert any(m["type"] == "text" for m in seen)
    await ws.close()


async def test_the_subprotocol_gives_the_full_protocol(make_client: MakeClient) -> None:
    client = await make_client("all", **SPEAKING)
    created, _ = await old_client_session(client)
    ws = await client.ws_connect(path_of(created["engine_url"]), protocols=["x", SUBPROTOCOL])
    assert ws.protocol == SUBPROTOCOL
    session = await receive_json(ws)
    assert session["subprotocol"] == SUBPROTOCOL and session["audio"]["output"] is not None
    await ws.send_json({"type": "text", "content": "Hello"})
    audio = 0
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == WSMsgType.BINARY:
            audio += len(msg.data)
        elif json.loads(msg.data)["type"] == "response_done":
            break
    assert audio > 0
    await ws.close()


async def test_a_student_form_login(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    student = await create_student(client, admin)
    resp = await client.post(
        "/api/students/login",
        data={"username": student["email"], "password": PASSWORD, "grant_type": "password"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["role"] == "student"


@pytest.mark.parametrize(
    ("form", "status", "code"),
    [
        ({"username": "a@b.example", "password": "wrong password"}, 401, "invalid_credentials"),
        ({"username": "a@b.example", "password": "x", "grant_type": "code"}, 422, "invalid_field"),
        ({"username": "a@b.example", "email": "a@b.example", "password": "x"}, 422, None),
        ({"username": "a@b.example", "password": "x", "extra": "1"}, 422, "unknown_field"),
        ({"password": "x"}, 422, "missing_field"),
        ([("username", "a@b.example"), ("username", "c@d.example"), ("password", "x")], 422, None),
    ],
)
async def test_bad_login_forms_get_clear_errors(
    make_client: MakeClient, form: Any, status: int, code: str | None
) -> None:
    client = await make_client("all")
    resp = await client.post("/api/auth/login", data=form)
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == (code or "invalid_field") and body["message"]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"username=\xff&password=x", 400, "invalid_form"),  # raw bytes that are not UTF-8
        # Escaped ones decode to U+FFFD, which is no email address.
        (b"username=%ff%fe&password=x", 422, "invalid_field"),
    ],
)
async def test_a_form_that_is_not_utf8_is_refused(
    make_client: MakeClient, data: bytes, status: int, code: str
) -> None:
    client = await make_client("all")
    resp = await client.post(
        "/api/auth/login",
        data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == status
    assert (await resp.json())["error"] == code


async def test_registration_still_takes_json_only(make_client: MakeClient) -> None:
    client = await make_client("all")
    resp = await client.post(
        "/api/auth/register", data={"email": "x@y.example", "password": PASSWORD}
    )
    assert resp.status == 415
    assert (await resp.json())["error"] == "unsupported_media_type"
