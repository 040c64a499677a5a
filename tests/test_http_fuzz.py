"""Fuzz the HTTP API with hypothesis: random JSON (and raw bytes) to the routes that take a
body, with a valid admin token, a bad one or none, against `--role all` on a real database.

Whatever arrives, the answer is a documented one: never a 5xx, and every error a JSON body
with an ``error`` code (docs/api.md); nothing is logged as an error; and afterwards the
server still serves the admin normally."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tutorsrv.app import create_app

from .conftest import API_KEY, create_database, drop_database, make_config
from .test_ws_fuzz import ServerErrors, any_text, json_values
from .web_helpers import register_admin

FIELDS = [
    "name",
    "email",
    "password",
    "subject",
    "system_prompt",
    "greeting",
    "language",
    "voice",
    "model",
    "max_reply_tokens",
    "kb_id",
    "student_id",
    "tutor_id",
    "tenant_id",
    "tutor",
    "description",
    "query",
    "k",
]
ROUTES = [
    ("POST", "/api/auth/register"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/students/login"),
    ("POST", "/api/tutors"),
    ("PUT", "/api/tutors/{tutor}"),
    ("PATCH", "/api/tutors/{tutor}"),
    ("POST", "/api/tutors/{tutor}/sessions"),
    ("POST", "/api/students"),
    ("PATCH", "/api/students/{student}"),
    ("POST", "/api/kbs"),
    ("PATCH", "/api/kbs/{kb}"),
    ("POST", "/v1/sessions"),
]
# Bodies that look like the API's get further into the handlers than random JSON.
values = json_values | any_text | st.integers(-(10**6), 10**6) | st.sampled_from(["", "x" * 300])
api_like = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6) | st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=6
)
# Mostly API-like objects (hypothesis picks each branch of a union alike, so it is listed
# thrice), sometimes any JSON value, sometimes bytes that are not JSON at all.
api_body = api_like.map(lambda d: json.dumps(d).encode())
bodies = (
    api_body
    | api_body
    | api_body
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
)
ids = st.sampled_from(
    ["real", "real", "real", "00000000-0000-0000-0000-000000000000", "x", "%00", "1" * 300]
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes, str]:
    method, path = draw(st.sampled_from(ROUTES))
    who = draw(st.sampled_from(["admin", "admin", "admin", "admin", "bad", "none", "service"]))
    if path.startswith("/v1/"):
        who = draw(st.sampled_from(["service", "service", "bad"]))
    return method, path, draw(bodies), who


def test_random_bodies_never_get_a_server_error(postgres_url: str, tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    errors = ServerErrors()
    logging.getLogger().addHandler(errors)
    client: TestClient | None = None
    name, url = loop.run_until_complete(create_database(postgres_url))
    try:
        config = make_config(
            server={"state_dir": str(tmp_path / "state"), "registration_rate_per_ip_per_hour": 0},
            database={"url": url},
        )
        client = loop.run_until_complete(_start(config))
        admin = loop.run_until_complete(register_admin(client))
        real = loop.run_until_complete(_real_ids(client, admin))
        tokens = {
            "admin": admin["headers"],
            "bad": {"Authorization": "Bearer not.a.token"},
            "none": {},
            "service": {"Authorization": f"Bearer {API_KEY}"},
        }

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(request=requests(), which=ids)
        def fuzz(request: tuple[str, str, bytes, str], which: str) -> None:
            method, path, body, who = request
            target = path.format(**{k: (v if which == "real" else which) for k, v in real.items()})
            headers = {**tokens[who], "Content-Type": "application/json"}
            assert client is not None
            status, answer = loop.run_until_complete(
                asyncio.wait_for(_call(client, method, target, body, headers), 30)
            )
            assert status < 500, (method, target, body[:200], status, answer)
            if status >= 400:
                assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer

        fuzz()
        assert not errors.records, [r.getMessage() for r in errors.records]
        # The server still does its job for the admin.
        resp = loop.run_until_complete(client.get("/api/tutors", headers=admin["headers"]))
        assert resp.status == 200
    finally:
        logging.getLogger().removeHandler(errors)
        if client is not None:
            loop.run_until_complete(client.close())
        loop.run_until_complete(drop_database(postgres_url, name))
        loop.close()


async def _start(config: Any) -> TestClient:
    client = TestClient(TestServer(create_app(config, "all")))
    await client.start_server()
    return client


async def _real_ids(client: TestClient, admin: dict[str, Any]) -> dict[str, str]:
    h = admin["headers"]
    tutor = await (await client.post("/api/tutors", json={"name": "Ada"}, headers=h)).json()
    student = await (
        await client.post(
            "/api/students",
            json={"email": "s@school.example", "name": "Sam", "password": "a long password"},
            headers=h,
        )
    ).json()
    kb = await (await client.post("/api/kbs", json={"name": "Notes"}, headers=h)).json()
    return {"tutor": tutor["id"], "student": student["id"], "kb": kb["id"]}


async def _call(
    client: TestClient, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with client.request(method, path, data=body, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text
