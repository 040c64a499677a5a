"""Tutors: persona, subject, greeting, language, voice, and the model they talk through.

Admins manage them; students may list and read them (without the persona)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ... import validation as v
from ...appkeys import DB
from ...compact_json import json_response
from ...http_errors import APIError
from ...registry import REPLY_TOKENS
from ..security import principal, require_admin
from ..served_models import model_names
from .common import path_id, row_json
from .kbs import owned_kb_id
from .sessions import end_live_sessions

# field: (max length, required on create)
FIELDS: dict[str, tuple[int, bool]] = {
    "name": (200, True),
    "subject": (200, False),
    "system_prompt": (20_000, False),
    "greeting": (2_000, False),
    "language": (32, False),
    "voice": (200, False),
    "model": (200, False),
}
# What a student may read of a tutor: not the persona, which is the admin's to tune.
STUDENT_COLUMNS = "id, name, subject, greeting, language, voice"
# What PUT (a replacement) gives the fields it was not sent; the table's defaults.
DEFAULTS: dict[str, Any] = {
    "subject": "",
    "system_prompt": "",
    "greeting": "",
    "language": "en",
    "voice": "",
    "model": None,
    "max_reply_tokens": None,
    "kb_id": None,
}
COLUMNS = (
    "id, name, subject, system_prompt, greeting, language, voice, model, max_reply_tokens,"
    " kb_id,"
    " created_at, updated_at"
)


async def _read(request: web.Request, *, partial: bool) -> dict[str, Any]:
    body = await v.json_body(request)
    v.only_fields(body, (*FIELDS, "kb_id", "max_reply_tokens"))
    values: dict[str, Any] = {}
    if "max_reply_tokens" in body:
        values["max_reply_tokens"] = v.integer(
            body, "max_reply_tokens", low=REPLY_TOKENS[0], high=REPLY_TOKENS[1], nullable=True
        )
    if "kb_id" in body:
        # The tutor's default knowledge base: one of this admin's, or null for none.
        raw = v.text(body, "kb_id", max_len=64, nullable=True)
        values["kb_id"] = None
        if raw is not None:
            tenant = require_admin(request).tenant_id
            values["kb_id"] = await owned_kb_id(request.app[DB], raw, tenant)
    for key, (max_len, required) in FIELDS.items():
        value = v.text(
            body, key, required=required and not partial, max_len=max_len, nullable=key == "model"
        )
        if key in body:
            if key == "name" and not value:
                raise APIError(422, "invalid_field", "'name' must not be empty", field="name")
            values[key] = value if (value is not None or key == "model") else ""
    if values.get("model"):
        allowed = model_names(request.app)
        if values["model"] not in allowed:
            raise APIError(
                422,
                "unknown_model",
                f"no model {values['model']!r} is served; choose one of: {', '.join(allowed)} "
                "(or null for the default)",
                field="model",
            )
    return values


async def list_tutors(request: web.Request) -> web.Response:
    """Admins see whole tutors; students see their organisation's tutors without the persona
    (what they need to pick one and start a session)."""
    who = principal(request)
    columns = COLUMNS if who.is_admin else STUDENT_COLUMNS
    rows = await request.app[DB].fetch(
        f"SELECT {columns} FROM tutors WHERE admin_id = $1 ORDER BY created_at", who.tenant_id
    )
    return json_response({"tutors": [row_json(r) for r in rows]})


async def create_tutor(request: web.Request) -> web.Response:
    who = require_admin(request)
    values = await _read(request, partial=False)
    values.setdefault("language", "en")
    columns = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(2, len(values) + 2))
    row = await request.app[DB].fetchrow(
        f"INSERT INTO tutors (admin_id, {columns}) VALUES ($1, {params}) RETURNING {COLUMNS}",
        who.tenant_id,
        *values.values(),
    )
    return json_response(row_json(row), status=201)


async def get_tutor(request: web.Request) -> web.Response:
    who = principal(request)
    tutor_id = path_id(request.match_info["tutor_id"], "tutor")
    columns = COLUMNS if who.is_admin else STUDENT_COLUMNS
    row = await request.app[DB].fetchrow(
        f"SELECT {columns} FROM tutors WHERE id = $1 AND admin_id = $2", tutor_id, who.tenant_id
    )
    if row is None:
        raise APIError(404, "tutor_not_found", "no such tutor")
    return json_response(row_json(row))


async def update_tutor(request: web.Request) -> web.Response:
    who = require_admin(request)
    tutor_id = path_id(request.match_info["tutor_id"], "tutor")
    # PUT replaces (name required), PATCH changes only the fields sent.
    values = await _read(request, partial=request.method == "PATCH")
    if request.method == "PUT":
        values = {**DEFAULTS, **values}
    if not values:
        raise APIError(422, "missing_field", "send at least one field to change")
    sets = ", ".join(f"{key} = ${i}" for i, key in enumerate(values, start=3))
    row = await request.app[DB].fetchrow(
        f"UPDATE tutors SET {sets}, updated_at = now() WHERE id = $1 AND admin_id = $2 "
        f"RETURNING {COLUMNS}",
        tutor_id,
        who.tenant_id,
        *values.values(),
    )
    if row is None:
        raise APIError(404, "tutor_not_found", "no such tutor")
    return json_response(row_json(row))


async def delete_tutor(request: web.Request) -> web.Response:
    who = require_admin(request)
    tutor_id = path_id(request.match_info["tutor_id"], "tutor")
    await end_live_sessions(request, "tutor_id", tutor_id)
    result = await request.app[DB].execute(
        "DELETE FROM tutors WHERE id = $1 AND admin_id = $2", tutor_id, who.tenant_id
    )
    if result == "DELETE 0":
        raise APIError(404, "tutor_not_found", "no such tutor")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/tutors", list_tutors)
    app.router.add_post("/api/tutors", create_tutor)
    app.router.add_get("/api/tutors/{tutor_id}", get_tutor)
    app.router.add_put("/api/tutors/{tutor_id}", update_tutor)
    app.router.add_patch("/api/tutors/{tutor_id}", update_tutor)
    app.router.add_delete("/api/tutors/{tutor_id}", delete_tutor)
