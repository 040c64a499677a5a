"""Storing finished turns, and reading a session's conversation back."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import asyncpg

from ..backplane import SessionEnded, TurnRecord

log = logging.getLogger(__name__)


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


async def store_turn(db: asyncpg.Pool, turn: TurnRecord) -> bool:
    """Store a turn once, or a newer revision of it over an older one. Returns False when
    that revision (or a newer one) was already stored, or when the session is not one the
    web role created (e.g. opened directly on the engine API): nothing to keep."""
    try:
        result = await db.execute(
            "INSERT INTO turns (session_id, response_id, student_text, student_at, reply_text,"
            " reply_at, interrupted, metrics, sources, revision)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (session_id, response_id) DO UPDATE SET"
            " reply_text = EXCLUDED.reply_text, interrupted = EXCLUDED.interrupted,"
            " metrics = EXCLUDED.metrics, revision = EXCLUDED.revision"
            " WHERE turns.revision < EXCLUDED.revision",
            turn.session_id,
            turn.response_id,
            turn.student_text,
            _when(turn.student_at),
            turn.reply_text,
            _when(turn.reply_at),
            turn.interrupted,
            json.dumps(turn.metrics),
            json.dumps(turn.sources),
            turn.revision,
        )
    except asyncpg.ForeignKeyViolationError:
        log.debug("turn for a session without a web record", extra={"session_id": turn.session_id})
        return False
    return result == "INSERT 0 1"


async def mark_session_ended(db: asyncpg.Pool, event: SessionEnded) -> bool:
    """Follow the engine: an active session becomes ended or expired. Returns True if the
    record changed (False: already ended here, or not a web-role session)."""
    if event.reason not in ("ended", "expired"):
        raise ValueError(f"unknown end reason {event.reason!r}")
    result = await db.execute(
        "UPDATE sessions SET status = $2, ended_at = $3 WHERE id = $1 AND status = 'active'",
        event.session_id,
        event.reason,
        _when(event.ended_at),
    )
    return result == "UPDATE 1"


async def session_messages(db: asyncpg.Pool, session_id: str) -> list[dict[str, Any]]:
    """The conversation as a list of messages, oldest first (each turn gives one or two)."""
    rows = await db.fetch(
        "SELECT response_id, student_text, student_at, reply_text, reply_at, interrupted, metrics,"
        " sources"
        " FROM turns WHERE session_id = $1 ORDER BY reply_at, id",
        session_id,
    )
    messages: list[dict[str, Any]] = []
    for row in rows:
        if row["student_text"] is not None:
            messages.append(
                {
                    "role": "user",
                    "content": row["student_text"],
                    "timestamp": row["student_at"].isoformat(),
                    "response_id": row["response_id"],
                }
            )
        messages.append(
            {
                "role": "assistant",
                "content": row["reply_text"],
                "timestamp": row["reply_at"].isoformat(),
                "response_id": row["response_id"],
                "interrupted": row["interrupted"],
                "metrics": json.loads(row["metrics"]),
                "sources": json.loads(row["sources"]),
            }
        )
    return messages
