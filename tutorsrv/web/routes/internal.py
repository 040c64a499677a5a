"""/internal/v1: what engines call on the web role (the HTTP Backplane), with the service key."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ... import validation as v
from ...appkeys import DB, INGESTOR
from ...backplane import SessionEnded, TurnRecord
from ...compact_json import json_response
from ...engine.routes import require_service_key
from ...http_errors import APIError
from .. import rag
from ..transcripts import mark_session_ended, store_turn

MAX_TEXT = 100_000


def _turn(body: dict[str, Any]) -> TurnRecord:
    v.only_fields(body, TurnRecord.__dataclass_fields__)
    metrics = body.get("metrics", {})
    if not isinstance(metrics, dict):
        raise APIError(422, "invalid_field", "'metrics' must be an object", field="metrics")
    sources = body.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(x, dict) for x in sources):
        raise APIError(422, "invalid_field", "'sources' must be a list of objects", field="sources")
    interrupted = body.get("interrupted", False)
    if not isinstance(interrupted, bool):
        raise APIError(422, "invalid_field", "'interrupted' must be a boolean", field="interrupted")
    revision = v.whole_number(body.get("revision", 0))
    if revision is None or not 0 <= revision < 2**31:
        raise APIError(422, "invalid_field", "'revision' must be a small integer", field="revision")
    student_text = v.text(body, "student_text", max_len=MAX_TEXT, nullable=True)
    student_at = v.text(body, "student_at", max_len=40, nullable=True)
    if student_text is not None and not student_at:
        # A student message without its time cannot be placed in the transcript.
        raise APIError(
            422, "missing_field", "'student_at' is required with 'student_text'", field="student_at"
        )
    return TurnRecord(
        session_id=v.text(body, "session_id", required=True, max_len=64),  # type: ignore[arg-type]
        response_id=v.text(body, "response_id", required=True, max_len=64),  # type: ignore[arg-type]
        reply_text=v.text(body, "reply_text", max_len=MAX_TEXT) or "",
        reply_at=v.text(body, "reply_at", required=True, max_len=40),  # type: ignore[arg-type]
        interrupted=interrupted,
        student_text=student_text,
        student_at=student_at,
        metrics=metrics,
        sources=sources,
        revision=revision,
    )


async def post_turn(request: web.Request) -> web.Response:
    turn = _turn(await v.json_body(request))
    try:
        stored = await store_turn(request.config_dict[DB], turn)
    except ValueError:
        raise APIError(422, "invalid_field", "timestamps must be ISO 8601") from None
    return json_response({"stored": stored}, status=201 if stored else 200)


async def post_session_end(request: web.Request) -> web.Response:
    body = await v.json_body(request)
    v.only_fields(body, SessionEnded.__dataclass_fields__)
    reason = v.text(body, "reason", required=True, max_len=16)
    if reason not in ("ended", "expired"):
        raise APIError(422, "invalid_field", "'reason' must be ended or expired", field="reason")
    event = SessionEnded(
        session_id=request.match_info["session_id"],
        reason=reason,
        ended_at=v.text(body, "ended_at", required=True, max_len=40),  # type: ignore[arg-type]
    )
    try:
        changed = await mark_session_ended(request.config_dict[DB], event)
    except ValueError:
        raise APIError(
            422, "invalid_field", "'ended_at' must be ISO 8601", field="ended_at"
        ) from None
    return json_response({"changed": changed})


async def search_kb(request: web.Request) -> web.Response:
    """Passages for an engine's turn (the engine is trusted with the service key)."""
    body = await v.json_body(request)
    v.only_fields(body, ("query", "k"))
    query = v.text(body, "query", required=True, max_len=MAX_TEXT) or ""
    k = v.whole_number(body.get("k", 3))
    if k is None or not 1 <= k <= 20:
        raise APIError(422, "invalid_field", "'k' must be an integer from 1 to 20", field="k")
    ingestor = request.config_dict[INGESTOR]
    passages = await rag.search(
        request.config_dict[DB], request.match_info["kb_id"], query, k, ingestor.embedder
    )
    return json_response({"passages": passages})


def internal_api() -> web.Application:
    internal = web.Application(middlewares=[require_service_key])
    internal.router.add_post("/turns", post_turn)
    internal.router.add_post("/sessions/{session_id}/end", post_session_end)
    internal.router.add_post("/kbs/{kb_id}/search", search_kb)
    return internal
