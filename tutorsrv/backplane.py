"""The Backplane: how an engine hands finished turns, and the ends of sessions, to the web
role's store.

Events are queued (bounded) and delivered by one worker task with retries and back-off, so a
web role or database that is briefly away loses nothing, and the conversation never waits on
it. Two deliveries exist: straight into the database (``all``, one process), or an HTTP POST
to the web role's ``/internal/v1/turns`` with the service key (``engine`` in a split
deployment). Delivery is idempotent on (session_id, response_id), so a retry after a lost
reply stores the turn once.

Every event is written to the spool (``spool.py``) first, so a turn the student was told is
finished survives any crash: the next start delivers what the spool still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from .spool import Spool, SpoolFull

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
    """Queues events for delivery; with a spool, each is on disk before it is announced.

    ``submit`` returns a future that says (True) once the event is durable, which is when
    the conversation may tell the student ``response_done``. False: it could not be made
    durable (no spool, the spool is full or its disk failed) and is delivered from memory
    only. Store outages (delivery failing, or the embedded database restarting) are told to
    ``outage_listeners`` once as they begin and once as they end."""

    def __init__(
        self, deliver: Deliver, *, spool: Spool | None = None, max_queue: int = 10_000
    ) -> None:
        self._deliver = deliver
        self._spool = spool
        self._queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue(max_queue)
        self._in_flight = 0
        self._seq = 0
        # Spool writes waiting for the writer: (seq, kind, event, future), and the pending
        # records they close.
        self._writes: list[tuple[int, str, dict[str, Any], asyncio.Future[bool]]] = []
        self._closes: list[int] = []
        self._acked = 0
        self._written_acked = 0
        self._wake_writer = asyncio.Event()
        self._retry_now = asyncio.Event()
        self.outage = False
        self.outage_listeners: list[Callable[[bool], Awaitable[None]]] = []
        self.recovered = 0
        self.dropped = 0
        self.rejected = 0
        self.retries = 0
        self.spool_failures = 0

    @property
    def pending(self) -> int:
        """Turns not yet stored: queued plus the one being delivered."""
        return self._queue.qsize() + self._in_flight

    async def open(self) -> None:
        """Take the spool and queue what earlier runs left in it (they come first)."""
        if self._spool is None:
            return
        left = await asyncio.to_thread(self._spool.open)
        for kind, data in left:
            self._seq += 1
            try:
                event: Event = TurnRecord(**data) if kind == "turn" else SessionEnded(**data)
            except TypeError:
                self.rejected += 1
                log.error("transcript spool: an unreadable %s record skipped", kind)
                continue
            self._queue.put_nowait((self._seq, event))
        self.recovered = len(left)
        if left:
            log.warning(
                "transcript spool %s: delivering %d events an earlier run left",
                self._spool.path,
                len(left),
            )
        if self._spool.corrupt_lines:
            log.warning(
                "transcript spool: %d unreadable lines skipped (a write cut off by a kill)",
                self._spool.corrupt_lines,
            )

    def submit(self, event: Event, *, closes: int | None = None) -> asyncio.Future[bool]:
        """Queue an event; returns the future of its durability. Never blocks: safe from
        a task being cancelled. ``closes``: the seq ``begin`` gave this turn."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if closes is not None:
            self._closes.append(closes)
        try:
            self._queue.put_nowait((self._seq + 1, event))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error(
                "transcript queue full; event dropped", extra={"session_id": event.session_id}
            )
            future.set_result(False)
            self._wake_writer.set()
            return future
        self._seq += 1
        kind = "turn" if isinstance(event, TurnRecord) else "end"
        self._write(self._seq, kind, event.to_json(), future)
        return future

    def begin(self, turn: TurnRecord) -> tuple[int, asyncio.Future[bool]]:
        """Keep the student's message of a reply just started: if this process dies before
        the reply is recorded, the next start stores ``turn`` (an empty, interrupted reply).
        Returns the seq to pass as ``submit(..., closes=)``, and the future of durability."""
        self._seq += 1
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._write(self._seq, "pending", turn.to_json(), future)
        return self._seq, future

    def _write(
        self, seq: int, kind: str, data: dict[str, Any], future: asyncio.Future[bool]
    ) -> None:
        if self._spool is None:
            future.set_result(False)
            return
        self._writes.append((seq, kind, data, future))
        self._wake_writer.set()

    async def run(self) -> None:
        """Deliver queued events in order (and write the spool), until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            if self._spool is not None:
                tasks.create_task(self._write_spool(), name="transcript-spool")
            tasks.create_task(self._deliver_all(), name="transcript-delivery")

    async def _deliver_all(self) -> None:
        while True:
            seq, event = await self._queue.get()
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
                    await self.set_outage(True)
                    self._retry_now.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._retry_now.wait(), delay)
                    delay = min(delay * 2, 30.0)
            self._acked = seq
            self._in_flight = 0
            self._queue.task_done()
            self._wake_writer.set()
            if self.outage and self._queue.empty():
                await self.set_outage(False)

    async def _write_spool(self) -> None:
        """Group commit: everything submitted since the last write goes in one fsync."""
        assert self._spool is not None
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            await self._write_batch()

    async def _write_batch(self) -> None:
        assert self._spool is not None
        batch, self._writes = self._writes, []
        closes, self._closes = tuple(self._closes), []
        acked = self._acked
        if not batch and not closes and acked == self._written_acked:
            return
        records = [(seq, kind, data) for seq, kind, data, _ in batch]
        try:
            await asyncio.to_thread(self._spool.write, records, acked=acked, closed=closes)
            durable = True
            self._written_acked = acked
        except (OSError, SpoolFull) as e:
            self.spool_failures += 1
            log.error("transcript spool write failed; delivering from memory only: %s", e)
            durable = False
        for *_, future in batch:
            if not future.done():
                future.set_result(durable)

    def retry_now(self) -> None:
        """The store is back (its supervisor says): end the back-off wait at once."""
        self._retry_now.set()

    async def set_outage(self, down: bool) -> None:
        """The store is unreachable (True) or back (False): tell the listeners on a change."""
        if self.outage == down:
            return
        self.outage = down
        for listener in self.outage_listeners:
            try:
                await listener(down)
            except Exception:
                log.exception("transcript outage listener failed")

    async def flush(self, within: float) -> bool:
        """Wait until everything queued is delivered (True) or ``within`` seconds pass
        (False; what is left stays in the spool for the next start)."""
        try:
            await asyncio.wait_for(self._queue.join(), within)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """After ``run`` is cancelled: write what is still waiting, release the spool."""
        if self._spool is None:
            return
        await self._write_batch()
        await asyncio.to_thread(self._spool.close)


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
