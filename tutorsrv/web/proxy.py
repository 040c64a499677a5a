"""Optional WebSocket proxy: the web role relays ``/ws/ws/{session_id}`` (and the old server's
``/ws/{session_id}``) to the session's engine, offering it the subprotocol the browser chose.

With ``web.proxy_websocket = true`` (web role only) the ``engine_url`` handed to browsers
points at the web role, so a deployment needs one public origin and the engines can stay on a
private network (DESIGN.md §1, failure 6). Direct connection stays the default: it saves a hop.

The web role does no account check here: the session token in ``?token=`` is the credential,
and the engine verifies it. The web role only reads the session's row to learn which engine
holds it. Frames, text and binary, are relayed both ways in order; each send is awaited before
the next frame is read, so a slow side slows the other down instead of filling memory. When
either side closes, the other is closed with the same code (4401, 4409, 4410... from the
engine reach the browser; a browser that leaves closes the engine socket, so the engine stops
generating).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from ..appkeys import CONFIG, DB, ROLE
from ..compact_json import dumps_text
from ..engine import protocol
from ..engine.public_url import (
    LEGACY_WEBSOCKET_PATH,
    WEBSOCKET_PATH,
    engine_url,
    query_token,
    websocket_base,
)
from ..registry import is_session_id

log = logging.getLogger(__name__)

# Ping both sockets this often; a side that stops answering is treated as gone.
HEARTBEAT_SECONDS = 30.0
# How long closing one side may wait for the peer's close reply.
CLOSE_SECONDS = 5.0
# A close frame's reason is at most 123 bytes (RFC 6455 §5.5).
MAX_REASON_BYTES = 123
# Codes a close frame may carry (RFC 6455 §7.4, IANA registry): never 1005/1006/1015 (they
# only report what happened) or 0 (aiohttp's value for a close frame without a code).
_SENDABLE_STANDARD = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
# What a stopped or unreachable database looks like to the session lookup.
_DATABASE_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class Relay:
    """One proxied connection: the browser's socket and, once open, the engine's."""

    def __init__(self, browser: web.WebSocketResponse, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id
        self.engine: aiohttp.ClientWebSocketResponse | None = None
        self.shutting_down = False

    async def shutdown(self) -> None:
        """The web role is stopping: tell the browser (it may reconnect through another
        replica; the session lives on its engine) and close it; the handler then closes the
        engine side."""
        self.shutting_down = True
        await close_browser(
            self.browser, WSCloseCode.GOING_AWAY, "shutting_down", "server shutting down"
        )


RELAYS = web.AppKey("ws_proxy_relays", set[Relay])
PROXY_HTTP = web.AppKey("ws_proxy_http", aiohttp.ClientSession)


def add_routes(app: web.Application) -> None:
    """Serve the session WebSocket path on the web role, relayed to the engines."""
    app.router.add_get(WEBSOCKET_PATH, proxy_socket)
    app.router.add_get(LEGACY_WEBSOCKET_PATH, proxy_socket)
    app.cleanup_ctx.append(_http_ctx)
    app.on_shutdown.append(_shut_relays)


def proxied_base(request: web.Request) -> str | None:
    """``ws(s)://host`` of this web role as the browser reached it, when sockets are proxied;
    None when browsers connect to engines directly.

    Only the web role proxies: in ``all`` the engine already shares the browser's origin."""
    config = request.app[CONFIG]
    if request.app[ROLE] != "web" or not config.web.proxy_websocket:
        return None
    return websocket_base(request, "")


def engine_socket_url(engine: str, session_id: str, token: str | None) -> str:
    """The engine's own socket URL for a session, from its base URL (http→ws, https→wss)."""
    parts = urlsplit(engine)
    scheme = "wss" if parts.scheme == "https" else "ws"
    base = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    if token is None:
        return base + WEBSOCKET_PATH.format(session_id=session_id)
    return engine_url(base, session_id, token)


async def proxy_socket(request: web.Request) -> web.WebSocketResponse:
    config = request.app[CONFIG]
    session_id = request.match_info["session_id"]
    browser = web.WebSocketResponse(
        max_msg_size=config.engine.max_message_bytes,
        heartbeat=HEARTBEAT_SECONDS,
        protocols=(protocol.SUBPROTOCOL,),
    )
    await browser.prepare(request)
    try:
        # One copy to the engine, however many the browser's URL repeated.
        token = query_token(request.query)
    except ValueError as e:
        await close_browser(browser, protocol.CLOSE_BAD_TOKEN, "invalid_token", str(e))
        return browser
    relay = Relay(browser, session_id)
    relays = request.app[RELAYS]
    relays.add(relay)
    tasks: list[asyncio.Task[_End]] = []
    try:
        engine = await _engine_of(request, browser, session_id)
        if engine is None:
            return browser
        try:
            async with asyncio.timeout(config.web.engine_timeout_seconds):
                relay.engine = await request.app[PROXY_HTTP].ws_connect(
                    engine_socket_url(engine, session_id, token),
                    heartbeat=HEARTBEAT_SECONDS,
                    # What the browser negotiated, so the engine sends it what it can take.
                    protocols=(browser.ws_protocol,) if browser.ws_protocol else (),
                    # The engine is trusted and already bounds what it sends; a direct
                    # connection would have received the same frames.
                    max_msg_size=0,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            # Never log the exception text: it may carry the URL, and with it the token.
            log.warning(
                "proxy: engine %s unreachable (%s)",
                _display(engine),
                type(e).__name__,
                extra={"session_id": session_id},
            )
            await close_browser(
                browser,
                WSCloseCode.TRY_AGAIN_LATER,
                "engine_unavailable",
                "the tutoring engine is not reachable; try again shortly",
            )
            return browser
        if relay.shutting_down:
            return browser
        from_browser = asyncio.create_task(_pump(browser, relay.engine, "browser", "engine"))
        from_engine = asyncio.create_task(_pump(relay.engine, browser, "engine", "browser"))
        tasks = [from_browser, from_engine]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        end = next(iter(done)).result()
        if end.side == "engine":
            # Stop reading the browser first, so that closing it waits for its close reply
            # (a close from under a pending read drops the connection at once).
            from_browser.cancel()
            await asyncio.gather(from_browser, return_exceptions=True)
        await _close_other_side(relay, end)
    finally:
        # Runs also when aiohttp cancels the handler (the browser vanished): no task and no
        # engine socket outlives the browser's connection.
        relays.discard(relay)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if relay.engine is not None and not relay.engine.closed:
            await _close(relay.engine, WSCloseCode.GOING_AWAY, "")
        if not browser.closed:
            await _close(browser, WSCloseCode.GOING_AWAY, "")
    return browser


async def _engine_of(
    request: web.Request, browser: web.WebSocketResponse, session_id: str
) -> str | None:
    """The base URL of the engine holding the session; None once the browser has been told
    why there is none (and its socket closed)."""
    row = None
    if is_session_id(session_id):
        try:
            row = await request.app[DB].fetchrow(
                "SELECT engine FROM sessions WHERE id = $1", session_id
            )
        except _DATABASE_DOWN as e:
            log.warning(
                "proxy: session lookup failed (%s)",
                type(e).__name__,
                extra={"session_id": session_id},
            )
            await close_browser(
                browser,
                WSCloseCode.TRY_AGAIN_LATER,
                "database_unavailable",
                "the database is not reachable; try again shortly",
            )
            return None
    if row is None:
        await close_browser(
            browser, protocol.CLOSE_UNKNOWN_SESSION, "unknown_session", "no such session"
        )
        return None
    engine = row["engine"].rstrip("/")
    if engine not in {u.rstrip("/") for u in request.app[CONFIG].web.engine_urls}:
        # Its engine was removed from web.engine_urls (retired): its sessions are gone, and
        # the proxy only ever connects to configured engines.
        await close_browser(
            browser,
            protocol.CLOSE_ENDED,
            "session_ended",
            "the session's engine is no longer in service",
        )
        return None
    return engine


@dataclass
class _End:
    """How a relay ended: which side went away, with what close code and reason."""

    side: str  # "browser" or "engine"
    code: int | None
    reason: str


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    source_name: str,
    sink_name: str,
) -> _End:
    """Copy frames from ``source`` to ``sink`` until one of them ends. Each send is awaited
    (aiohttp waits for the socket to drain) before the next frame is read, and an unread
    frame stops aiohttp reading from its socket: no queue grows between the two."""
    while True:
        msg = await source.receive()
        try:
            if msg.type is WSMsgType.TEXT:
                await sink.send_str(msg.data)
                continue
            if msg.type is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
                continue
        except ConnectionError:
            return _End(sink_name, sink.close_code, "")
        if msg.type is WSMsgType.CLOSE:
            return _End(source_name, msg.data, msg.extra or "")
        if msg.type is WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
            # A protocol error aiohttp has closed the socket for: 1009 for an oversized frame.
            return _End(source_name, msg.data.code, "")
        # CLOSING, CLOSED, or the connection failed.
        return _End(source_name, source.close_code, "")


async def _close_other_side(relay: Relay, end: _End) -> None:
    engine = relay.engine
    assert engine is not None
    if relay.shutting_down:
        await _close(engine, WSCloseCode.GOING_AWAY, "server shutting down")
    elif end.side == "browser":
        if end.code == 0:  # a close frame without a code
            code = WSCloseCode.OK
        elif end.code is not None and _sendable(end.code):
            code = end.code
        else:  # the browser vanished without a close frame
            code = WSCloseCode.GOING_AWAY
        await _close(engine, code, end.reason)
    elif end.code is not None and _sendable(end.code):
        # The engine closed with a code and has already sent its error frame, if any.
        await _close(relay.browser, end.code, end.reason)
    else:
        log.warning(
            "proxy: engine connection lost (code=%s)",
            end.code,
            extra={"session_id": relay.session_id},
        )
        await close_browser(
            relay.browser,
            WSCloseCode.INTERNAL_ERROR,
            "engine_unavailable",
            "the connection to the tutoring engine was lost",
        )


async def close_browser(ws: web.WebSocketResponse, code: int, error: str, content: str) -> None:
    """Close the browser's socket the way the engine does: a fatal ``error`` frame first."""
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError):
        await ws.send_str(dumps_text(protocol.error(error, content, fatal=True)))
    await _close(ws, code, content)


async def _close(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, code: int, reason: str
) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(CLOSE_SECONDS):
            await ws.close(code=code, message=_reason(reason))


def _sendable(code: int) -> bool:
    return code in _SENDABLE_STANDARD or 3000 <= code <= 4999


def _display(url: str) -> str:
    """The URL without any user:password in it, for logs."""
    return str(URL(url).with_user(None)) if "@" in url else url


def _reason(reason: str) -> bytes:
    data = reason.encode()[:MAX_REASON_BYTES]
    # Cut at a character boundary.
    return data.decode(errors="ignore").encode()


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    # One connection per proxied socket, held for its whole life: no pool limit (the
    # default of 100 would make the 101st browser wait for ever), and no total timeout (a
    # socket lasts as long as its session; the handshake is bounded by the handler).
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
    )
    app[PROXY_HTTP] = http
    app[RELAYS] = set()
    try:
        yield
    finally:
        await http.close()


async def _shut_relays(app: web.Application) -> None:
    relays = list(app.get(RELAYS, ()))
    if relays:
        await asyncio.gather(*(r.shutdown() for r in relays), return_exceptions=True)
