"""The OpenAPI document (tutorsrv/openapi.py, served at /api/openapi.json) is kept true: it
names exactly the routes each role registers, it is valid OpenAPI 3.1, and Schemathesis,
generating requests from it against a live `tutorsrv run --role all`, finds no 5xx and no
answer that the document does not describe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tutorsrv import __version__, openapi
from tutorsrv.app import create_app

from .browser import api, running_server
from .conftest import API_KEY, AUTH, MakeClient, make_config
from .web_helpers import PASSWORD, create_student, create_tutor, register_admin, start_session

# Served by the app but not part of the HTTP API: pages, their files and the WebSocket.
NOT_DESCRIBED = {
    "/",
    "/admin",
    "/tutors/{tutor_id}/chat",
    "/test",
    "/docs",
    "/ws/ws/{session_id}",
    "/ws/{session_id}",
}


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route, sub-applications' included (their resources already
    carry the prefix), without HEAD (aiohttp adds it to every GET) and the static files."""
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            found |= registered_operations(resource._app)
            continue
        if isinstance(resource, web.StaticResource):
            continue
        for route in resource:
            if route.method != "HEAD":
                found.add((route.method, resource.canonical))
    return found


def described_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }


ROLE_SETTINGS: dict[str, dict[str, Any]] = {
    "engine": {},
    "web": {"web": {"engine_urls": ["http://engine.example:9000"]}},
    "all": {},
}


@pytest.mark.parametrize("role", ["engine", "web", "all"])
def test_the_document_names_exactly_the_routes_of_each_role(role: str) -> None:
    app = create_app(make_config(**ROLE_SETTINGS[role]), role)
    routes = {(m, p) for m, p in registered_operations(app) if p not in NOT_DESCRIBED}
    document = openapi.document(
        web=role != "engine", engine=role != "web", version=__version__, models=["scripted"]
    )
    assert described_operations(document) == routes


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document(web=True, engine=True, version=__version__, models=["m"])
    assert document["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(document).validate()
    # Every operation answers its errors in the one documented shape.
    for path, item in document["paths"].items():
        for method in ("get", "put", "post", "patch", "delete"):
            if (operation := item.get(method)) is None:
                continue
            assert "default" in operation["responses"], (method, path)
            assert operation["operationId"] and operation["tags"], (method, path)


async def test_each_role_serves_its_document_and_the_reference_page(
    make_client: MakeClient,
) -> None:
    client = await make_client("all")
    resp = await client.get("/api/openapi.json")  # no token: the description is public
    assert resp.status == 200
    served = await resp.json()
    assert served == openapi.document(
        web=True, engine=True, version=__version__, models=["scripted"]
    )
    resp = await client.get("/docs", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/static/api.html"
    page = await client.get("/static/api.html")
    assert page.status == 200 and "/static/api.js" in await page.text()
    engine = await make_client("engine")
    served = await (await engine.get("/api/openapi.json")).json()
    assert set(served["paths"]) == {"/health", "/metrics", "/api/openapi.json"} | {
        p for p in served["paths"] if p.startswith("/v1/")
    }
    assert not [p for p in served["paths"] if p.startswith(("/api/auth", "/internal"))]
    assert (await engine.get("/docs")).status == 404  # the engine serves no pages


# --- what the fuzzing found, kept fixed -------------------------------------------------


async def test_other_methods_on_the_student_login_path_are_405(make_client: MakeClient) -> None:
    """They matched /api/students/{student_id} and, the login path being public, reached the
    handler without an account: 500."""
    client = await make_client("all")
    for method in ("GET", "PATCH", "DELETE"):
        resp = await client.request(method, "/api/students/login")
        assert resp.status == 405, method
        assert (await resp.json())["error"] == "method_not_allowed"
        assert "POST" in resp.headers["Allow"]


async def test_a_turn_with_a_student_message_needs_its_time(make_client: MakeClient) -> None:
    """Stored without ``student_at``, it made the session's transcript answer 500 for good."""
    client = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    turn = {
        "session_id": session["session_id"],
        "response_id": "r_1",
        "student_text": "hello?",
        "reply_text": "Hello!",
        "reply_at": "2026-11-24T08:00:01.000Z",
    }
    for missing in ({}, {"student_at": ""}, {"student_at": None}):
        resp = await client.post("/internal/v1/turns", json={**turn, **missing}, headers=AUTH)
        assert resp.status == 422 and (await resp.json())["field"] == "student_at"
    path = f"/api/sessions/{session['session_id']}/messages"
    assert (await client.get(path, headers=admin["headers"])).status == 200
    # A reply with no student message (a greeting) needs none.
    greeting = {k: v for k, v in turn.items() if k != "student_text"}
    resp = await client.post("/internal/v1/turns", json=greeting, headers=AUTH)
    assert resp.status == 201


async def test_whole_numbers_written_as_floats_count_as_integers(
    make_client: MakeClient,
) -> None:
    """JSON (and JSON Schema) make no difference between 64 and 64.0; 64.5 is refused."""
    client = await make_client("all")
    admin = await register_admin(client)
    resp = await client.post(
        "/api/tutors", json={"name": "Ada", "max_reply_tokens": 64.0}, headers=admin["headers"]
    )
    assert resp.status == 201 and (await resp.json())["max_reply_tokens"] == 64
    resp = await client.post(
        "/api/tutors", json={"name": "Ada", "max_reply_tokens": 64.5}, headers=admin["headers"]
    )
    assert resp.status == 422
    resp = await client.post(
        "/v1/sessions",
        json={"tutor_id": 7.0, "student_id": 8, "tutor": {"max_reply_tokens": 32.0}},
        headers=AUTH,
    )
    assert resp.status == 201, await resp.text()
    one = await (
        await client.get(f"/v1/sessions/{(await resp.json())['session_id']}", headers=AUTH)
    ).json()
    assert (one["tutor_id"], one["student_id"]) == ("7", "8")
    for bad in ({"tutor_id": 7.5}, {"tutor_id": True}, {"tutor": {"max_reply_tokens": 1e9}}):
        body = {"tutor_id": "t", "student_id": "s", **bad}
        assert (await client.post("/v1/sessions", json=body, headers=AUTH)).status == 422


# --- Schemathesis against a live server ------------------------------------------------------


class Live:
    def __init__(self, base: str, account_token: str) -> None:
        self.base = base
        self.account = {"Authorization": f"Bearer {account_token}"}
        self.service = {"Authorization": f"Bearer {API_KEY}"}

    def headers_for(self, path: str) -> dict[str, str]:
        if path.startswith(("/v1/", "/internal/")):
            return self.service
        return self.account if path.startswith("/api/") else {}


@pytest.fixture(scope="module")
def live(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    env = {
        "TUTORSRV_LLM_BACKEND": "scripted",
        "TUTORSRV_ENGINE_API_KEY": API_KEY,
        # Room for every session the generated requests start: a full engine's 503 is
        # documented, but Schemathesis counts every 5xx as a failure.
        "TUTORSRV_ENGINE_MAX_SESSIONS": "1000",
    }
    folder: Path = tmp_path_factory.mktemp("openapi-server")
    with running_server(postgres_url, folder, env) as server:
        status, login = api(
            server.base,
            "POST",
            "/api/auth/register",
            body={"email": "fuzz@school.example", "password": PASSWORD},
        )
        assert status == 201, login
        yield Live(server.base, login["access_token"])


# The document the live server below serves (the same function builds it; the test above
# checks that what a server serves is this). Built at import: Schemathesis makes one test per
# operation when the tests are collected.
REFUSALS = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
LIVE_DOCUMENT = openapi.document(web=True, engine=True, version=__version__, models=["scripted"])
schema = schemathesis.openapi.from_dict(
    LIVE_DOCUMENT,
    config=SchemathesisConfig.from_dict(
        # Data the document refuses must be refused. 413 is a refusal too: a string of
        # control characters that fits its maxLength can pass the body limit once escaped.
        {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
    ),
)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_live_api_matches_its_document(case: Any, live: Live) -> None:
    case.call_and_validate(base_url=live.base, headers=live.headers_for(case.path))


@pytest.mark.browser
def test_the_reference_page_renders_the_document(live: Live) -> None:
    from playwright.sync_api import sync_playwright

    from .browser import launch

    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.base + "/docs")  # the old backend's address leads here
            assert page.url.endswith("/static/api.html")
            page.wait_for_selector("#api-operations section")
            headings = page.locator("#api-operations h3").all_inner_texts()
            assert "POST /api/tutors/{tutor_id}/sessions" in headings
            assert len(headings) == len(described_operations(LIVE_DOCUMENT))
            assert "OpenAPI 3.1" in page.locator("#api-status").inner_text()
            assert not errors, errors
        finally:
            browser.close()
