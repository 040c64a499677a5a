"""A small migration runner: numbered ``.sql`` files in ``migrations/``, applied in order.

Each file runs in its own transaction and is recorded in ``schema_migrations``. The whole run
holds a PostgreSQL advisory lock, so several replicas starting at once apply each file once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "migrations"
# Any constant shared by all tutorsrv processes; "tutorsrv" in ASCII.
ADVISORY_LOCK_ID = 0x7475746F72737276
_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")


def migration_files(folder: Path = MIGRATIONS) -> list[Path]:
    files = [p for p in folder.glob("*.sql") if _NAME.match(p.name)]
    return sorted(files, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


async def apply_migrations(conn: asyncpg.Connection, folder: Path = MIGRATIONS) -> list[str]:
    """Apply what has not been applied; return the names applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for path in migration_files(folder):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            log.info("applied migration %s", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)
    return applied_now
