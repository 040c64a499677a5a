"""The session registry: live sessions, their signed tokens, their one socket, and their end.

Shared by every role that runs an engine. It knows nothing about HTTP or aiohttp: a socket is
anything with ``close(code, reason)``, so the registry can be tested and reasoned about alone.

Why it looks like this (DESIGN.md §1): the old system kept sessions in two processes, made
tokens optional, listed tokens to anyone, and expired sessions only when another was created.
Here a token is an HMAC-signed JWT that carries the session id and expiry, it is always
required, it is never stored or listed, and a background reaper ends idle and over-age
sessions on a clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

import jwt

log = logging.getLogger(__name__)

TOKEN_ALGORITHM = "HS256"
TOKEN_AUDIENCE = "tutorsrv-engine"

EndReason = Literal["ended", "expired"]


class LiveSocket(Protocol):
    """What the registry needs of a connected client."""

    async def close(self, code: int, reason: str) -> None: ...


# What a tutor's max_reply_tokens may be (web API and engine API alike).
REPLY_TOKENS = (16, 4096)


@dataclass
class TutorProfile:
    name: str = "Tutor"
    system_prompt: str = ""
    greeting: str = ""
    voice: str = ""
    language: str = "en"
    # The served model it talks through (a name from llm.model / llm.extra_models); empty:
    # the engine's default.
    model: str = ""
    # The longest reply, in tokens; 0: the engine's llm.max_tokens.
    max_reply_tokens: int = 0


@dataclass
class Message:
    role: Literal["user", "assistant"]
    content: str
    timestamp: str
    response_id: str | None = None
    interrupted: bool = False
    # What the model was given for this message when it differs from ``content`` (a student
    # turn with course passages). Kept so later prompts repeat it byte for byte: the prompt
    # cache then covers the whole history.
    prompt: str | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp,
        }
        if self.response_id is not None:
            data["response_id"] = self.response_id
        if self.interrupted:
            data["interrupted"] = True
        return data


@dataclass(eq=False)
class Session:
    id: str
    tutor_id: str
    student_id: str
    kb_id: str | None
    tutor: TutorProfile
    created_at: float  # wall clock, seconds
    expires_at: float  # wall clock: hard end of the session and of its token
    last_activity: float  # monotonic clock
    history: list[Message] = field(default_factory=list)
    # The organisation, when the web role says (engine API ``tenant_id``): quotas apply then.
    tenant_id: str | None = None
    socket: LiveSocket | None = None
    ever_connected: bool = False
    # The student's switch (`config` message): speak replies when the engine can.
    audio_output: bool = True
    # History limits (engine.max_history_messages / _chars): what one session can make the
    # model re-read, and send back on every reconnect, stays bounded.
    max_history_messages: int = 100
    max_history_chars: int = 65536
    # Messages dropped from the front of the history to keep it within those limits.
    forgotten: int = 0

    def remember(self, message: Message) -> None:
        """Append to the history; drop the oldest messages while it is over a limit, whole
        exchanges at a time (it always starts with a student turn), never the newest."""
        self.history.append(message)
        chars = sum(len(m.prompt or m.content) for m in self.history)
        drop = 0

        def over() -> bool:
            kept = len(self.history) - drop
            return kept > self.max_history_messages or chars > self.max_history_chars

        while len(self.history) - drop > 1 and (
            over() or (drop and self.history[drop].role != "user")
        ):
            chars -= len(self.history[drop].prompt or self.history[drop].content)
            drop += 1
        if drop:
            del self.history[:drop]
            self.forgotten += drop

    @property
    def status(self) -> str:
        """Always "active": a session the engine holds is live, and ended ones are gone
        (404). It is the old API's word, which its clients check; ``connection`` says more."""
        return "active"

    @property
    def connection(self) -> str:
        """Whether a student's socket is on the session: created (never yet), connected,
        disconnected (one was, none is now)."""
        if self.socket is not None:
            return "connected"
        return "disconnected" if self.ever_connected else "created"

    def to_json(self, *, include_history: bool = False) -> dict[str, object]:
        data: dict[str, object] = {
            "session_id": self.id,
            "tutor_id": self.tutor_id,
            "student_id": self.student_id,
            "kb_id": self.kb_id,
            "tutor_name": self.tutor.name,
            "status": self.status,
            "connection": self.connection,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "messages": len(self.history),
        }
        if include_history:
            data["history"] = [m.to_json() for m in self.history]
        return data


_SESSION_ID = re.compile(r"[0-9a-f]{32}")


def is_session_id(value: str) -> bool:
    """Whether ``value`` has the shape of the ids ``SessionRegistry.create`` makes."""
    return _SESSION_ID.fullmatch(value) is not None


class CapacityError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("the engine is at its session limit")
        self.retry_after = retry_after


class ShuttingDown(CapacityError):
    """The engine is stopping (graceful shutdown): it takes no new sessions."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.args = ("the engine is shutting down",)


class SessionQuota(Exception):
    """A student (or their organisation) already holds its share of connected sessions."""

    def __init__(self, limit: int, whose: str, what: str) -> None:
        super().__init__(f"{whose} already has {limit} {what} on this engine")
        self.limit = limit


class TokenError(Exception):
    """A session token was refused. ``code`` is the WebSocket close code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def iso(wall_seconds: float) -> str:
    return (
        datetime.fromtimestamp(wall_seconds, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def now_iso() -> str:
    """Now, to the millisecond: turn timestamps are also latency evidence."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TokenSigner:
    """Issues and checks session tokens: HS256 JWTs with the session id and an expiry."""

    def __init__(self, secret: str | bytes | None = None) -> None:
        if not secret:
            secret = secrets.token_bytes(32)
        self._secret = secret.encode() if isinstance(secret, str) else secret

    def issue(self, session_id: str, expires_at: float) -> str:
        claims = {
            "sid": session_id,
            "aud": TOKEN_AUDIENCE,
            "iat": int(time.time()),
            "exp": math.ceil(expires_at),
        }
        return jwt.encode(claims, self._secret, algorithm=TOKEN_ALGORITHM)

    def verify(self, token: str | None, session_id: str) -> None:
        """Raise TokenError unless ``token`` is a valid, unexpired token for ``session_id``."""
        if not token:
            raise TokenError(4401, "a session token is required (?token=...)")
        try:
            # Signature first, expiry second: a forged token must never learn whether it
            # would have been expired or for which session.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[TOKEN_ALGORITHM],
                audience=TOKEN_AUDIENCE,
                options={"require": ["exp", "sid", "aud"], "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise TokenError(4401, "the session token is invalid") from None
        if claims.get("sid") != session_id:
            raise TokenError(4403, "the session token belongs to another session")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time():
            raise TokenError(4408, "the session token has expired")


class SessionRegistry:
    """All sessions of one engine process, with limits, expiry and socket ownership."""

    def __init__(
        self,
        *,
        max_sessions: int,
        idle_timeout: float,
        max_duration: float,
        signer: TokenSigner,
        tombstone_seconds: float = 3600.0,
        max_history_messages: int = 100,
        max_history_chars: int = 65536,
        max_sessions_per_student: int = 0,
        max_sessions_per_tenant: int = 0,
        connect_deadline: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_history_messages = max_history_messages
        self.max_history_chars = max_history_chars
        # 0: off. Sessions of one (tenant, student) at once; a session never connected within
        # connect_deadline seconds is ended (it held a slot nobody used).
        self.max_sessions_per_student = max_sessions_per_student
        self.max_sessions_per_tenant = max_sessions_per_tenant
        self.connect_deadline = connect_deadline
        self.idle_timeout = idle_timeout
        self.max_duration = max_duration
        self.signer = signer
        # Who this process is: a web role that sees a new one behind an engine's address knows
        # the engine restarted, and the sessions it held are gone.
        self.instance = uuid.uuid4().hex
        self._sessions: dict[str, Session] = {}
        # Ended ids, remembered for a while so a late client hears "ended"/"expired", not
        # "unknown". Bounded both by age and by count.
        self._tombstones: OrderedDict[str, tuple[EndReason, float]] = OrderedDict()
        self._tombstone_seconds = tombstone_seconds
        self._clock = clock
        self._wall = wall_clock
        # Closing a socket waits on the client; these tasks belong to the registry.
        self._closing: set[asyncio.Task[None]] = set()
        # Told of every session created (the model reads its opening ahead) and of every
        # one that ends (transcripts, the models' saved prompt states).
        self.create_listeners: list[Callable[[Session], None]] = []
        self.end_listeners: list[Callable[[str, EndReason], None]] = []
        # Running totals, read by /metrics: sessions created, creations refused by reason.
        self.created = 0
        self.rejected: dict[str, int] = {
            "at_capacity": 0,
            "shutting_down": 0,
            "student_quota": 0,
            "tenant_quota": 0,
        }
        # Set by stop_accepting() when shutdown begins: the Retry-After for refused sessions.
        self._shutdown_retry_after: int | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun: no new sessions, sockets or turns."""
        return self._shutdown_retry_after is None

    def stop_accepting(self, retry_after: float = 5.0) -> None:
        self._shutdown_retry_after = max(1, math.ceil(retry_after))

    def create(
        self,
        *,
        tutor_id: str,
        student_id: str,
        kb_id: str | None = None,
        tutor: TutorProfile | None = None,
        tenant_id: str | None = None,
    ) -> tuple[Session, str]:
        if self._shutdown_retry_after is not None:
            self.rejected["shutting_down"] += 1
            raise ShuttingDown(self._shutdown_retry_after)
        if tenant_id is not None:
            self._make_room_for(tenant_id, student_id)
        if len(self._sessions) >= self.max_sessions:
            self.rejected["at_capacity"] += 1
            raise CapacityError(self._retry_after())
        wall = self._wall()
        session = Session(
            id=uuid.uuid4().hex,
            tutor_id=tutor_id,
            student_id=student_id,
            kb_id=kb_id,
            tutor=tutor or TutorProfile(),
            created_at=wall,
            expires_at=wall + self.max_duration,
            last_activity=self._clock(),
            max_history_messages=self.max_history_messages,
            max_history_chars=self.max_history_chars,
            tenant_id=tenant_id,
        )
        self._sessions[session.id] = session
        token = self.signer.issue(session.id, session.expires_at)
        self.created += 1
        log.info("session created", extra={"session_id": session.id, "tutor_id": tutor_id})
        for listener in self.create_listeners:
            listener(session)
        return session, token

    def _make_room_for(self, tenant_id: str, student_id: str) -> None:
        """The shares of one organisation's sessions. Per student: at the limit, end their
        oldest session that has no socket (a reloaded page leaves one behind), refuse
        (SessionQuota) when every one is connected; so one account cannot take every slot
        and a reload never fails. Per organisation: refuse at the limit (ending another
        student's session, maybe one whose page is connecting right now, would be worse)."""
        ours = [s for s in self._sessions.values() if s.tenant_id == tenant_id]
        limit = self.max_sessions_per_student
        if limit:
            mine = [s for s in ours if s.student_id == student_id]
            while len(mine) >= limit:
                idle = [s for s in mine if s.socket is None]
                if not idle:
                    self.rejected["student_quota"] += 1
                    raise SessionQuota(limit, "this student", "connected sessions")
                oldest = min(idle, key=lambda s: s.created_at)
                log.info("session replaced by a newer one", extra={"session_id": oldest.id})
                self.end(oldest.id, "ended")
                mine.remove(oldest)
                ours.remove(oldest)
        if self.max_sessions_per_tenant and len(ours) >= self.max_sessions_per_tenant:
            self.rejected["tenant_quota"] += 1
            raise SessionQuota(self.max_sessions_per_tenant, "this organisation", "sessions")

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def list(self) -> list[Session]:
        return list(self._sessions.values())

    def end_reason(self, session_id: str) -> EndReason | None:
        entry = self._tombstones.get(session_id)
        return entry[0] if entry else None

    def touch(self, session: Session) -> None:
        session.last_activity = self._clock()

    def attach(self, session: Session, socket: LiveSocket) -> bool:
        """Make ``socket`` the session's live socket. Returns True if it replaced another,
        which is then closed with 4409 (history stays with the session)."""
        previous = session.socket
        session.socket = socket
        session.ever_connected = True
        self.touch(session)
        if previous is not None and previous is not socket:
            self._close_later(previous, 4409, "replaced by a newer connection")
            return True
        return False

    def detach(self, session: Session, socket: LiveSocket) -> None:
        if session.socket is socket:
            session.socket = None
            self.touch(session)

    def end(self, session_id: str, reason: EndReason = "ended") -> bool:
        """End a session now: forget it and close its socket (4410 ended, 4408 expired)."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._remember(session_id, reason)
        if session.socket is not None:
            code, text = (4410, "session ended") if reason == "ended" else (4408, "session expired")
            self._close_later(session.socket, code, text)
            session.socket = None
        log.info("session %s", reason, extra={"session_id": session_id})
        for listener in self.end_listeners:
            listener(session_id, reason)
        return True

    def reap(self) -> list[str]:
        """End every session idle for longer than the timeout or past its maximum duration,
        and every one never connected within the connect deadline."""
        now, wall = self._clock(), self._wall()
        deadline = self.connect_deadline
        expired = [
            s.id
            for s in self._sessions.values()
            if now - s.last_activity >= self.idle_timeout
            or wall >= s.expires_at
            or (deadline and not s.ever_connected and now - s.last_activity >= deadline)
        ]
        for session_id in expired:
            self.end(session_id, "expired")
        self._forget_old_tombstones()
        return expired

    async def run_reaper(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.reap()
            except Exception:  # the reaper must outlive a bad session
                log.exception("reaper pass failed")

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        for session in self._sessions.values():
            if session.socket is not None:
                self._close_later(session.socket, code, reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, socket: LiveSocket, code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(socket.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _retry_after(self) -> int:
        """Seconds until the soonest session would expire by idleness, as a hint to callers."""
        now = self._clock()
        soonest = min(
            (self.idle_timeout - (now - s.last_activity) for s in self._sessions.values()),
            default=1.0,
        )
        return max(1, min(300, math.ceil(soonest)))

    def _remember(self, session_id: str, reason: EndReason) -> None:
        self._tombstones[session_id] = (reason, self._clock())
        self._tombstones.move_to_end(session_id)
        while len(self._tombstones) > 10 * self.max_sessions + 1000:
            self._tombstones.popitem(last=False)

    def _forget_old_tombstones(self) -> None:
        cutoff = self._clock() - self._tombstone_seconds
        while self._tombstones:
            _, (_, ended_at) = next(iter(self._tombstones.items()))
            if ended_at >= cutoff:
                break
            self._tombstones.popitem(last=False)
