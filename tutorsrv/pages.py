"""Browser pages: a status page (roles web and all) and the engine test page (role all).

The test page talks to the engine exactly as a real client does: it creates a session through
the session API with the engine key (which the operator pastes in; it is kept in page memory
only) and then speaks the WebSocket protocol to the returned engine_url.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from . import __version__
from .appkeys import CONFIG, LLM, REGISTRY, ROLE
from .config import key_file_path


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    app = request.app
    page: dict[str, Any] = {"version": __version__, "role": app[ROLE]}
    if REGISTRY in app:
        llm = app[LLM]
        page.update(
            sessions=len(app[REGISTRY]),
            max_sessions=app[REGISTRY].max_sessions,
            llm=f"{llm.name} · {llm.model}",
            key_configured=bool(app[CONFIG].engine.api_key),
            key_file=key_file_path(app[CONFIG]),
        )
    return page


@aiohttp_jinja2.template("test.html")
async def test_page(request: web.Request) -> dict[str, Any]:
    return {"version": __version__, "role": request.app[ROLE]}


def setup(app: web.Application) -> None:
    app.router.add_get("/", index, name="index")
    if app[ROLE] == "all":
        app.router.add_get("/test", test_page, name="test")
