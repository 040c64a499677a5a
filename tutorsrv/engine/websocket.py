"""The session WebSocket at ``/ws/ws/{session_id}?token=…`` (protocol: docs/protocol.md).

A client that offers the ``tutorsrv.v1`` subprotocol gets the whole protocol; one that offers
none is taken for a JSON-only client of the old server: it gets no binary frames, so the
tutor does not speak to it.

The handler authenticates the token before it will talk, takes the session's one live socket
(closing an older one with 4409), then reads client messages in order. Replies run as a task
owned by the connection's ``Conversation``; when the socket ends, for whatever reason, that
task is cancelled before the handler returns, so no generation outlives its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..appkeys import (
    BACKPLANE,
    CONFIG,
    KNOWLEDGE,
    LLM,
    MODELS,
    RECORDINGS,
    REGISTRY,
    SYNTHESIZER,
    TRANSCRIBER,
    VAD,
)
from ..compact_json import dumps_text
from ..limits import MessageRate, Verdict
from ..metrics import ENGINE_METRICS, EngineMetrics
from ..registry import Session, SessionRegistry, TokenError, iso
from . import protocol
from .conversation import Conversation
from .protocol import ProtocolError
from .public_url import query_token
from .speech.pcm import FORMAT
from .voice_input import INPUT_FORMAT, VoiceInput
from .voice_output import SpeechSettings

log = logging.getLogger(__name__)

# What a client is told, in an ``error`` frame, just before the server closes with a code.
_CLOSE_ERRORS = {
    protocol.CLOSE_BAD_TOKEN: "invalid_token",
    protocol.CLOSE_WRONG_SESSION: "wrong_session",
    protocol.CLOSE_UNKNOWN_SESSION: "unknown_session",
    protocol.CLOSE_EXPIRED: "session_expired",
    protocol.CLOSE_REPLACED: "replaced",
    protocol.CLOSE_ENDED: "session_ended",
    protocol.CLOSE_SHUTDOWN: "shutting_down",
}


class Connection:
    """One client socket; what the registry closes when it ends or replaces a session."""

    def __init__(
        self, ws: web.WebSocketResponse, session_id: str, metrics: EngineMetrics | None = None
    ) -> None:
        self.ws = ws
        self.session_id = session_id
        self.metrics = metrics
        self.conversation: Conversation | None = None
        # Set when this connection has let go of its session (its reply stopped and stored).
        self.released = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(dumps_text(message))
        if self.metrics is not None and message.get("type") == "error":
            self.metrics.error_frame(message["code"])

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self, code: int, reason: str) -> None:
        """Server-side close: end any reply (with ``interrupted``), say why, then close."""
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError):
            if self.conversation is not None:
                await self.conversation.interrupt(reason="closing")
            # The session's history is complete now; a taking-over connection may go on
            # without waiting for this client to acknowledge the close.
            self.released.set()
            await self.send(protocol.error(_CLOSE_ERRORS.get(code, "closed"), reason, fatal=True))
        self.released.set()
        await self.ws.close(code=code, message=reason.encode())


# How long a taking-over connection waits for the one it replaces to store its cut-off reply.
TAKEOVER_WAIT_SECONDS = 5.0
SHUTTING_DOWN = "the server is shutting down; replies in progress may finish"


TRANSCRIPT_DELAYED = (
    "the transcript store is unavailable; this conversation is kept on the server and "
    "saved when the store is back"
)
TRANSCRIPT_SAVED = "the transcript store is back; this conversation is being saved again"


async def tell_everyone(registry: SessionRegistry, message: dict[str, Any], within: float) -> None:
    """Send ``message`` to every connected client; one too slow to take it within
    ``within`` seconds is skipped."""
    connections = [s.socket for s in registry.list() if isinstance(s.socket, Connection)]
    sends = [asyncio.ensure_future(c.send(message)) for c in connections if not c.ws.closed]
    if sends:
        await asyncio.wait(sends, timeout=within)
    for task in sends:
        task.cancel()
    await asyncio.gather(*sends, return_exceptions=True)


async def drain(registry: SessionRegistry, grace: float) -> None:
    """First step of shutdown, before the sockets close (1001): refuse new sessions and
    turns, tell every connected client (a non-fatal ``shutting_down`` error), and give the
    replies in progress up to ``grace`` seconds to finish."""
    registry.stop_accepting(retry_after=grace + 1)
    connections = [s.socket for s in registry.list() if isinstance(s.socket, Connection)]
    notice = protocol.error("shutting_down", SHUTTING_DOWN)
    notices = [asyncio.ensure_future(c.send(notice)) for c in connections if not c.ws.closed]
    replies = [
        task
        for c in connections
        if c.conversation is not None and (task := c.conversation.responding) is not None
    ]
    waiting = notices + replies
    if waiting and grace > 0:
        await asyncio.wait(waiting, timeout=grace)
    for task in notices:
        task.cancel()  # a client too slow to take the notice within the grace
    await asyncio.gather(*notices, return_exceptions=True)


async def session_socket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[CONFIG].engine
    registry = request.app[REGISTRY]
    session_id = request.match_info["session_id"]

    ws = web.WebSocketResponse(
        max_msg_size=config.max_message_bytes,
        heartbeat=30.0,
        protocols=(protocol.SUBPROTOCOL,),
    )
    await ws.prepare(request)
    metrics = request.app.get(ENGINE_METRICS)
    connection = Connection(ws, session_id, metrics)
    binary_frames = ws.ws_protocol == protocol.SUBPROTOCOL

    try:
        token = query_token(request.query)
    except ValueError as e:
        await connection.close(protocol.CLOSE_BAD_TOKEN, str(e))
        return ws
    try:
        registry.signer.verify(token, session_id)
    except TokenError as e:
        await connection.close(e.code, str(e))
        return ws
    session = registry.get(session_id)
    if not registry.accepting:
        await connection.close(protocol.CLOSE_SHUTDOWN, "the server is shutting down")
        return ws
    if session is None:
        ended = registry.end_reason(session_id)
        if ended == "ended":
            await connection.close(protocol.CLOSE_ENDED, "the session has ended")
        elif ended == "expired":
            await connection.close(protocol.CLOSE_EXPIRED, "the session has expired")
        else:
            await connection.close(protocol.CLOSE_UNKNOWN_SESSION, "no such session")
        return ws

    resumed = session.ever_connected
    previous = session.socket
    app_config = request.app[CONFIG]
    speech = None
    if (synthesizer := request.app.get(SYNTHESIZER)) is not None and binary_frames:
        speech = SpeechSettings(
            synthesizer,
            synthesizer.voice(session.tutor.voice),
            connection.send_bytes,
            frame_ms=app_config.tts.frame_ms,
            clause_min_chars=app_config.tts.clause_min_chars,
        )
    conversation = Conversation(
        session,
        registry,
        request.app[MODELS].get(session.tutor.model) or request.app[LLM],
        connection.send,
        default_system_prompt=request.app[CONFIG].llm.default_system_prompt,
        transcript=(backplane := request.app.get(BACKPLANE)),
        knowledge=request.app.get(KNOWLEDGE),
        top_k=request.app[CONFIG].kb.top_k,
        passage_tokens=request.app[CONFIG].kb.passage_tokens,
        search_timeout=request.app[CONFIG].kb.search_timeout_seconds,
        on_response=metrics.response_finished if metrics else None,
        speech=speech,
    )
    voice: VoiceInput | None = None
    if (transcriber := request.app.get(TRANSCRIBER)) is not None:
        voice = VoiceInput(
            transcriber,
            request.app[RECORDINGS],
            request.app[VAD],
            app_config.asr,
            conversation,
            accepting=lambda: registry.accepting,
            on_transcribed=metrics.transcribed if metrics else None,
        )
    connection.conversation = conversation
    registry.attach(session, connection)
    log.info("socket connected (resumed=%s)", resumed, extra={"session_id": session_id})
    try:
        if isinstance(previous, Connection):
            # Let the replaced connection store its cut-off reply first, so the history we
            # send is the whole story.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(previous.released.wait(), TAKEOVER_WAIT_SECONDS)
        await connection.send(_session_message(session, resumed, voice, speech, ws.ws_protocol))
        if backplane is not None and backplane.outage:
            await connection.send(protocol.error("transcript_delayed", TRANSCRIPT_DELAYED))
        if not session.history:
            await conversation.greet()
        rate = MessageRate(app_config.server.ws_messages_per_second)
        await _read_loop(ws, conversation, voice, config.max_text_chars, rate, binary_frames)
    except ConnectionError:
        pass  # the client went away while we were writing
    finally:
        # aiohttp may be cancelling this handler (the client vanished), so everything that
        # must happen is done before the first await: release the session, stop the reply.
        registry.detach(session, connection)
        log.info("socket closed (code=%s)", ws.close_code, extra={"session_id": session_id})
        if voice is not None:
            await voice.close()  # first: no transcription may start a turn from here on
        await conversation.close()
        connection.released.set()
        if not ws.closed:
            await ws.close()
    return ws


async def _read_loop(
    ws: web.WebSocketResponse,
    conversation: Conversation,
    voice: VoiceInput | None,
    max_text_chars: int,
    rate: MessageRate | None = None,
    binary_frames: bool = True,
) -> None:
    async for msg in ws:
        # Microphone frames arrive 30-50 a second: VoiceInput budgets them by audio time.
        counted = msg.type == WSMsgType.TEXT or (msg.type == WSMsgType.BINARY and voice is None)
        if rate is not None and counted:
            if (verdict := rate.check()) is not Verdict.ACCEPT:
                if await _rate_limited(ws, conversation, verdict):
                    return
                continue
        if msg.type == WSMsgType.TEXT:
            await _handle_text_frame(msg.data, conversation, voice, max_text_chars, binary_frames)
        elif msg.type == WSMsgType.BINARY:
            if voice is None:
                await conversation.send(_NO_VOICE_INPUT)
            elif conversation.registry.accepting:
                await voice.pcm(msg.data)
        elif msg.type == WSMsgType.ERROR:
            # aiohttp has already closed the socket (1009 for an oversized frame).
            log.info(
                "socket error: %s", ws.exception(), extra={"session_id": conversation.session.id}
            )
            if ws.close_code is None:
                await ws.close(code=WSCloseCode.PROTOCOL_ERROR)
            return


async def _rate_limited(
    ws: web.WebSocketResponse, conversation: Conversation, verdict: Verdict
) -> bool:
    """A message over the socket's rate is dropped, with a ``rate_limited`` error; a client
    that keeps flooding is closed (1008). Returns True when the socket was closed."""
    if verdict is Verdict.DROP:
        await conversation.send(
            protocol.error("rate_limited", "too many messages; this one was dropped")
        )
        return False
    log.info("closing a flooding socket", extra={"session_id": conversation.session.id})
    reason = "too many messages"
    with contextlib.suppress(ConnectionError):
        await conversation.interrupt(reason="closing")
        await conversation.send(protocol.error("rate_limited", reason, fatal=True))
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode())
    return True


_NO_VOICE_INPUT = protocol.error("audio_unavailable", "voice input is not enabled on this engine")


_NO_BINARY_FRAMES = protocol.error(
    "audio_unavailable",
    "spoken replies come as binary frames: connect offering the WebSocket subprotocol "
    f"'{protocol.SUBPROTOCOL}' to hear the tutor",
)


async def _handle_text_frame(
    raw: str,
    conversation: Conversation,
    voice: VoiceInput | None,
    max_text_chars: int,
    binary_frames: bool = True,
) -> None:
    try:
        message = protocol.parse_client_message(raw, max_text_chars=max_text_chars)
    except ProtocolError as e:
        await conversation.send(protocol.error(e.code, e.content))
        return
    if message.type != "ping":
        conversation.registry.touch(conversation.session)
    if message.type == "text" and not conversation.registry.accepting:
        await conversation.send(
            protocol.error("shutting_down", "the server is shutting down; no new turns")
        )
    elif message.type == "text":
        await conversation.student_text(message.data["content"])
    elif message.type == "interrupt":
        await conversation.interrupt(reason="interrupt")
    elif message.type == "ping":
        reply: dict[str, Any] = {"type": "pong"}
        if "id" in message.data:
            reply["id"] = message.data["id"]
        await conversation.send(reply)
    elif message.type in protocol.AUDIO_INPUT_TYPES:
        if voice is None:
            await conversation.send(_NO_VOICE_INPUT)
        elif not conversation.registry.accepting:
            await conversation.send(
                protocol.error("shutting_down", "the server is shutting down; no new turns")
            )
        elif message.type == "audio_end":
            await voice.end()
        else:
            await voice.recording(message.data.get("data"))
    elif message.type == "config":
        if message.data.get("audio_output") and not binary_frames:
            await conversation.send(_NO_BINARY_FRAMES)
        elif "audio_output" in message.data:
            # From the next response on; the client silences the current one itself.
            conversation.session.audio_output = message.data["audio_output"]
    elif message.type == "played":
        known = await conversation.played(message.data["response_id"], message.data["audio_ms"])
        if not known:
            await conversation.send(
                protocol.error("unknown_response", "'response_id' is not a recent spoken response")
            )


def _session_message(
    session: Session,
    resumed: bool,
    voice: VoiceInput | None,
    speech: SpeechSettings | None,
    subprotocol: str | None,
) -> dict[str, Any]:
    output = None
    if speech is not None and session.audio_output:
        output = {
            "format": FORMAT,
            "sample_rate": speech.voice.sample_rate,
            "channels": 1,
            "voice": speech.voice.name,
        }
    return {
        "type": "session",
        "protocol": protocol.PROTOCOL_VERSION,
        # None: a JSON-only client (no subprotocol offered); it gets no binary frames.
        "subprotocol": subprotocol,
        "session_id": session.id,
        "tutor": {"name": session.tutor.name, "language": session.tutor.language},
        "audio": {"input": dict(INPUT_FORMAT) if voice is not None else None, "output": output},
        "resumed": resumed,
        "expires_at": iso(session.expires_at),
        "history": [m.to_json() for m in session.history],
    }
