"""CORS (server.cors_origins): a frontend on another origin calls the API. The headers and
preflights here; a real page on another port, in headless Chromium, at the end."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from playwright.sync_api import sync_playwright

from tutorsrv.config import ConfigError
from tutorsrv.engine.protocol import SUBPROTOCOL

from .browser import launch, make_tenant, running_server
from .conftest import MakeClient, make_config, new_session, receive_json, ws_path
from .web_helpers import PASSWORD, register_admin

FRONTEND = "http://frontend.school.example:3000"
STRANGER = "https://elsewhere.example"


async def cors_client(make_client: MakeClient, *origins: str) -> TestClient:
    return await make_client("all", server={"cors_origins": list(origins or [FRONTEND])})


def preflight(method: str, origin: str = FRONTEND) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }


async def test_a_preflight_is_answered_without_a_token(make_client: MakeClient) -> None:
    client = await cors_client(make_client)
    resp = await client.options("/api/tutors", headers=preflight("POST"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert set(resp.headers["Access-Control-Allow-Methods"].split(", ")) >= {"GET", "POST"}
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed >= {"authorization", "content-type"}
    assert int(resp.headers["Access-Control-Max-Age"]) > 0
    # Never credentials: the API takes bearer tokens, not cookies.
    assert "Access-Control-Allow-Credentials" not in resp.headers
    # A path with an id, on the engine's own API too.
    for path, method in (
        ("/api/tutors/00000000-0000-0000-0000-000000000000", "PATCH"),
        ("/v1/sessions", "POST"),
        ("/health", "GET"),
    ):
        resp = await client.options(path, headers=preflight(method))
        assert resp.status == 204, path


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/api/tutors", preflight("POST", STRANGER), 403, "origin_not_allowed"),
        ("/api/no-such-thing", preflight("GET"), 404, "not_found"),
        ("/api/auth/login", preflight("DELETE"), 405, "method_not_allowed"),
    ],
)
async def test_bad_preflights_get_clear_errors(
    make_client: MakeClient, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    client = await cors_client(make_client)
    resp = await client.options(path, headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"] == code


async def test_answers_to_a_listed_origin_are_readable(make_client: MakeClient) -> None:
    client = await cors_client(make_client)
    resp = await client.get("/health", headers={"Origin": FRONTEND})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert "Origin" in resp.headers.getall("Vary")
    # Errors too (the page must be able to read why), with the headers it acts on.
    resp = await client.get("/api/tutors", headers={"Origin": FRONTEND})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == FRONTEND
    exposed = resp.headers["Access-Control-Expose-Headers"]
    assert "Retry-After" in exposed and "WWW-Authenticate" in exposed
    # A signed-in call.
    admin = await register_admin(client)
    resp = await client.get("/api/tutors", headers={"Origin": FRONTEND, **admin["headers"]})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == FRONTEND
    # Another origin's answers carry no permission to read them.
    resp = await client.get("/health", headers={"Origin": STRANGER})
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "Origin" in resp.headers.getall("Vary")


async def test_any_origin(make_client: MakeClient) -> None:
    client = await cors_client(make_client, "*")
    resp = await client.get("/health", headers={"Origin": STRANGER})
    assert resp.headers["Access-Control-Allow-Origin"] == STRANGER


async def test_no_cors_by_default(make_client: MakeClient) -> None:
    client = await make_client("all")
    resp = await client.get("/health", headers={"Origin": FRONTEND})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.options("/api/tutors", headers=preflight("GET"))
    assert resp.status == 403
    assert "server.cors_origins" in (await resp.json())["message"]


async def test_cors_origins_pass_the_allowed_origins_check(make_client: MakeClient) -> None:
    client = await make_client(
        "all", server={"cors_origins": [FRONTEND], "allowed_origins": ["https://tutors.example"]}
    )
    resp = await client.get("/api/tutors", headers={"Origin": FRONTEND})
    assert resp.status == 401  # past the origin check, stopped by the missing token
    resp = await client.get("/api/tutors", headers={"Origin": STRANGER})
    assert resp.status == 403
    assert (await resp.json())["error"] == "origin_not_allowed"
    session = await new_session(client)
    ws = await client.ws_connect(ws_path(session), origin=FRONTEND, protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    await ws.close()


def test_cors_origins_are_checked() -> None:
    for bad in ("frontend.example", "https://frontend.example/app", "ftp://x.example"):
        with pytest.raises(ConfigError, match=r"server\.cors_origins"):
            make_config(server={"cors_origins": [bad]})


# --- a real page on another origin ---------------------------------------------------------

PAGE = """<!doctype html><meta charset="utf-8"><title>frontend</title><script>
async function talk(api, email, password, tutorId) {
  const login = await fetch(api + "/api/students/login", {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({email, password})});
  const token = (await login.json()).access_token;
  const made = await fetch(api + "/api/tutors/" + tutorId + "/sessions", {method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
    body: "{}"});
  const session = await made.json();
  return await new Promise((resolve, reject) => {
    const ws = new WebSocket(session.engine_url, ["tutorsrv.v1"]);
    ws.onopen = () => ws.send(JSON.stringify({type: "text", content: "Hello"}));
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      const m = JSON.parse(e.data);
      if (m.type === "text") { ws.close(); resolve(m.content); }
    };
    ws.onerror = () => reject(new Error("socket failed"));
  });
}
async function health(api) {
  try { return (await fetch(api + "/health")).status; } catch (e) { return e.name; }
}
</script>"""


@pytest.fixture
def frontend() -> Iterator[str]:
    """The page above, served from its own port on loopback (another origin)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_a_page_on_another_origin_signs_in_and_talks(
    postgres_url: str, tmp_path: Path, frontend: str
) -> None:
    env = {
        "TUTORSRV_LLM_BACKEND": "scripted",
        "TUTORSRV_LLM_SCRIPTED_TEXT": "You said: {message}.",
        "TUTORSRV_SERVER_CORS_ORIGINS": frontend,
        # Only listed origins: the frontend passes as a CORS origin, for the socket as well.
        "TUTORSRV_SERVER_ALLOWED_ORIGINS": "https://tutors.school.example",
    }
    with running_server(postgres_url, tmp_path, env) as server, sync_playwright() as p:
        tenant = make_tenant(server.base, greeting="")
        browser = launch(p)
        try:
            page = browser.new_page()
            page.goto(frontend + "/")
            reply = page.evaluate(
                "([api, email, password, tutor]) => talk(api, email, password, tutor)",
                [server.base, tenant.student["email"], PASSWORD, tenant.tutor["id"]],
            )
            assert reply == "You said: Hello."
            assert page.evaluate("(api) => health(api)", server.base) == 200
            # The same page from an origin that is not listed (another host name for the
            # same server) cannot read even /health: the browser's "Failed to fetch".
            page.goto(frontend.replace("127.0.0.1", "localhost") + "/")
            assert page.evaluate("(api) => health(api)", server.base) == "TypeError"
        finally:
            browser.close()
