"""The Backplane: how an engine hands finished turns to the web role's transcript store.

Turns are queued (bounded) and delivered by one worker task with retries and back-off, so a
web role or database that is briefly away loses nothing, and the conversation never waits on
it. Two deliveries exist: straight into the database (``all``, one process), or an HTTP POST
to the web role's ``/internal/v1/turns`` with the service key (``engine`` in a split
deployment). Delivery is idempotent on (session_id, response_id), so a retry after a lost
reply stores the turn once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


@dataclass
class TurnRecord:
    session_id: str
    response_id: str
    reply_text: str
    reply_at: str  # ISO 8601
    interrupted: bool = False
    student_text: str | None = None  # None for the tutor's greeting
    student_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Deliver = Callable[[TurnRecord], Awaitable[None]]


class TurnRejected(Exception):
    """The store refused this turn for good (bad data, not a passing outage): retrying it
    would only hold up every turn queued behind it."""


class Backplane:
    def __init__(self, deliver: Deliver, *, max_queue: int = 10_000) -> None:
        self._deliver = deliver
        self._queue: asyncio.Queue[TurnRecord] = asyncio.Queue(max_queue)
        self._in_flight = 0
        self.dropped = 0
        self.rejected = 0
        self.retries = 0

    @property
    def pending(self) -> int:
        """Turns not yet stored: queued plus the one being delivered."""
        return self._queue.qsize() + self._in_flight

    def submit(self, turn: TurnRecord) -> None:
        """Queue a finished turn. Never blocks: safe from a task being cancelled."""
        try:
            self._queue.put_nowait(turn)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("transcript queue full; turn dropped", extra={"session_id": turn.session_id})

    async def run(self) -> None:
        """Deliver queued turns in order, retrying each until it is stored."""
        while True:
            turn = await self._queue.get()
            self._in_flight = 1
            delay = 0.5
            while True:
                try:
                    await self._deliver(turn)
                    break
                except asyncio.CancelledError:
                    raise
                except TurnRejected as e:
                    self.rejected += 1
                    log.error(
                        "transcript turn rejected, not retried: %s",
                        e,
                        extra={"session_id": turn.session_id},
                    )
                    break
                except Exception as e:
                    self.retries += 1
                    log.warning(
                        "transcript delivery failed (%s); retrying in %.1fs",
                        _describe(e),
                        delay,
                        extra={"session_id": turn.session_id},
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
            self._in_flight = 0
            self._queue.task_done()

    async def flush(self, within: float) -> bool:
        """Wait until everything queued is delivered (True) or ``within`` seconds pass (False)."""
        try:
            await asyncio.wait_for(self._queue.join(), within)
            return True
        except TimeoutError:
            return False


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:200]


class HttpTurnDelivery:
    """Posts turns to the web role. The service key travels in the header, never in logs."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0) -> None:
        self.url = base_url.rstrip("/") + "/internal/v1/turns"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    async def __call__(self, turn: TurnRecord) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        async with self._http.post(self.url, json=turn.to_json(), headers=self._headers) as resp:
            if resp.status in (400, 413, 415, 422):
                raise TurnRejected(f"web role answered {resp.status}")
            if resp.status >= 300:
                raise RuntimeError(f"web role answered {resp.status}")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
