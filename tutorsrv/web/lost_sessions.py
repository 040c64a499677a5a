"""Session records whose engine no longer has the session: ended, so none reads ``active``.

An engine keeps its sessions in memory, so a restart loses them. Their records used to read
``active`` until ``expires_at`` (hours). Now the web side ends them as soon as it learns of the
restart:

- ``--role all`` at start-up: the engine is in this process and has just started, so every
  ``active`` record of the in-process engine is from an earlier run.
- ``--role web``: each engine reports a new ``instance`` in ``/health`` after a restart, and
  the web role sees it on its next health check (and on its own first one). It then lists the
  sessions the engine holds and ends the records of that engine that are not among them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)


async def end_lost_sessions(
    db: asyncpg.Pool, engine: str, held: Callable[[], Awaitable[set[str]]]
) -> int:
    """End ``engine``'s active records that are not among ``held()`` (the ids of the sessions
    it holds now) and were created before that list was asked for: a session created since
    may be missing from it only because it is newer. The database's clock times both, so
    clock skew between machines cannot end a live session. Returns how many were ended."""
    listed_at = await db.fetchval("SELECT now()")
    live = await held()
    ended = await db.fetchval(
        "WITH gone AS (UPDATE sessions SET status = 'ended', ended_at = now()"
        " WHERE engine = $1 AND status = 'active' AND created_at < $2 AND NOT (id = ANY($3))"
        " RETURNING 1) SELECT count(*) FROM gone",
        engine,
        listed_at,
        list(live),
    )
    if ended:
        log.warning(
            "%d session record(s) of an engine that no longer holds them (restarted) ended",
            ended,
        )
    return int(ended)
