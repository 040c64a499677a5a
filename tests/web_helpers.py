"""Helpers for web-role tests: accounts, tutors, students, sessions through the API."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from tutorsrv.engine.protocol import SUBPROTOCOL

PASSWORD = "correct horse battery"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register_admin(client: TestClient, email: str | None = None) -> dict[str, Any]:
    """Register an admin; returns {email, token, headers, id}."""
    email = email or f"admin-{uuid.uuid4().hex[:8]}@school.example"
    resp = await client.post(
        "/api/auth/register", json={"email": email, "password": PASSWORD, "name": "Admin"}
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return {
        "email": email,
        "token": body["access_token"],
        "headers": bearer(body["access_token"]),
        "id": body["user_id"],
    }


async def create_tutor(client: TestClient, admin: dict[str, Any], **fields: Any) -> dict:
    payload = {"name": "Ada", "subject": "maths", "greeting": "Hello, I am Ada.", **fields}
    resp = await client.post("/api/tutors", json=payload, headers=admin["headers"])
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def create_student(client: TestClient, admin: dict[str, Any], **fields: Any) -> dict:
    payload = {
        "email": f"student-{uuid.uuid4().hex[:8]}@school.example",
        "name": "Sam",
        "password": PASSWORD,
        **fields,
    }
    resp = await client.post("/api/students", json=payload, headers=admin["headers"])
    assert resp.status == 201, await resp.text()
    student = await resp.json()
    student["password"] = payload["password"]
    return student


async def student_login(client: TestClient, student: dict[str, Any]) -> dict[str, str]:
    resp = await client.post(
        "/api/students/login", json={"email": student["email"], "password": student["password"]}
    )
    assert resp.status == 200, await resp.text()
    return bearer((await resp.json())["access_token"])


async def start_session(
    client: TestClient, admin: dict[str, Any], tutor: dict, student: dict
) -> dict[str, Any]:
    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions",
        json={"student_id": student["id"]},
        headers=admin["headers"],
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def ask_once(
    client: TestClient, admin: dict[str, Any], tutor: dict, student: dict, question: str
) -> list[dict[str, Any]]:
    """Start a session of ``tutor`` for ``student``, ask one question on its socket, and
    return every message after the ``session`` frame up to the reply's ``response_done``."""
    from .conftest import receive_json, receive_until, ws_path

    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    try:
        assert (await receive_json(ws))["type"] == "session"
        await ws.send_json({"type": "text", "content": question})
        return await receive_until(ws, "response_done", wait=120)
    finally:
        await ws.close()


# --- against real processes (an aiohttp client session and a base URL) ----------------------


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[int, Any]:
    """One HTTP request; returns (status, JSON body or None)."""
    all_headers = {"Authorization": f"Bearer {token}"} if token else {}
    all_headers.update(headers or {})
    async with http.request(method, url, headers=all_headers, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def set_up_tenant(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """An admin (a@s.example), a tutor with a greeting and a student, through the API."""
    account = {"email": "a@s.example", "password": PASSWORD}
    status, body = await call(http, "POST", base + "/api/auth/register", json=account)
    assert status == 201, body
    token = body["access_token"]
    status, tutor = await call(
        http, "POST", base + "/api/tutors", token, json={"name": "Ada", "greeting": "Hi there."}
    )
    assert status == 201, tutor
    status, student = await call(
        http,
        "POST",
        base + "/api/students",
        token,
        json={"email": "s@s.example", "name": "Sam", "password": PASSWORD},
    )
    assert status == 201, student
    return {"token": token, "tutor": tutor, "student": student}
