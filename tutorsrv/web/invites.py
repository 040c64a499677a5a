"""Registration invites: with ``web.allow_registration = false`` a new organisation registers
only with a code the server's operator made (``tutorsrv invites create``).

A code is 128 random bits; the database keeps its SHA-256 only (a slow hash buys nothing
for a random secret of that size), so a copy of the table lets nobody register. An invite
admits one registration before it expires, and is spent in the registration's own
transaction, so two registrations racing with one code cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

CODE_PREFIX = "inv_"
MAX_CODE_LENGTH = 64


def _digest(code: str) -> bytes:
    return hashlib.sha256(code.strip().encode()).digest()


@dataclass(frozen=True)
class Invite:
    id: uuid.UUID
    note: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None

    @property
    def state(self) -> str:
        if self.used_at is not None:
            return "used"
        return "expired" if self.expires_at <= dt.datetime.now(dt.UTC) else "open"


async def create(db: asyncpg.Pool, days: float, note: str = "") -> tuple[Invite, str]:
    """A new invite and its code; the code is shown once and never stored."""
    code = CODE_PREFIX + secrets.token_urlsafe(16)
    row = await db.fetchrow(
        "INSERT INTO registration_invites (code_sha256, note, expires_at)"
        " VALUES ($1, $2, now() + make_interval(secs => $3))"
        " RETURNING id, note, created_at, expires_at, used_at",
        _digest(code),
        note,
        days * 86400.0,
    )
    return Invite(**dict(row)), code


async def listing(db: asyncpg.Pool) -> list[Invite]:
    rows = await db.fetch(
        "SELECT id, note, created_at, expires_at, used_at FROM registration_invites"
        " ORDER BY created_at, id"
    )
    return [Invite(**dict(row)) for row in rows]


async def revoke(db: asyncpg.Pool, invite_id: uuid.UUID) -> bool:
    """Remove an invite that has not been used; False if there is none such."""
    status = await db.execute(
        "DELETE FROM registration_invites WHERE id = $1 AND used_at IS NULL", invite_id
    )
    return status != "DELETE 0"


async def is_open(db: asyncpg.Pool | asyncpg.Connection, code: str) -> bool:
    """The code names an unused, unexpired invite (checked before a password is hashed)."""
    if len(code) > MAX_CODE_LENGTH:
        return False
    return bool(
        await db.fetchval(
            "SELECT 1 FROM registration_invites"
            " WHERE code_sha256 = $1 AND used_at IS NULL AND expires_at > now()",
            _digest(code),
        )
    )


async def spend(conn: asyncpg.Connection, code: str, admin_id: uuid.UUID) -> bool:
    """Mark the invite used by ``admin_id``, inside the registration's transaction; False if
    it was spent (or expired) meanwhile: the registration must then be rolled back."""
    spent = await conn.fetchval(
        "UPDATE registration_invites SET used_at = now(), used_by = $2"
        " WHERE code_sha256 = $1 AND used_at IS NULL AND expires_at > now() RETURNING id",
        _digest(code),
        admin_id,
    )
    return spent is not None
