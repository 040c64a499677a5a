"""EngineClient: how the web role creates and ends sessions on an engine.

``InProcessEngineClient`` (role ``all``) calls the session registry of this very process.
``HttpEngineClient`` (role ``web``) calls each configured engine's ``/v1/sessions`` with the
service key and moves on to the next engine when one is full or does not answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from ..config import Config
from ..engine.public_url import engine_url, websocket_base
from ..registry import CapacityError, SessionRegistry, TutorProfile, iso

log = logging.getLogger(__name__)

IN_PROCESS = "local"


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
    ) -> EngineSession:
        engine = self.config.engine
        # The browser called this process, so its request says where the engine is.
        base = websocket_base(request, engine.public_url, engine.trust_forwarded_headers)
        try:
            session, token = self.registry.create(
                tutor_id=tutor_id, student_id=student_id, kb_id=kb_id, tutor=tutor
            )
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


class HttpEngineClient:
    def __init__(self, urls: list[str], api_key: str, timeout: float) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def create_session(
        self,
        request: web.Request,
        *,
        tutor_id: str,
        student_id: str,
        kb_id: str | None,
        tutor: TutorProfile,
    ) -> EngineSession:
        body = {
            "tutor_id": tutor_id,
            "student_id": student_id,
            "kb_id": kb_id,
            "tutor": {
                "name": tutor.name,
                "system_prompt": tutor.system_prompt,
                "greeting": tutor.greeting,
                "voice": tutor.voice,
                "language": tutor.language,
            },
        }
        problems = []
        for url in self.urls:
            try:
                async with self._http.post(
                    f"{url}/v1/sessions", json=body, headers=self._headers
                ) as resp:
                    if resp.status == 201:
                        data = await resp.json()
                        return EngineSession(
                            data["session_id"],
                            data["engine_url"],
                            data["engine_token"],
                            data["expires_at"],
                            url,
                        )
                    problems.append(f"{url} answered {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as e:
                problems.append(f"{url} unreachable ({type(e).__name__})")
        log.warning("no engine took the session: %s", "; ".join(problems))
        raise EngineUnavailable("no engine could take the session: " + "; ".join(problems))

    async def delete_session(self, engine: str, session_id: str) -> None:
        if engine not in self.urls:
            # Removed from web.engine_urls: retired, its in-memory sessions are gone.
            return
        try:
            async with self._http.delete(
                f"{engine}/v1/sessions/{session_id}", headers=self._headers
            ) as resp:
                if resp.status not in (204, 404):
                    raise EngineUnavailable(f"{engine} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise EngineUnavailable(f"{engine} unreachable ({type(e).__name__})") from None

    async def health(self) -> list[dict[str, Any]]:
        report = []
        for url in self.urls:
            try:
                async with self._http.get(f"{url}/health") as resp:
                    data = await resp.json()
                    report.append(
                        {
                            "engine": url,
                            "status": data.get("status", "unknown"),
                            "sessions": data.get("sessions"),
                            "max_sessions": data.get("max_sessions"),
                        }
                    )
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                report.append({"engine": url, "status": "unreachable", "error": type(e).__name__})
        return report

    async def close(self) -> None:
        await self._http.close()
