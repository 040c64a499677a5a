"""JSON errors for every HTTP failure, as one middleware.

Handlers raise ``APIError`` with a stable machine-readable ``code``; aiohttp's own
exceptions (404 for an unknown route, 405, 413 for an oversized body) are rewritten into the
same shape, so a client never has to parse an HTML error page:
``{"error": code, "message": text, "field"?: name}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from .compact_json import json_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Headers of aiohttp's exceptions that a client needs to act on.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        body: dict[str, str] = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return json_response(body, status=self.status, headers=self.headers)


def _code_for(exc: web.HTTPException) -> str:
    return {
        404: "not_found",
        405: "method_not_allowed",
        413: "body_too_large",
    }.get(exc.status, exc.reason.lower().replace(" ", "_"))


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as e:
        return e.response()
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = (
            exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else (exc.reason)
        )
        headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        return APIError(exc.status, _code_for(exc), message, headers=headers).response()
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return APIError(500, "internal_error", "internal server error").response()
