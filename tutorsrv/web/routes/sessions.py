"""Sessions: start one on an engine, list them, read transcripts, end them.

Admins act for any student of theirs; a student acts only for itself and only with its own
admin's tutors. Another tenant's ids answer 404 exactly as missing ones do.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from ... import validation as v
from ...appkeys import DB, ENGINE_CLIENT
from ...compact_json import json_response
from ...engine.public_url import engine_url
from ...http_errors import APIError
from ...limits import limit_session_start
from ...registry import TutorProfile, is_session_id
from ..engine_client import EngineUnavailable, ShareExceeded
from ..proxy import proxied_base
from ..security import Principal, principal
from ..served_models import served_model
from ..transcripts import session_messages
from .common import path_id, row_json
from .kbs import owned_kb_id

COLUMNS = (
    "s.id, s.tutor_id, t.name AS tutor_name, s.student_id, st.name AS student_name, s.kb_id,"
    # The engine ends a session by itself at its maximum duration; say so without asking it.
    " CASE WHEN s.status = 'active' AND s.expires_at <= now() THEN 'expired' ELSE s.status END"
    " AS status, s.created_at, s.expires_at, s.ended_at,"
    " (SELECT count(*) FROM turns WHERE turns.session_id = s.id) AS turns"
)
FROM = "sessions s JOIN tutors t ON t.id = s.tutor_id JOIN students st ON st.id = s.student_id"


def _scope(who: Principal, first_param: int) -> tuple[str, list[Any]]:
    """The WHERE clause that limits sessions to what ``who`` may see."""
    if who.is_admin:
        return f"s.admin_id = ${first_param}", [who.tenant_id]
    return (
        f"s.admin_id = ${first_param} AND s.student_id = ${first_param + 1}",
        [who.tenant_id, who.user_id],
    )


async def create_session(request: web.Request) -> web.Response:
    who = principal(request)
    limit_session_start(request, f"{who.role}:{who.user_id}")
    tutor_id = path_id(request.match_info["tutor_id"], "tutor")
    body = await v.json_body(request)
    db = request.app[DB]
    if who.is_admin:
        v.only_fields(body, ("student_id", "kb_id"))
        raw_student = v.text(body, "student_id", required=True, max_len=64)
        try:
            student_id = uuid.UUID(raw_student)
        except ValueError:
            raise APIError(404, "student_not_found", "no such student") from None
    else:
        v.only_fields(body, ("kb_id",))
        student_id = who.user_id
    kb_id = v.text(body, "kb_id", max_len=64, nullable=True)

    tutor = await db.fetchrow(
        "SELECT id, name, system_prompt, greeting, voice, language, model, max_reply_tokens,"
        " kb_id FROM tutors"
        " WHERE id = $1 AND admin_id = $2",
        tutor_id,
        who.tenant_id,
    )
    if tutor is None:
        raise APIError(404, "tutor_not_found", "no such tutor")
    student = await db.fetchrow(
        "SELECT id FROM students WHERE id = $1 AND admin_id = $2", student_id, who.tenant_id
    )
    if student is None:
        raise APIError(404, "student_not_found", "no such student")
    if kb_id is not None:
        await owned_kb_id(db, kb_id, who.tenant_id)
    elif "kb_id" not in body and tutor["kb_id"] is not None:
        # Absent: the tutor's default knowledge base. An explicit null means none.
        kb_id = str(tutor["kb_id"])

    # web.proxy_websocket: the browser connects to this web role (its own Host /
    # X-Forwarded-*), which relays to the engine. Worked out first: a Host that cannot make a
    # URL fails before any engine session exists.
    proxy_base = proxied_base(request)
    engines = request.app[ENGINE_CLIENT]
    profile = TutorProfile(
        name=tutor["name"],
        system_prompt=tutor["system_prompt"],
        greeting=tutor["greeting"],
        voice=tutor["voice"],
        language=tutor["language"],
        model=served_model(request, tutor["model"]),
        max_reply_tokens=tutor["max_reply_tokens"] or 0,
    )
    try:
        created = await engines.create_session(
            request,
            tutor_id=str(tutor_id),
            student_id=str(student_id),
            kb_id=kb_id,
            tutor=profile,
            tenant_id=str(who.tenant_id),
        )
    except ShareExceeded as e:
        raise APIError(
            429,
            "too_many_sessions",
            f"{e}: close one (or wait for it to end) before starting another",
            headers={"Retry-After": "10"},
        ) from None
    except EngineUnavailable as e:
        raise APIError(
            503,
            "engine_unavailable",
            f"no tutoring engine is available: {e}",
            headers={"Retry-After": "10"},
        ) from None
    try:
        await db.execute(
            "INSERT INTO sessions (id, admin_id, tutor_id, student_id, kb_id, engine, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::text::timestamptz)",
            created.session_id,
            who.tenant_id,
            tutor_id,
            student_id,
            kb_id,
            created.engine,
            created.expires_at,
        )
    except BaseException:
        # Leave nothing half-created: the engine session goes too.
        try:
            await engines.delete_session(created.engine, created.session_id)
        except EngineUnavailable:
            pass
        raise
    return json_response(
        {
            "session_id": created.session_id,
            "engine_url": (
                created.engine_url
                if proxy_base is None
                else engine_url(proxy_base, created.session_id, created.engine_token)
            ),
            "engine_token": created.engine_token,
            # The old API's word for a session that was just started (its clients check it).
            "status": "active",
            "expires_at": created.expires_at,
            "tutor_id": str(tutor_id),
            "student_id": str(student_id),
        },
        status=201,
    )


def _session_id(request: web.Request) -> str:
    """Engine session ids are 32 hex digits; anything else is simply not found."""
    raw = request.match_info["session_id"]
    if not is_session_id(raw):
        raise APIError(404, "session_not_found", "no such session")
    return raw


async def _find(request: web.Request) -> dict[str, Any]:
    who = principal(request)
    where, params = _scope(who, 2)
    row = await request.app[DB].fetchrow(
        f"SELECT {COLUMNS}, s.engine FROM {FROM} WHERE s.id = $1 AND {where}",
        _session_id(request),
        *params,
    )
    if row is None:
        raise APIError(404, "session_not_found", "no such session")
    return row_json(row)


async def list_sessions(request: web.Request) -> web.Response:
    who = principal(request)
    where, params = _scope(who, 1)
    rows = await request.app[DB].fetch(
        f"SELECT {COLUMNS} FROM {FROM} WHERE {where} ORDER BY s.created_at DESC LIMIT 500",
        *params,
    )
    return json_response({"sessions": [row_json(r) for r in rows]})


async def get_session(request: web.Request) -> web.Response:
    session = await _find(request)
    session.pop("engine")
    return json_response(session)


async def get_messages(request: web.Request) -> web.Response:
    session = await _find(request)
    messages = await session_messages(request.app[DB], session["id"])
    return json_response({"session_id": session["id"], "messages": messages})


async def delete_session(request: web.Request) -> web.Response:
    session = await _find(request)
    if session["status"] == "active":
        try:
            await request.app[ENGINE_CLIENT].delete_session(session["engine"], session["id"])
        except EngineUnavailable as e:
            raise APIError(
                503, "engine_unavailable", f"could not end the session on its engine: {e}"
            ) from None
        await request.app[DB].execute(
            "UPDATE sessions SET status = 'ended', ended_at = now() WHERE id = $1", session["id"]
        )
    return web.Response(status=204)


async def end_live_sessions(request: web.Request, column: str, owner: uuid.UUID) -> None:
    """End on their engines the live sessions of a tutor or student about to be deleted, so
    no conversation goes on that nobody can see or stop. Raises 503 if an engine is away."""
    assert column in ("tutor_id", "student_id")
    who = principal(request)
    rows = await request.app[DB].fetch(
        f"SELECT id, engine FROM sessions WHERE {column} = $1 AND admin_id = $2"
        " AND status = 'active'",
        owner,
        who.tenant_id,
    )
    for row in rows:
        try:
            await request.app[ENGINE_CLIENT].delete_session(row["engine"], row["id"])
        except EngineUnavailable as e:
            raise APIError(
                503, "engine_unavailable", f"could not end a live session on its engine: {e}"
            ) from None


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/tutors/{tutor_id}/sessions", create_session)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session_id}", get_session)
    app.router.add_get("/api/sessions/{session_id}/messages", get_messages)
    app.router.add_delete("/api/sessions/{session_id}", delete_session)
    # The path the old web server used; kept so existing clients keep working.
    app.router.add_delete("/api/tutors/sessions/{session_id}", delete_session)
