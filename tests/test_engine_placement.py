"""HttpEngineClient placement and engine health, against small in-process fake engines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from tutorsrv.registry import TutorProfile
from tutorsrv.web.engine_client import (
    FULL,
    HEALTHY,
    UNHEALTHY,
    UNKNOWN,
    UNREACHABLE,
    EngineSession,
    EngineState,
    EngineUnavailable,
    HttpEngineClient,
    ShareExceeded,
    placement_order,
)

from .conftest import API_KEY
from .processes import free_port


def states(*specs: tuple[str, int | None, int | None]) -> list[EngineState]:
    """(status, sessions, max_sessions) per engine; urls e0, e1, ..."""
    return [
        EngineState(f"http://e{i}", status=status, sessions=sessions, max_sessions=most)
        for i, (status, sessions, most) in enumerate(specs)
    ]


def urls(order: list[EngineState]) -> list[str]:
    return [s.url for s in order]


def test_healthy_engines_most_free_first_ties_in_listed_order() -> None:
    engines = states(
        (HEALTHY, 3, 4),  # 1 free
        (HEALTHY, 0, 4),  # 4 free
        (HEALTHY, 6, 8),  # 2 free
        (HEALTHY, 2, 4),  # 2 free, listed after e2
    )
    assert urls(placement_order(engines)) == ["http://e1", "http://e2", "http://e3", "http://e0"]


def test_full_and_unknown_engines_come_last_and_failed_ones_not_at_all() -> None:
    engines = states(
        (UNREACHABLE, 0, 100),
        (FULL, 4, 4),
        (HEALTHY, 3, 4),
        (UNKNOWN, None, None),
        (UNHEALTHY, 0, 4),
        (HEALTHY, 1, 4),
    )
    assert urls(placement_order(engines)) == [
        "http://e5",
        "http://e2",
        "http://e1",
        "http://e3",
    ]


def test_creations_in_flight_count_against_free_capacity() -> None:
    engines = states((HEALTHY, 0, 4), (HEALTHY, 1, 4))
    assert urls(placement_order(engines)) == ["http://e0", "http://e1"]
    engines[0].pending = 2
    assert engines[0].free == 2
    assert urls(placement_order(engines)) == ["http://e1", "http://e0"]


class FakeEngine:
    """An engine's /health and /v1/sessions, with knobs a test turns."""

    def __init__(self, max_sessions: int = 4) -> None:
        self.sessions = 0
        self.max_sessions = max_sessions
        self.health_status = 200
        self.create_status = 201
        self.health_gate: asyncio.Event | None = None  # set: /health waits for it
        self.health_entered = asyncio.Event()
        self.created: list[str] = []
        self.bodies: list[dict] = []
        self.instance = "first-process"
        self.list_status = 200
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/sessions", self._list)
        app.router.add_post("/v1/sessions", self._create)
        app.router.add_delete("/v1/sessions/{sid}", self._delete)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def _health(self, request: web.Request) -> web.Response:
        self.health_entered.set()
        if self.health_gate is not None:
            await self.health_gate.wait()
        return web.json_response(
            {
                "status": "healthy" if self.health_status == 200 else "degraded",
                "sessions": self.sessions,
                "max_sessions": self.max_sessions,
                "instance": self.instance,
            },
            status=self.health_status,
        )

    async def _list(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        if self.list_status != 200:
            return web.json_response({"error": "boom", "message": "no"}, status=self.list_status)
        return web.json_response({"sessions": [{"session_id": s} for s in self.created]})

    async def _create(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        self.bodies.append(await request.json())
        if self.create_status == 429:
            return web.json_response(
                {"error": "too_many_sessions", "message": "this student already has 3"},
                status=429,
                headers={"Retry-After": "10"},
            )
        if self.create_status != 201:
            return web.json_response({"error": "boom", "message": "no"}, status=self.create_status)
        if self.sessions >= self.max_sessions:
            return web.json_response(
                {"error": "at_capacity", "message": "full"},
                status=503,
                headers={"Retry-After": "5"},
            )
        self.sessions += 1
        sid = f"s{len(self.created)}"
        self.created.append(sid)
        return web.json_response(
            {
                "session_id": sid,
                "engine_url": f"ws://engine/ws/{sid}?token=t",
                "engine_token": "t",
                "status": "active",
                "expires_at": "2030-01-01T00:00:00Z",
            },
            status=201,
        )

    async def _delete(self, request: web.Request) -> web.Response:
        self.sessions -= 1
        return web.Response(status=204)


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    fakes = [FakeEngine(), FakeEngine()]
    for fake in fakes:
        await fake.server.start_server()
    try:
        yield fakes
    finally:
        for fake in fakes:
            await fake.server.close()


async def create(client: HttpEngineClient) -> EngineSession:
    return await client.create_session(
        make_mocked_request("POST", "/"),
        tutor_id="1",
        student_id="2",
        kb_id=None,
        tutor=TutorProfile(),
        tenant_id="org",
    )


def by_url(client: HttpEngineClient, url: str) -> EngineState:
    return next(s for s in client.states if s.url == url)


async def test_sessions_spread_by_free_capacity(engines: list[FakeEngine]) -> None:
    a, b = engines
    b.sessions = 1
    client = HttpEngineClient([a.url, b.url], API_KEY, 2.0)
    try:
        await client.check_all()
        assert [s.status for s in client.states] == [HEALTHY, HEALTHY]
        # a: 4 free, b: 3 free. No health check in between: the local count spreads them.
        placed = [(await create(client)).engine for _ in range(5)]
        assert placed == [a.url, a.url, b.url, a.url, b.url]
        assert (a.sessions, b.sessions) == (3, 3)
        assert by_url(client, a.url).sessions == 3 and by_url(client, b.url).sessions == 3
    finally:
        await client.close()


async def test_a_concurrent_burst_spreads(engines: list[FakeEngine]) -> None:
    a, b = engines
    client = HttpEngineClient([a.url, b.url], API_KEY, 2.0)
    try:
        await client.check_all()
        placed = await asyncio.gather(*(create(client) for _ in range(6)))
        assert [p.engine for p in placed].count(a.url) == 3
        assert (a.sessions, b.sessions) == (3, 3)
        assert all(s.pending == 0 for s in client.states)
    finally:
        await client.close()


async def test_a_failing_engine_is_skipped_at_once_and_back_when_healthy(
    engines: list[FakeEngine],
) -> None:
    a, b = engines
    b.sessions = 2
    client = HttpEngineClient([a.url, b.url], API_KEY, 2.0)
    try:
        await client.check_all()
        a.create_status = 500
        # a has the most room, fails, and the session lands on b.
        assert (await create(client)).engine == b.url
        state = by_url(client, a.url)
        assert state.status == UNHEALTHY and state.last_error == "answered 500"
        # It is not asked first any more, though it has more room than b.
        a.create_status = 201
        assert (await create(client)).engine == b.url
        assert a.created == []
        # Its health check passes: it takes sessions again.
        await client.check_all()
        assert state.status == HEALTHY and state.last_error is None
        assert (await create(client)).engine == a.url
    finally:
        await client.close()


async def test_a_full_engine_moves_on_and_all_full_is_unavailable(
    engines: list[FakeEngine],
) -> None:
    a, b = engines
    a.max_sessions = 1
    b.max_sessions = 1
    client = HttpEngineClient([a.url, b.url], API_KEY, 2.0)
    try:
        await client.check_all()
        # Somebody else filled a since its health check.
        a.sessions = 1
        assert (await create(client)).engine == b.url
        assert by_url(client, a.url).status == FULL
        assert by_url(client, b.url).status == FULL  # counted locally: 1 of 1
        with pytest.raises(EngineUnavailable) as caught:
            await create(client)
        assert "is full" in str(caught.value) and API_KEY not in str(caught.value)
        # A session ends: room again, without waiting for a health check.
        await client.delete_session(b.url, "s0")
        assert by_url(client, b.url).status == HEALTHY
        assert (await create(client)).engine == b.url
    finally:
        await client.close()


async def test_a_students_quota_on_an_engine_is_theirs_not_the_engines(
    engines: list[FakeEngine],
) -> None:
    a, b = engines
    a.create_status = 429
    client = HttpEngineClient([a.url, b.url], API_KEY, 2.0)
    try:
        await client.check_all()
        with pytest.raises(ShareExceeded):
            await create(client)
        # The organisation goes with the request; the engine stays healthy, and the request
        # did not go on to another engine to get around the student's share.
        assert a.bodies[-1]["tenant_id"] == "org"
        assert by_url(client, a.url).status == HEALTHY and b.bodies == []
    finally:
        await client.close()


async def test_an_unreachable_engine_is_reported_and_gets_no_sessions(
    engines: list[FakeEngine],
) -> None:
    a, _ = engines
    dead = f"http://127.0.0.1:{free_port()}"
    client = HttpEngineClient([dead, a.url], API_KEY, 2.0)
    try:
        report = await client.health()
        assert [e["status"] for e in report] == [UNREACHABLE, HEALTHY]
        assert report[0]["last_error"] and report[0]["last_checked"]
        assert report[1]["sessions"] == 0 and report[1]["max_sessions"] == 4
        assert (await create(client)).engine == a.url
        await a.server.close()
        with pytest.raises(EngineUnavailable) as caught:
            await create(client)
        assert "unreachable" in str(caught.value)
        assert [s.status for s in client.states] == [UNREACHABLE, UNREACHABLE]
    finally:
        await client.close()


async def test_a_password_in_an_engine_url_is_never_reported(engines: list[FakeEngine]) -> None:
    a, _ = engines
    with_password = a.url.replace("http://", "http://user:hunter2@")
    client = HttpEngineClient([with_password], API_KEY, 2.0)
    try:
        report = await client.health()
        assert report[0]["status"] == HEALTHY and "hunter2" not in str(report)
        # aiohttp will not send both the URL's credentials and the service key.
        with pytest.raises(EngineUnavailable) as caught:
            await create(client)
        assert "hunter2" not in str(caught.value) and API_KEY not in str(caught.value)
        assert "hunter2" not in str(await client.health())
    finally:
        await client.close()


async def test_a_health_check_older_than_a_failure_does_not_undo_it(
    engines: list[FakeEngine],
) -> None:
    a, b = engines
    a.health_gate = b.health_gate = asyncio.Event()
    a.create_status = 500
    client = HttpEngineClient([a.url, b.url], API_KEY, 2.0)
    try:
        checks = asyncio.create_task(client.check_all())
        await asyncio.wait_for(a.health_entered.wait(), 5)
        await asyncio.wait_for(b.health_entered.wait(), 5)
        # Nothing known of either yet; a, listed first, is tried, fails, and b takes it.
        assert (await create(client)).engine == b.url
        assert by_url(client, a.url).status == UNHEALTHY
        a.health_gate.set()  # the check that began before the failure says healthy
        await asyncio.wait_for(checks, 5)
        assert by_url(client, a.url).status == UNHEALTHY
        assert by_url(client, b.url).status == HEALTHY
        await client.check_all()  # a fresh one counts
        assert by_url(client, a.url).status == HEALTHY
    finally:
        await client.close()


async def test_background_checks_follow_an_engine_and_stop_on_close(
    engines: list[FakeEngine],
) -> None:
    a, _ = engines
    a.health_status = 503
    client = HttpEngineClient([a.url], API_KEY, 2.0, health_interval=0.05)
    monitor = client._monitor
    assert monitor is not None
    try:
        report = await client.health()  # waits for the first round
        assert report[0]["status"] == UNHEALTHY
        assert report[0]["last_error"] == "health answered 503 (degraded)"
        a.health_status = 200
        deadline = time.monotonic() + 5
        while (await client.health())[0]["status"] != HEALTHY:
            assert time.monotonic() < deadline, "never seen healthy again"
            await asyncio.sleep(0.02)
        a.sessions = a.max_sessions
        while (await client.health())[0]["status"] != FULL:
            assert time.monotonic() < deadline, "never seen full"
            await asyncio.sleep(0.02)
    finally:
        await client.close()
    assert monitor.done()


async def test_a_new_engine_process_is_reconciled_once_and_retried_on_failure(
    engines: list[FakeEngine],
) -> None:
    """The web role ends the records of sessions an engine no longer holds: when it first
    sees an engine process at an address, and after each restart (a new /health instance)."""
    a, _ = engines
    seen: list[tuple[str, set[str]]] = []

    async def reconcile(url: str, held: Any) -> None:
        seen.append((url, await held()))

    client = HttpEngineClient([a.url], API_KEY, 2.0, on_engine_instance=reconcile)
    try:
        await client.check_all()
        assert seen == [(a.url, set())]  # the first process seen at this address
        await create(client)
        await client.check_all()
        assert len(seen) == 1  # the same process: nothing to do
        a.instance, a.list_status = "second-process", 500
        a.created.clear()  # a restarted engine holds nothing
        await client.check_all()
        assert len(seen) == 1  # listing failed: not marked as done...
        a.list_status = 200
        await client.check_all()
        assert seen[1:] == [(a.url, set())]  # ...and done at the next check
        await client.check_all()
        assert len(seen) == 2
    finally:
        await client.close()
