"""Engine HTTP API: service key, session CRUD, limits, validation, public URLs."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import REGISTRY

from .conftest import API_KEY, AUTH, MakeClient, new_session


async def test_health_reports_role_and_capacity(client: TestClient) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy"
    assert body["role"] == "engine"
    assert body["sessions"] == 0
    assert body["max_sessions"] == 10
    assert body["llm"]["backend"] == "scripted"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic " + API_KEY}, "missing_api_key"),
        ({"Authorization": "Bearer "}, "missing_api_key"),
        ({"Authorization": "Bearer wrong-key-wrong-key"}, "invalid_api_key"),
        ({"Authorization": "Bearer " + API_KEY + "x"}, "invalid_api_key"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/sessions/abc"),
        ("DELETE", "/v1/sessions/abc"),
    ],
)
async def test_session_api_needs_the_service_key(
    client: TestClient, method: str, path: str, headers: dict[str, str], code: str
) -> None:
    resp = await client.request(method, path, headers=headers, json={"tutor_id": 1})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"] == code
    assert len(client.server.app[REGISTRY]) == 0


async def test_create_session_returns_a_usable_engine_url(client: TestClient) -> None:
    body = await new_session(client, kb_id="kb7", tutor={"name": "Ada", "greeting": "Hi"})
    assert set(body) == {
        "session_id",
        "engine_url",
        "engine_token",
        "status",
        "connection",
        "expires_at",
    }
    # "active" is the old API's word (its clients check it); ours is "connection".
    assert body["status"] == "active" and body["connection"] == "created"
    url = urlsplit(body["engine_url"])
    assert url.scheme == "ws"
    assert url.netloc == f"{client.server.host}:{client.server.port}"
    assert url.path == f"/ws/ws/{body['session_id']}"
    assert parse_qs(url.query)["token"] == [body["engine_token"]]
    claims = jwt.decode(body["engine_token"], options={"verify_signature": False})
    assert claims["sid"] == body["session_id"]
    assert "exp" in claims


async def test_engine_url_follows_the_host_the_caller_used(client: TestClient) -> None:
    resp = await client.post(
        "/v1/sessions",
        json={"tutor_id": "t", "student_id": "s"},
        headers={**AUTH, "Host": "tutor.school.example:9000"},
    )
    url = (await resp.json())["engine_url"]
    assert url.startswith("ws://tutor.school.example:9000/ws/ws/")
    assert "localhost" not in url and "127.0.0.1" not in url


async def test_engine_url_from_a_trusted_proxys_forwarded_headers(
    make_client: MakeClient,
) -> None:
    client = await make_client(server={"trusted_proxies": ["127.0.0.0/8"]})
    resp = await client.post(
        "/v1/sessions",
        json={"tutor_id": "t", "student_id": "s"},
        headers={
            **AUTH,
            "X-Forwarded-Proto": "https, http",
            "X-Forwarded-Host": "tutors.school.example, internal:9000",
        },
    )
    assert (await resp.json())["engine_url"].startswith("wss://tutors.school.example/ws/ws/")


async def test_forwarded_headers_ignored_without_a_trusted_proxy(
    make_client: MakeClient,
) -> None:
    # The default: no proxy is trusted, so anyone's X-Forwarded-Host is just a header.
    for client in (
        await make_client(),
        await make_client(server={"trusted_proxies": ["10.0.0.0/8"]}),  # not this peer
    ):
        resp = await client.post(
            "/v1/sessions",
            json={"tutor_id": "t", "student_id": "s"},
            headers={**AUTH, "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
        )
        url = (await resp.json())["engine_url"]
        assert url.startswith(f"ws://{client.server.host}:{client.server.port}/")


async def test_engine_url_from_configured_public_url(make_client: MakeClient) -> None:
    client = await make_client(engine={"public_url": "https://edge.example/engine/"})
    resp = await client.post(
        "/v1/sessions",
        json={"tutor_id": "t", "student_id": "s"},
        headers={**AUTH, "X-Forwarded-Host": "ignored.example"},
    )
    body = await resp.json()
    assert body["engine_url"].startswith(f"wss://edge.example/engine/ws/ws/{body['session_id']}?")


async def test_bad_host_header_is_refused_and_creates_nothing(make_client: MakeClient) -> None:
    client = await make_client(server={"trusted_proxies": ["127.0.0.1"]})
    resp = await client.post(
        "/v1/sessions",
        json={"tutor_id": "t", "student_id": "s"},
        headers={**AUTH, "X-Forwarded-Host": "evil.example/path?x=<script>"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "bad_host"
    assert len(client.server.app[REGISTRY]) == 0


async def test_list_get_and_delete_never_show_tokens(client: TestClient) -> None:
    created = await new_session(client)
    token = created["engine_token"]

    resp = await client.get("/v1/sessions", headers=AUTH)
    text = await resp.text()
    assert resp.status == 200
    assert token not in text and "token" not in text
    listing = await resp.json()
    assert listing["count"] == 1
    assert listing["sessions"][0]["session_id"] == created["session_id"]

    resp = await client.get(f"/v1/sessions/{created['session_id']}", headers=AUTH)
    one = await resp.json()
    assert token not in await resp.text()
    assert one["status"] == "active" and one["connection"] == "created"
    assert one["history"] == []

    resp = await client.delete(f"/v1/sessions/{created['session_id']}", headers=AUTH)
    assert resp.status == 204
    resp = await client.get(f"/v1/sessions/{created['session_id']}", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"] == "session_not_found"
    resp = await client.delete(f"/v1/sessions/{created['session_id']}", headers=AUTH)
    assert resp.status == 404


async def test_full_engine_answers_503_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(engine={"max_sessions": 2})
    first = await new_session(client)
    await new_session(client)
    resp = await client.post(
        "/v1/sessions", json={"tutor_id": "t", "student_id": "s"}, headers=AUTH
    )
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert (await resp.json())["error"] == "at_capacity"
    # Ending one frees its place.
    await client.delete(f"/v1/sessions/{first['session_id']}", headers=AUTH)
    await new_session(client)


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"student_id": "s"}, 422, "missing_field", "tutor_id"),
        ({"tutor_id": "t"}, 422, "missing_field", "student_id"),
        ({"tutor_id": True, "student_id": "s"}, 422, "invalid_field", "tutor_id"),
        ({"tutor_id": ["t"], "student_id": "s"}, 422, "invalid_field", "tutor_id"),
        ({"tutor_id": "", "student_id": "s"}, 422, "invalid_field", "tutor_id"),
        ({"tutor_id": "t" * 129, "student_id": "s"}, 422, "invalid_field", "tutor_id"),
        ({"tutor_id": "t", "student_id": "s", "kb_id": {}}, 422, "invalid_field", "kb_id"),
        ({"tutor_id": "t", "student_id": "s", "extra": 1}, 422, "unknown_field", "extra"),
        ({"tutor_id": "t", "student_id": "s", "tutor": "Ada"}, 422, "invalid_field", "tutor"),
        (
            {"tutor_id": "t", "student_id": "s", "tutor": {"name": 5}},
            422,
            "invalid_field",
            "tutor.name",
        ),
        (
            {"tutor_id": "t", "student_id": "s", "tutor": {"persona": "x"}},
            422,
            "unknown_field",
            "tutor.persona",
        ),
        (
            {"tutor_id": "t", "student_id": "s", "tutor": {"greeting": "x" * 2001}},
            422,
            "invalid_field",
            "tutor.greeting",
        ),
    ],
)
async def test_create_session_validation_names_the_field(
    client: TestClient, body: dict, status: int, code: str, field: str
) -> None:
    resp = await client.post("/v1/sessions", json=body, headers=AUTH)
    assert resp.status == status
    error = await resp.json()
    assert error["error"] == code
    assert error["field"] == field
    assert len(client.server.app[REGISTRY]) == 0


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b"tutor_id=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{" + b" " * 300_000 + b"}", "application/json", 413, "body_too_large"),
    ],
)
async def test_malformed_bodies_get_json_errors(
    client: TestClient, data: bytes, content_type: str, status: int, code: str
) -> None:
    resp = await client.post(
        "/v1/sessions", data=data, headers={**AUTH, "Content-Type": content_type}
    )
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == code
    # The server keeps serving.
    assert (await client.get("/health")).status == 200


async def test_unknown_routes_and_methods_answer_json(client: TestClient) -> None:
    resp = await client.get("/v2/nothing")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    resp = await client.put("/v1/sessions", headers=AUTH)
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"


async def test_numeric_ids_are_accepted_as_opaque_strings(client: TestClient) -> None:
    body = await new_session(client, tutor_id=12, student_id=34)
    resp = await client.get(f"/v1/sessions/{body['session_id']}", headers=AUTH)
    one = await resp.json()
    assert (one["tutor_id"], one["student_id"]) == ("12", "34")
