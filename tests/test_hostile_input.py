"""Input that once answered 500 or broke a session for good: deep nesting, huge integers,
lone surrogates, a broken multipart body. Each gets a documented 4xx or `error`, and the
session or account goes on working."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import MakeClient, new_session, receive_json, receive_until, ws_path
from .web_helpers import register_admin

DEEP = "[" * 1000 + "]" * 1000
HUGE = "9" * 5000
SURROGATE = '"\\ud800"'  # JSON for a lone UTF-16 surrogate: valid JSON, not valid Unicode


async def raw_post(client: TestClient, path: str, body: str, **headers: str) -> tuple[int, dict]:
    resp = await client.post(
        path, data=body.encode(), headers={"Content-Type": "application/json", **headers}
    )
    return resp.status, await resp.json()


async def test_a_lone_surrogate_in_a_turn_is_refused_and_the_session_stays_usable(
    client: TestClient,
) -> None:
    session = await new_session(client)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await ws.send_str('{"type": "text", "content": ' + SURROGATE + "}")
    error = await receive_json(ws)
    assert error["type"] == "error" and error["code"] == "invalid_text" and not error["fatal"]
    await ws.send_json({"type": "text", "content": "Hello again"})
    done = await receive_until(ws, "response_done")
    assert any(m["type"] == "text" for m in done)
    await ws.close()
    # A reconnect (which sends the whole history back) works too.
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    hello = await receive_json(ws)
    assert hello["type"] == "session" and hello["resumed"] is True
    assert [m["content"] for m in hello["history"] if m["role"] == "user"] == ["Hello again"]
    await ws.close()


async def test_huge_integers_and_deep_nesting_on_the_socket_are_invalid_json(
    client: TestClient,
) -> None:
    session = await new_session(client)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    for raw in ('{"type": "played", "response_id": "r", "audio_ms": ' + HUGE + "}", DEEP):
        await ws.send_str(raw)
        error = await receive_json(ws)
        assert error["code"] == "invalid_json" and not error["fatal"], error
    await ws.send_json({"type": "ping"})
    assert (await receive_json(ws))["type"] == "pong"
    await ws.close()


async def test_the_api_answers_hostile_json_with_400(make_client: MakeClient) -> None:
    client = await make_client("all")
    for path in ("/api/auth/login", "/api/auth/register"):
        for body in (
            DEEP,
            '{"email": "a@b.example", "password": ' + HUGE + "}",
            '{"email": "a@b.example", "password": "long enough pw", "name": ' + SURROGATE + "}",
        ):
            status, answer = await raw_post(client, path, body)
            assert status == 400, (path, body[:40], answer)
            assert answer["error"] in ("invalid_json", "invalid_text"), answer
    admin = await register_admin(client)
    status, answer = await raw_post(
        client,
        "/api/tutors",
        '{"name": "Ada", "system_prompt": "Be kind ' + SURROGATE[1:-1] + '"}',
        **admin["headers"],
    )
    assert status == 400 and answer["error"] == "invalid_text", answer
    # The account is unharmed, and nothing half-made was stored.
    resp = await client.get("/api/tutors", headers=admin["headers"])
    assert resp.status == 200 and await resp.json() == {"tutors": []}


async def test_a_broken_multipart_body_is_400(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await (
        await client.post("/api/kbs", json={"name": "Notes"}, headers=admin["headers"])
    ).json()
    resp = await client.post(
        f"/api/kbs/{kb['id']}/documents",
        data=b"--nope\r\nnot a part\r\n",
        headers={**admin["headers"], "Content-Type": "multipart/form-data; boundary=other"},
    )
    assert resp.status in (400, 422), await resp.text()
    assert (await resp.json())["error"] == "invalid_multipart"
