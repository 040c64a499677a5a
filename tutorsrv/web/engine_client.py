"""EngineClient: how the web role creates and ends sessions on an engine.

``InProcessEngineClient`` (role ``all``) calls the session registry of this very process.
``HttpEngineClient`` (role ``web``) calls the configured engines' ``/v1/sessions`` with the
service key. It keeps a state per engine, refreshed by a background health check, places a new
session on the healthy engine with the most free capacity, and moves on to the next engine when
one is full or does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from ..config import Config
from ..engine.public_url import engine_url, websocket_base
from ..registry import (
    CapacityError,
    SessionQuota,
    SessionRegistry,
    ShuttingDown,
    TutorProfile,
    iso,
)

log = logging.getLogger(__name__)

IN_PROCESS = "local"

# What the web role knows of one engine (``EngineState.status``).
UNKNOWN = "unknown"  # not checked yet
HEALTHY = "healthy"  # answers its health check and has room
FULL = "full"  # answers, but holds its maximum of sessions
UNREACHABLE = "unreachable"  # no answer: refused, reset, timed out
UNHEALTHY = "unhealthy"  # answers, but reports itself unhealthy or fails requests (5xx, 401)


class ShareExceeded(Exception):
    """The student, or their organisation, holds its share of an engine's sessions (429)."""


class EngineUnavailable(Exception):
    """No engine could take the session; the message says why (no secrets in it)."""


@dataclass
class EngineSession:
    session_id: str
    engine_url: str
    engine_token: str
    expires_at: str
    engine: str  # which engine holds it: IN_PROCESS or an engine base URL


class EngineClient(Protocol):
    async def create_session(
        self,
        request: web.Request,
        *,
        tutor_id: str,
        student_id: str,
        kb_id: str | None,
        tutor: TutorProfile,
        tenant_id: str,
    ) -> EngineSession: ...

    async def delete_session(self, engine: str, session_id: str) -> None: ...

    async def health(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class InProcessEngineClient:
    def __init__(self, registry: SessionRegistry, config: Config) -> None:
        self.registry = registry
        self.config = config

    async def create_session(
        self,
        request: web.Request,
        *,
        tutor_id: str,
        student_id: str,
        kb_id: str | None,
        tutor: TutorProfile,
        tenant_id: str,
    ) -> EngineSession:
        engine = self.config.engine
        # The browser called this process, so its request says where the engine is.
        base = websocket_base(request, engine.public_url)
        try:
            session, token = self.registry.create(
                tutor_id=tutor_id,
                student_id=student_id,
                kb_id=kb_id,
                tutor=tutor,
                tenant_id=tenant_id,
            )
        except SessionQuota as e:
            raise ShareExceeded(str(e)) from None
        except ShuttingDown:
            raise EngineUnavailable("the engine is shutting down") from None
        except CapacityError:
            raise EngineUnavailable(
                f"the engine holds its maximum of {self.registry.max_sessions} sessions"
            ) from None
        return EngineSession(
            session.id,
            engine_url(base, session.id, token),
            token,
            iso(session.expires_at),
            IN_PROCESS,
        )

    async def delete_session(self, engine: str, session_id: str) -> None:
        self.registry.end(session_id, "ended")

    async def health(self) -> list[dict[str, Any]]:
        return [
            {
                "engine": IN_PROCESS,
                "status": "healthy",
                "sessions": len(self.registry),
                "max_sessions": self.registry.max_sessions,
            }
        ]

    async def close(self) -> None:
        return None


@dataclass
class EngineState:
    """One engine as the web role last saw it: by its health check, and since then by the
    sessions it created there and the requests that failed."""

    url: str
    status: str = UNKNOWN
    sessions: int | None = None
    max_sessions: int | None = None
    last_error: str | None = None  # why it is not healthy; never holds a secret
    last_checked: float | None = None  # wall clock of the last health check that counted
    pending: int = 0  # session creations in flight to it
    # The engine process last seen at this address (its /health "instance"), once the
    # records of sessions it no longer holds were ended.
    instance: str | None = None
    failed_at: float = float("-inf")  # monotonic; health checks started earlier are stale

    @property
    def free(self) -> int:
        """Free capacity: reported room less the creations in flight (0 when unknown)."""
        if self.sessions is None or self.max_sessions is None:
            return 0
        return self.max_sessions - self.sessions - self.pending

    def report(self) -> dict[str, Any]:
        return {
            "engine": _display(self.url),
            "status": self.status,
            "sessions": self.sessions,
            "max_sessions": self.max_sessions,
            "last_error": self.last_error,
            "last_checked": iso(self.last_checked) if self.last_checked is not None else None,
        }


def placement_order(states: list[EngineState]) -> list[EngineState]:
    """The engines to try for a new session, in order: healthy ones, most free capacity
    first (ties in listed order), then full and not-yet-checked ones in listed order (a full
    one may have room again; it answers at once either way). Engines that failed (unreachable
    or unhealthy) get no new sessions until a health check finds them well again."""
    healthy = sorted((s for s in states if s.status == HEALTHY), key=lambda s: -s.free)
    return healthy + [s for s in states if s.status in (FULL, UNKNOWN)]


class HttpEngineClient:
    def __init__(
        self,
        urls: list[str],
        api_key: str,
        timeout: float,
        health_interval: float | None = None,
        on_engine_instance: Callable[[str, Callable[[], Awaitable[set[str]]]], Awaitable[object]]
        | None = None,
    ) -> None:
        """``health_interval``: seconds between background health checks of every engine;
        None checks only when ``health()`` is asked (the task needs a running event loop).
        ``on_engine_instance(url, held)``: called when an engine process is first seen at an
        address (at start, and after it restarted), with a way to list the sessions it holds."""
        self._on_engine_instance = on_engine_instance
        self.urls = list(dict.fromkeys(u.rstrip("/") for u in urls))
        self.states = [EngineState(url) for url in self.urls]
        self._by_url = {s.url: s for s in self.states}
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = timeout
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self._checked_once = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        if health_interval is not None:
            self._monitor = asyncio.get_running_loop().create_task(
                self._watch(health_interval), name="engine-health-checks"
            )

    async def create_session(
        self,
        request: web.Request,
        *,
        tutor_id: str,
        student_id: str,
        kb_id: str | None,
        tutor: TutorProfile,
        tenant_id: str,
    ) -> EngineSession:
        body = {
            "tutor_id": tutor_id,
            "student_id": student_id,
            "tenant_id": tenant_id,
            "kb_id": kb_id,
            "tutor": {
                "name": tutor.name,
                "system_prompt": tutor.system_prompt,
                "greeting": tutor.greeting,
                "voice": tutor.voice,
                "language": tutor.language,
                "model": tutor.model,
                "max_reply_tokens": tutor.max_reply_tokens or None,
            },
        }
        problems = []
        for state in placement_order(self.states):
            # Counted as taken while in flight, so that a burst spreads over the engines.
            state.pending += 1
            try:
                created, problem = await self._create_on(state, body)
            finally:
                state.pending -= 1
            if created is not None:
                return created
            problems.append(problem)
        if not problems:
            problems = [f"{_display(s.url)} {s.status}" for s in self.states]
        log.warning("no engine took the session: %s", "; ".join(problems))
        raise EngineUnavailable("no engine could take the session: " + "; ".join(problems))

    async def _create_on(
        self, state: EngineState, body: dict[str, Any]
    ) -> tuple[EngineSession | None, str]:
        url = state.url
        try:
            async with self._http.post(
                f"{url}/v1/sessions", json=body, headers=self._headers
            ) as resp:
                if resp.status == 201:
                    try:
                        data = await resp.json()
                        created = EngineSession(
                            data["session_id"],
                            data["engine_url"],
                            data["engine_token"],
                            data["expires_at"],
                            url,
                        )
                    except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                        self._failed(state, UNHEALTHY, "answered 201 without a session")
                        return None, f"{_display(url)} answered 201 without a session"
                    self._took_one(state)
                    return created, ""
                problem = f"{_display(url)} answered {resp.status}"
                if resp.status == 429 and await _error_code(resp) == "too_many_sessions":
                    # The student's quota on that engine, not a fault of it: say so.
                    raise ShareExceeded(await _error_message(resp))
                if resp.status == 503 and await _error_code(resp) == "at_capacity":
                    self._failed(state, FULL, None)
                    return None, f"{_display(url)} is full"
                if resp.status >= 500:
                    self._failed(state, UNHEALTHY, f"answered {resp.status}")
                elif resp.status in (401, 403):
                    self._failed(state, UNHEALTHY, f"refused the service key ({resp.status})")
                # Other answers refuse this request, not the engine: it stays as it is.
                return None, problem
        except (aiohttp.ClientError, TimeoutError) as e:
            self._failed(state, UNREACHABLE, type(e).__name__)
            return None, f"{_display(url)} unreachable ({type(e).__name__})"
        except ValueError as e:  # aiohttp refuses the URL, e.g. one with user:password in it
            self._failed(state, UNHEALTHY, type(e).__name__)
            return None, f"{_display(url)} cannot be called ({type(e).__name__})"

    def _took_one(self, state: EngineState) -> None:
        """Count a session it just created, until its next health check says how many."""
        if state.sessions is None:
            return
        state.sessions += 1
        if state.max_sessions is not None and state.sessions >= state.max_sessions:
            state.status = FULL

    def _failed(self, state: EngineState, status: str, error: str | None) -> None:
        """It failed a request: no new sessions for it until a health check says otherwise."""
        if state.status == HEALTHY and status != FULL:
            log.warning("engine %s is %s: %s", _display(state.url), status, error)
        state.status = status
        state.last_error = error
        state.failed_at = time.monotonic()
        if status == FULL and state.max_sessions is not None:
            state.sessions = state.max_sessions

    async def delete_session(self, engine: str, session_id: str) -> None:
        state = self._by_url.get(engine)
        if state is None:
            # Removed from web.engine_urls: retired, its in-memory sessions are gone.
            return
        try:
            async with self._http.delete(
                f"{engine}/v1/sessions/{session_id}", headers=self._headers
            ) as resp:
                if resp.status not in (204, 404):
                    raise EngineUnavailable(f"{_display(engine)} answered {resp.status}")
                if resp.status == 204 and state.sessions:
                    state.sessions -= 1
                    if state.status == FULL and state.free > 0:
                        state.status = HEALTHY
        except (aiohttp.ClientError, TimeoutError) as e:
            raise EngineUnavailable(
                f"{_display(engine)} unreachable ({type(e).__name__})"
            ) from None

    async def health(self) -> list[dict[str, Any]]:
        """Every engine as last checked. Waits for the first round of checks, if under way."""
        if self._monitor is None:
            await self.check_all()
        elif not self._checked_once.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout + 1):
                    await self._checked_once.wait()
        return [state.report() for state in self.states]

    async def check_all(self) -> None:
        """One round of health checks, all engines at once."""
        await asyncio.gather(*(self._check(state) for state in self.states))
        self._checked_once.set()

    async def _watch(self, interval: float) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # never let the checks stop for good
                log.exception("engine health checks failed")
            await asyncio.sleep(interval)

    async def _check(self, state: EngineState) -> None:
        started = time.monotonic()
        sessions = max_sessions = None
        data: Any = None
        try:
            async with self._http.get(f"{state.url}/health") as resp:
                try:
                    data = await resp.json()
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
                code = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            status, error = UNREACHABLE, type(e).__name__
        else:
            if not isinstance(data, dict):
                status, error = UNHEALTHY, f"health answered {code} without JSON"
            else:
                sessions = _count(data.get("sessions"))
                max_sessions = _count(data.get("max_sessions"))
                reported = str(data.get("status"))[:40]
                if code != 200 or reported != HEALTHY:
                    status, error = UNHEALTHY, f"health answered {code} ({reported})"
                elif sessions is not None and max_sessions is not None:
                    status = FULL if sessions >= max_sessions else HEALTHY
                    error = None
                else:
                    status, error = HEALTHY, None
        if started < state.failed_at:
            return  # a request failed since this check began: older news
        instance = data.get("instance") if isinstance(data, dict) else None
        if status in (HEALTHY, FULL) and isinstance(instance, str) and instance != state.instance:
            await self._new_instance(state, instance)
        was_up, is_up = state.status in (HEALTHY, FULL), status in (HEALTHY, FULL)
        if is_up and not was_up and state.status != UNKNOWN:
            log.info("engine %s is %s again", _display(state.url), status)
        elif not is_up and (was_up or state.status == UNKNOWN):
            log.warning("engine %s is %s: %s", _display(state.url), status, error)
        state.status = status
        state.last_error = error
        state.last_checked = time.time()
        if sessions is not None:
            state.sessions = sessions
        if max_sessions is not None:
            state.max_sessions = max_sessions

    async def _new_instance(self, state: EngineState, instance: str) -> None:
        """Another engine process answers at this address: the sessions the one before held
        are gone. Remembered only once handled, so a failure is retried at the next check."""
        if self._on_engine_instance is None:
            state.instance = instance
            return

        async def held() -> set[str]:
            async with self._http.get(f"{state.url}/v1/sessions", headers=self._headers) as resp:
                if resp.status != 200:
                    raise EngineUnavailable(f"listing its sessions answered {resp.status}")
                return {str(s["session_id"]) for s in (await resp.json())["sessions"]}

        try:
            await self._on_engine_instance(state.url, held)
        except Exception as e:  # the database or the engine failed: try again next check
            log.warning(
                "engine %s: could not reconcile its session records (%s)",
                _display(state.url),
                type(e).__name__,
            )
            return
        state.instance = instance

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._http.close()


async def _error_code(resp: aiohttp.ClientResponse) -> str | None:
    try:
        data = await resp.json()
    except (ValueError, aiohttp.ContentTypeError):
        return None
    return data.get("error") if isinstance(data, dict) else None


async def _error_message(resp: aiohttp.ClientResponse) -> str:
    try:
        data = await resp.json()
    except (ValueError, aiohttp.ContentTypeError):
        return f"answered {resp.status}"
    message = data.get("message") if isinstance(data, dict) else None
    return str(message)[:200] if message else f"answered {resp.status}"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _display(url: str) -> str:
    """The URL without any user:password in it, for reports and logs."""
    return str(URL(url).with_user(None)) if "@" in url else url
