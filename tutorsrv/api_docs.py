"""Serving the API's description: ``/api/openapi.json`` on every role, and ``/docs`` (the old
backend's Swagger address) leading to the reference page that renders it."""

from __future__ import annotations

from aiohttp import web

from . import __version__, openapi
from .appkeys import ROLE
from .compact_json import json_response
from .web.served_models import model_names

OPENAPI_PATH = "/api/openapi.json"
REFERENCE_PAGE = "/static/api.html"
OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)


def setup(app: web.Application) -> None:
    app.router.add_get(OPENAPI_PATH, serve_document)
    if app[ROLE] in ("web", "all"):
        app.router.add_get("/docs", reference_page)
    app.on_startup.append(_build)


async def _build(app: web.Application) -> None:
    # Built once: the routes and the served models are fixed for the process's life.
    role = app[ROLE]
    app[OPENAPI_DOCUMENT] = openapi.document(
        web=role in ("web", "all"),
        engine=role in ("engine", "all"),
        version=__version__,
        models=model_names(app),
    )


async def serve_document(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_DOCUMENT])


async def reference_page(request: web.Request) -> web.Response:
    raise web.HTTPFound(REFERENCE_PAGE)
