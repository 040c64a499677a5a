"""Cross-origin calls to the HTTP API (CORS), for frontends hosted on another origin.

``server.cors_origins`` lists the origins whose pages may read this server's answers; empty
(the default) sends no CORS headers at all. Two parts, because they act at different times:

- ``preflight``, a middleware ahead of authentication, answers the browser's ``OPTIONS``
  preflight itself, for any route that exists (no handler has to know about CORS, and no
  account token is asked for: browsers never send one on a preflight). A preflight from an
  origin not listed gets 403 ``origin_not_allowed``, which says what to configure;
- ``add_headers``, on ``on_response_prepare``, puts ``Access-Control-Allow-Origin`` on every
  answer to an allowed origin, errors and static files included, just before its headers go
  out. WebSocket upgrades are left alone: browsers do not apply CORS to them (the
  ``allowed_origins`` check does that job).

Credentials are never allowed: the API takes bearer tokens, not cookies, so a page on another
origin can only do what the token it holds allows.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from .config import Config
from .http_errors import APIError, Handler
from .limits import normalise_origin

ANY = "*"
# Request headers a cross-origin page may send: the API's own.
ALLOWED_HEADERS = "Authorization, Content-Type"
# Response headers a cross-origin page may read, beyond the always-readable ones.
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate"
# How long a browser may cache a preflight answer.
MAX_AGE_SECONDS = 600

CORS_ORIGINS = web.AppKey("cors_origins", frozenset[str])


def setup(app: web.Application, config: Config) -> None:
    origins = frozenset(normalise_origin(o) for o in config.server.cors_origins)
    app[CORS_ORIGINS] = origins
    if origins:
        app.on_response_prepare.append(add_headers)


def allowed(request: web.Request) -> str | None:
    """The request's Origin when it may read the answer, else None."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return None
    origins = request.config_dict[CORS_ORIGINS]
    return origin if ANY in origins or normalise_origin(origin) in origins else None


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    wanted = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
    if request.method != hdrs.METH_OPTIONS or wanted is None or hdrs.ORIGIN not in request.headers:
        return await handler(request)
    origin = allowed(request)
    if origin is None:
        raise APIError(
            403, "origin_not_allowed", "this origin may not call this API (server.cors_origins)"
        )
    methods = _methods(request)
    if not methods:
        raise APIError(404, "not_found", "no such route")
    if wanted.upper() not in methods:
        raise APIError(
            405,
            "method_not_allowed",
            f"{wanted.upper()} is not allowed here; allowed: {', '.join(sorted(methods))}",
        )
    return web.Response(
        status=204,
        headers={
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(sorted(methods)),
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
            hdrs.ACCESS_CONTROL_MAX_AGE: str(MAX_AGE_SECONDS),
        },
    )


def _methods(request: web.Request) -> set[str]:
    """The methods the matched path answers (none: no such path). Nothing routes OPTIONS,
    so a real path arrives here as aiohttp's 405 with the methods it does allow."""
    error = request.match_info.http_exception
    if isinstance(error, web.HTTPMethodNotAllowed):
        return {m.upper() for m in error.allowed_methods}
    if error is not None:
        return set()
    route = request.match_info.route
    return {route.method.upper()} if route.method != hdrs.METH_ANY else {"GET"}


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
        return
    origin = allowed(request)
    # Vary on every answer: a cache must not hand one origin's answer to another.
    response.headers.add(hdrs.VARY, hdrs.ORIGIN)
    if origin is None:
        return
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    if request.method != hdrs.METH_OPTIONS:
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS
