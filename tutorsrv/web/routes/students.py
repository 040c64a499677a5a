"""Students (admin only): enrol, list, rename, reset a password, remove."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from ... import validation as v
from ...appkeys import DB
from ...compact_json import json_response
from ...http_errors import APIError
from ..security import hash_password, require_admin
from .common import path_id, row_json
from .sessions import end_live_sessions

COLUMNS = "id, email, name, created_at, updated_at"
EMAIL_TAKEN = "a student with this email is already enrolled"


async def _read(body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    v.only_fields(body, ("email", "name", "password"))
    values: dict[str, Any] = {}
    if "email" in body or not partial:
        values["email"] = v.email(body)
    if "name" in body or not partial:
        values["name"] = v.text(body, "name", required=True, max_len=200)
    if "password" in body or not partial:
        values["password_hash"] = await hash_password(v.password(body))  # type: ignore[arg-type]
    return values


async def list_students(request: web.Request) -> web.Response:
    who = require_admin(request)
    rows = await request.app[DB].fetch(
        f"SELECT {COLUMNS} FROM students WHERE admin_id = $1 ORDER BY created_at", who.tenant_id
    )
    return json_response({"students": [row_json(r) for r in rows]})


async def create_student(request: web.Request) -> web.Response:
    who = require_admin(request)
    values = await _read(await v.json_body(request), partial=False)
    try:
        row = await request.app[DB].fetchrow(
            f"INSERT INTO students (admin_id, email, name, password_hash) "
            f"VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}",
            who.tenant_id,
            values["email"],
            values["name"],
            values["password_hash"],
        )
    except asyncpg.UniqueViolationError:
        raise APIError(409, "email_taken", EMAIL_TAKEN, field="email") from None
    return json_response(row_json(row), status=201)


async def get_student(request: web.Request) -> web.Response:
    who = require_admin(request)
    student_id = path_id(request.match_info["student_id"], "student")
    row = await request.app[DB].fetchrow(
        f"SELECT {COLUMNS} FROM students WHERE id = $1 AND admin_id = $2",
        student_id,
        who.tenant_id,
    )
    if row is None:
        raise APIError(404, "student_not_found", "no such student")
    return json_response(row_json(row))


async def update_student(request: web.Request) -> web.Response:
    who = require_admin(request)
    student_id = path_id(request.match_info["student_id"], "student")
    values = await _read(await v.json_body(request), partial=True)
    if not values:
        raise APIError(422, "missing_field", "send at least one field to change")
    sets = ", ".join(f"{key} = ${i}" for i, key in enumerate(values, start=3))
    if "password_hash" in values:
        # A reset password revokes the student's tokens: whoever had one must log in again.
        sets += ", token_version = token_version + 1"
    try:
        row = await request.app[DB].fetchrow(
            f"UPDATE students SET {sets}, updated_at = now() WHERE id = $1 AND admin_id = $2 "
            f"RETURNING {COLUMNS}",
            student_id,
            who.tenant_id,
            *values.values(),
        )
    except asyncpg.UniqueViolationError:
        raise APIError(409, "email_taken", EMAIL_TAKEN, field="email") from None
    if row is None:
        raise APIError(404, "student_not_found", "no such student")
    return json_response(row_json(row))


async def delete_student(request: web.Request) -> web.Response:
    who = require_admin(request)
    student_id = path_id(request.match_info["student_id"], "student")
    await end_live_sessions(request, "student_id", student_id)
    result = await request.app[DB].execute(
        "DELETE FROM students WHERE id = $1 AND admin_id = $2", student_id, who.tenant_id
    )
    if result == "DELETE 0":
        raise APIError(404, "student_not_found", "no such student")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/students", list_students)
    app.router.add_post("/api/students", create_student)
    # Any segment but "login": /api/students/login is its own route (POST), and its other
    # methods must answer 405, not "no such student".
    one = "/api/students/{student_id:(?!login$)[^/]+}"
    app.router.add_get(one, get_student)
    app.router.add_patch(one, update_student)
    app.router.add_delete(one, delete_student)
