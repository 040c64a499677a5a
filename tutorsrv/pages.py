"""Browser pages (roles web and all): sign-in and status, the admin console, a tutor's chat
page, and (role all) the engine test page.

The pages are static HTML plus plain JavaScript in ``static/``: they hold no data of their own
and call the JSON API (``/api``) with the account token that sign-in keeps in the tab's
sessionStorage. So the server renders nothing secret or tenant-specific here, and a page
works the same behind any number of web replicas.

The engine test page talks to the engine exactly as a real client does: it creates a session
through the session API with the engine key (which the operator pastes in; it is kept in page
memory only) and then speaks the WebSocket protocol to the returned engine_url.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from . import __version__
from .appkeys import CONFIG, LLM, REGISTRY, ROLE
from .config import key_file_path
from .web.served_models import model_names

# The pages load scripts, styles and the microphone worklet from this origin only, so an
# injected <script> or inline handler cannot run. connect-src allows any ws:/wss: host because
# engine_url may name an engine on another host (a split deployment).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob:; worker-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _page(request: web.Request, template: str, **context: Any) -> web.Response:
    page = {"version": __version__, "role": request.app[ROLE], **context}
    response = aiohttp_jinja2.render_template(template, request, page)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    # The chat page's URL holds a tutor id; no page URL goes to another site.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def index(request: web.Request) -> web.Response:
    app = request.app
    status: dict[str, Any] = {}
    if REGISTRY in app:
        llm = app[LLM]
        status.update(
            sessions=len(app[REGISTRY]),
            max_sessions=app[REGISTRY].max_sessions,
            llm=f"{llm.name} · {llm.model}",
            key_configured=bool(app[CONFIG].engine.api_key),
            key_file=key_file_path(app[CONFIG]),
        )
    return _page(
        request, "index.html", needs_invite=not app[CONFIG].web.allow_registration, **status
    )


async def admin_page(request: web.Request) -> web.Response:
    # The models a tutor may choose (llm.model, then llm.extra_models).
    return _page(request, "admin.html", models=model_names(request.app))


async def chat_page(request: web.Request) -> web.Response:
    # The id is only handed to the script (autoescaped); the API decides whether the tutor
    # exists and belongs to the caller, and the page shows its answer.
    return _page(request, "chat.html", tutor_id=request.match_info["tutor_id"])


async def test_page(request: web.Request) -> web.Response:
    return _page(request, "test.html")


def setup(app: web.Application) -> None:
    app.router.add_get("/", index, name="index")
    app.router.add_get("/admin", admin_page, name="admin")
    app.router.add_get("/tutors/{tutor_id}/chat", chat_page, name="chat")
    if app[ROLE] == "all":
        app.router.add_get("/test", test_page, name="test")
