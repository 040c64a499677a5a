"""The Backplane: how an engine hands finished turns, and the ends of sessions, to the web
role's store.

Events are queued (bounded) and delivered by one worker task with retries and back-off, so a
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
    # Knowledge-base passages the reply was given: document, heading, excerpt, score.
    sources: list[dict[str, Any]] = field(default_factory=list)
    # 0 when first stored; higher when the engine corrects the turn (the reply cut to what
    # the student heard). A stored turn only ever takes a higher revision.
    revision: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SessionEnded:
    """The engine ended a session by itself (idle or over age: "expired") or on request."""

    session_id: str
    reason: str  # "ended" | "expired"
    ended_at: str  # ISO 8601

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Event = TurnRecord | SessionEnded
Deliver = Callable[[Event], Awaitable[None]]


class EventRejected(Exception):
    """The store refused this event for good (bad data, not a passing outage): retrying it
    would only hold up every turn queued behind it."""


class Backplane:
    def __init__(self, deliver: Deliver, *, max_queue: int = 10_000) -> None:
        self._deliver = deliver
        self._queue: asyncio.Queue[Event] = asyncio.Queue(max_queue)
        self._in_flight = 0
        self.dropped = 0
        self.rejected = 0
        self.retries = 0

    @property
    def pending(self) -> int:
        """Turns not yet stored: queued plus the one being delivered."""
        return self._queue.qsize() + self._in_flight

    def submit(self, event: Event) -> None:
        """Queue an event. Never blocks: safe from a task being cancelled."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error(
                "transcript queue full; event dropped", extra={"session_id": event.session_id}
            )

    async def run(self) -> None:
        """Deliver queued events in order, retrying each until it is stored."""
        while True:
            event = await self._queue.get()
            self._in_flight = 1
            delay = 0.5
            while True:
                try:
                    await self._deliver(event)
                    break
                except asyncio.CancelledError:
                    raise
                except EventRejected as e:
                    self.rejected += 1
                    log.error(
                        "transcript event rejected, not retried: %s",
                        e,
                        extra={"session_id": event.session_id},
                    )
                    break
                except Exception as e:
                    self.retries += 1
                    log.warning(
                        "transcript delivery failed (%s); retrying in %.1fs",
                        _describe(e),
                        delay,
                        extra={"session_id": event.session_id},
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


class HttpDelivery:
    """Posts events to the web role. The service key travels in the header, never in logs."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0) -> None:
        self.base = base_url.rstrip("/") + "/internal/v1"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    async def __call__(self, event: Event) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        if isinstance(event, TurnRecord):
            url = f"{self.base}/turns"
        else:
            url = f"{self.base}/sessions/{event.session_id}/end"
        async with self._http.post(url, json=event.to_json(), headers=self._headers) as resp:
            if resp.status in (400, 413, 415, 422):
                raise EventRejected(f"web role answered {resp.status}")
            if resp.status >= 300:
                raise RuntimeError(f"web role answered {resp.status}")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
