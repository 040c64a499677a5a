"""The engine_url handed to browsers: from ``engine.public_url`` or from the request.

The old system built it from a ``ws://localhost:9000`` setting, so every browser on another
machine got an address it could not reach (DESIGN.md §1, failure 1). Here the host always
comes either from the operator (``engine.public_url``) or from the request the caller made,
including the ``X-Forwarded-Proto``/``X-Forwarded-Host`` of a trusted proxy (``forwarded.py``
has already put them in ``request.scheme`` and ``request.host``).
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from aiohttp import web
from multidict import MultiMapping

from ..http_errors import APIError

# The path is kept as it was for compatibility; the double "ws" is on purpose (failure 2).
WEBSOCKET_PATH = "/ws/ws/{session_id}"
# The old GPU server also answered here; its clients build this URL themselves.
LEGACY_WEBSOCKET_PATH = "/ws/{session_id}"

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def websocket_base(request: web.Request, public_url: str) -> str:
    """``ws(s)://host[:port][/prefix]`` under which this engine's WebSocket is reachable."""
    if public_url:
        parts = urlsplit(public_url)
        return f"{_SCHEMES[parts.scheme]}://{parts.netloc}{parts.path.rstrip('/')}"
    proto, host = request.scheme, request.host
    if not host or not _HOST.match(host):
        raise APIError(
            400,
            "bad_host",
            "cannot build engine_url from this request's Host; set engine.public_url",
        )
    return f"{_SCHEMES.get(proto.lower(), 'ws')}://{host}"


def engine_url(base: str, session_id: str, token: str) -> str:
    path = WEBSOCKET_PATH.format(session_id=session_id)
    return f"{base}{path}?token={quote(token, safe='')}"


def query_token(query: MultiMapping[str]) -> str | None:
    """The session token of a WebSocket URL's query.

    ``engine_url`` carries the token already, and the old clients append their own
    ``?token=`` (or ``&token=``) to it. So a token given more than once is accepted when
    every copy is the same (``?token=T?token=T`` parses as one value ``T?token=T``; JWTs
    hold no ``?``). Different copies raise ``ValueError``: which one was meant is unknowable.
    """
    copies = [part for value in query.getall("token", []) for part in value.split("?token=")]
    if not copies:
        return None
    if any(copy != copies[0] for copy in copies):
        raise ValueError("the session token is given more than once, with different values")
    return copies[0]
