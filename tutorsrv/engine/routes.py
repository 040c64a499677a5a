"""Engine HTTP API: health, and the session API that only trusted callers (the web role,
holding the engine's service key) may use. Reference: docs/api.md."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from ..appkeys import CONFIG, ENGINE_API_KEY, MODELS, REGISTRY
from ..compact_json import json_response
from ..http_errors import APIError, Handler
from ..registry import (
    REPLY_TOKENS,
    CapacityError,
    SessionQuota,
    ShuttingDown,
    TutorProfile,
    iso,
)
from ..validation import json_body, whole_number
from .public_url import engine_url, websocket_base

MAX_ID_CHARS = 128
TUTOR_FIELDS: dict[str, int] = {
    "name": 200,
    "system_prompt": 20_000,
    "greeting": 2_000,
    "voice": 200,
    "language": 32,
    "model": 200,
}


@web.middleware
async def require_service_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /v1 route needs ``Authorization: Bearer <engine.api_key>``."""
    expected = request.config_dict[ENGINE_API_KEY]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="tutorsrv-engine"'}
    if scheme.lower() != "bearer" or not given.strip():
        raise APIError(
            401,
            "missing_api_key",
            "send the engine API key as 'Authorization: Bearer <key>'",
            headers=challenge,
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError(401, "invalid_api_key", "the engine API key is wrong", headers=challenge)
    return await handler(request)


async def create_session(request: web.Request) -> web.Response:
    body = await json_body(request)
    unknown = set(body) - {"tutor_id", "student_id", "kb_id", "tutor", "tenant_id"}
    if unknown:
        field = sorted(unknown)[0]
        raise APIError(422, "unknown_field", f"unknown field '{field}'", field=field)
    tutor_id = _identifier(body, "tutor_id", required=True)
    student_id = _identifier(body, "student_id", required=True)
    kb_id = _identifier(body, "kb_id", required=False)
    tenant_id = _identifier(body, "tenant_id", required=False)
    tutor = _tutor_profile(body.get("tutor"))
    models = request.config_dict[MODELS]
    if tutor.model and tutor.model not in models:
        raise APIError(
            422,
            "unknown_model",
            f"this engine does not serve the model {tutor.model!r}; it serves: "
            + ", ".join(models),
            field="tutor.model",
        )

    registry = request.config_dict[REGISTRY]
    config = request.config_dict[CONFIG]
    # Build the URL before creating the session, so a bad Host leaves nothing behind.
    base = websocket_base(request, config.engine.public_url)
    try:
        session, token = registry.create(
            tutor_id=tutor_id, student_id=student_id, kb_id=kb_id, tutor=tutor, tenant_id=tenant_id
        )
    except SessionQuota as e:
        raise APIError(429, "too_many_sessions", str(e), headers={"Retry-After": "10"}) from None
    except ShuttingDown as e:
        raise APIError(
            503,
            "shutting_down",
            "this engine is shutting down; retry later (or on another engine)",
            headers={"Retry-After": str(e.retry_after)},
        ) from None
    except CapacityError as e:
        raise APIError(
            503,
            "at_capacity",
            f"this engine holds its maximum of {registry.max_sessions} sessions; retry later",
            headers={"Retry-After": str(e.retry_after)},
        ) from None
    return json_response(
        {
            "session_id": session.id,
            "engine_url": engine_url(base, session.id, token),
            "engine_token": token,
            "status": session.status,
            "connection": session.connection,
            "expires_at": iso(session.expires_at),
        },
        status=201,
    )


async def list_sessions(request: web.Request) -> web.Response:
    registry = request.config_dict[REGISTRY]
    return json_response(
        {
            "sessions": [s.to_json() for s in registry.list()],
            "count": len(registry),
            "max_sessions": registry.max_sessions,
        }
    )


async def get_session(request: web.Request) -> web.Response:
    session = request.config_dict[REGISTRY].get(request.match_info["session_id"])
    if session is None:
        raise APIError(404, "session_not_found", "no such session")
    return json_response(session.to_json(include_history=True))


async def delete_session(request: web.Request) -> web.Response:
    if not request.config_dict[REGISTRY].end(request.match_info["session_id"], "ended"):
        raise APIError(404, "session_not_found", "no such session")
    return web.Response(status=204)


def session_api() -> web.Application:
    """The /v1 sub-application, guarded as a whole by the service key."""
    v1 = web.Application(middlewares=[require_service_key])
    v1.router.add_post("/sessions", create_session)
    v1.router.add_get("/sessions", list_sessions)
    v1.router.add_get("/sessions/{session_id}", get_session)
    v1.router.add_delete("/sessions/{session_id}", delete_session)
    return v1


def _identifier(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise APIError(422, "missing_field", f"'{key}' is required", field=key)
        return None
    # Ids may be numbers (older clients) or strings; they are opaque here.
    number = whole_number(value)
    if number is None and not isinstance(value, str):
        raise APIError(422, "invalid_field", f"'{key}' must be a string or integer", field=key)
    text = str(number if number is not None else value).strip()
    if not text or len(text) > MAX_ID_CHARS:
        raise APIError(
            422, "invalid_field", f"'{key}' must be 1 to {MAX_ID_CHARS} characters", field=key
        )
    return text


def _tutor_profile(value: Any) -> TutorProfile:
    if value is None:
        return TutorProfile()
    if not isinstance(value, dict):
        raise APIError(422, "invalid_field", "'tutor' must be an object", field="tutor")
    profile = TutorProfile()
    for key, item in value.items():
        field = f"tutor.{key}"
        if key == "max_reply_tokens":
            if item is None:
                continue
            low, high = REPLY_TOKENS
            tokens = whole_number(item)
            if tokens is None or not low <= tokens <= high:
                message = f"'{field}' must be an integer from {low} to {high}"
                raise APIError(422, "invalid_field", message, field=field)
            profile.max_reply_tokens = tokens
            continue
        limit = TUTOR_FIELDS.get(key)
        if limit is None:
            raise APIError(422, "unknown_field", f"unknown field '{field}'", field=field)
        if item is None:
            continue
        if not isinstance(item, str):
            raise APIError(422, "invalid_field", f"'{field}' must be a string", field=field)
        if len(item) > limit:
            raise APIError(
                422, "invalid_field", f"'{field}' is longer than {limit} characters", field=field
            )
        setattr(profile, key, item)
    if not profile.name.strip():
        profile.name = "Tutor"
    return profile
