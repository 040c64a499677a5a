"""Helpers shared by the resource routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from ...http_errors import APIError


def path_id(raw: str, what: str) -> uuid.UUID:
    """A path id; a malformed one is simply not found (as another tenant's id is)."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise APIError(404, f"{what}_not_found", f"no such {what}") from None


def row_json(row: asyncpg.Record, *, hide: tuple[str, ...] = ("password_hash",)) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in hide:
            continue
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, float):
            value = round(value, 4)  # real columns read back as 0.4000000059604645
        out[key] = value
    return out
