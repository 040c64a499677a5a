"""Browser tests' helpers: headless Debian Chromium driven by Playwright's sync API, against a
real ``tutorsrv run --role all`` process on loopback.

The sync API runs its own event loop, so the browser tests are plain (not async) tests; the
server is a subprocess, started from sync code with run_async().
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, Playwright

from .conftest import JWT_SECRET, create_database, drop_database
from .processes import ServerProcess
from .web_helpers import PASSWORD

CHROMIUM = "/usr/bin/chromium"
# No sandbox: CI runs as root. No network beyond loopback here, so nothing in the background
# may try to reach one (updates, field trials, first-run pages).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PHONE = {"width": 375, "height": 740}


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to its end from sync code. In a thread of its own, because Playwright's
    sync API keeps an event loop running in this one while it is open."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def launch(playwright: Playwright, *extra_args: str) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args], headless=True
    )


@contextmanager
def running_server(postgres_url: str, folder: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    """`tutorsrv run --role all` in ``folder`` with a fresh database of its own."""
    name, url = run_async(create_database(postgres_url))
    server = ServerProcess(
        "all", {"DATABASE_URL": url, "TUTORSRV_WEB_JWT_SECRET": JWT_SECRET, **env}, folder
    )
    try:
        run_async(server.start(wait=120))
        yield server
    finally:
        server.stop()
        run_async(drop_database(postgres_url, name))


def api(
    base: str, method: str, path: str, token: str | None = None, body: Any = None
) -> tuple[int, Any]:
    """One JSON API call, outside the browser (test set-up and checks)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@dataclass
class Tenant:
    """An admin with a tutor and a student, made through the API."""

    base: str
    email: str
    token: str
    admin_id: str
    tutor: dict[str, Any]
    student: dict[str, Any] = field(default_factory=dict)


def make_tenant(base: str, *, student_email: str | None = None, **tutor: Any) -> Tenant:
    email = f"admin-{uuid.uuid4().hex[:8]}@school.example"
    status, login = api(
        base, "POST", "/api/auth/register", body={"email": email, "password": PASSWORD}
    )
    assert status == 201, login
    token = login["access_token"]
    status, made = api(
        base, "POST", "/api/tutors", token, {"name": "Ada", "subject": "maths", **tutor}
    )
    assert status == 201, made
    student_email = student_email or f"sam-{uuid.uuid4().hex[:8]}@school.example"
    status, student = api(
        base,
        "POST",
        "/api/students",
        token,
        {"email": student_email, "name": "Sam", "password": PASSWORD},
    )
    assert status == 201, student
    return Tenant(base, email, token, login["user_id"], made, student)


def sign_in_admin(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(base + "/")
    form = page.locator("#admin-login")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/admin")


def sign_in_student(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(base + "/")
    form = page.locator("#student-login")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Sign in").click()


def no_horizontal_scroll(page: Page) -> bool:
    width = page.evaluate("document.documentElement.scrollWidth")
    return width <= page.viewport_size["width"]
