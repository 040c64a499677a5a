"""Helpers for web-role tests: accounts, tutors, students, sessions through the API."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp.test_utils import TestClient

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
