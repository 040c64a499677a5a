"""The migration runner against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tutorsrv.web.migrations import MIGRATIONS, apply_migrations, migration_files


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def test_migrations_apply_once(conn: asyncpg.Connection) -> None:
    first = await apply_migrations(conn)
    assert first == [p.name for p in migration_files()]
    assert await apply_migrations(conn) == []
    recorded = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
    assert [r["name"] for r in recorded] == first
    tables = {
        r["tablename"]
        for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"admins", "tutors", "students", "sessions", "turns"} <= tables


async def test_concurrent_starts_apply_each_file_once(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(p.name for p in migration_files())


async def test_a_failing_migration_leaves_nothing_half_done(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    for path in migration_files():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "900_broken.sql").write_text(
        "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;"
    )
    with pytest.raises(asyncpg.UndefinedTableError):
        await apply_migrations(conn, tmp_path)
    assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    assert (
        await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE name = '900_broken.sql'")
        == 0
    )
    # The earlier files stayed applied; fixing the broken one lets the run finish.
    (tmp_path / "900_broken.sql").write_text("CREATE TABLE half_done (id int);")
    assert await apply_migrations(conn, tmp_path) == ["900_broken.sql"]


def test_files_are_numbered_and_ordered() -> None:
    names = [p.name for p in migration_files(MIGRATIONS)]
    assert names and names == sorted(names, key=lambda n: int(n.split("_")[0]))
