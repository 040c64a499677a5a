"""A stranger's wrong passwords cannot lock an account's owner out of the browsers they
already use (web/devices.py): each known browser has its own failed-login budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from tutorsrv import limits
from tutorsrv.web.devices import COOKIE_PREFIX, MAX_PER_BROWSER, KnownDevices

from .conftest import MakeClient
from .test_limits import BEHIND_PROXY, FakeClock, error_of, ip
from .web_helpers import PASSWORD, bearer, create_student, register_admin


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(limits, "monotonic", fake)
    return fake


@asynccontextmanager
async def browser(client: TestClient) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser of its own: its own cookies, the same server."""
    async with aiohttp.ClientSession(
        base_url=str(client.make_url("/")), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as session:
        yield session


def device_cookies(session: aiohttp.ClientSession) -> dict[str, Any]:
    return {c.key: c for c in session.cookie_jar if c.key.startswith(COOKIE_PREFIX)}


async def login(
    session: aiohttp.ClientSession, path: str, email: str, password: str, address: str
) -> aiohttp.ClientResponse:
    resp = await session.post(
        path, json={"email": email, "password": password}, headers=ip(address)
    )
    await resp.read()
    return resp


async def test_a_stranger_cannot_lock_the_owner_out(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client("all", server={"login_rate_per_minute": 3, **BEHIND_PROXY})
    admin = await register_admin(client)
    path = "/api/auth/login"
    async with browser(client) as owner, browser(client) as stranger, browser(client) as new:
        assert (await login(owner, path, admin["email"], PASSWORD, "198.51.100.1")).status == 200
        cookie = next(iter(device_cookies(owner).values()))
        assert cookie["httponly"] and cookie["path"] == path
        assert cookie["samesite"] == "Strict"
        # Nothing in it names the account.
        assert admin["email"] not in cookie.key + cookie.value
        assert admin["id"] not in cookie.key + cookie.value

        # A stranger, from addresses of their own, spends the account's budget...
        for n in range(3):
            resp = await login(stranger, path, admin["email"], "guess", f"203.0.113.{n}")
            assert resp.status == 401
        resp = await login(stranger, path, admin["email"], PASSWORD, "203.0.113.9")
        await error_of(resp, 429, "rate_limited")
        # ...which also holds back a browser the owner never used (documented)...
        resp = await login(new, path, admin["email"], PASSWORD, "198.51.100.1")
        await error_of(resp, 429, "rate_limited")
        # ...but not the owner's own browser, from the same network as before or another.
        assert (await login(owner, path, admin["email"], PASSWORD, "198.51.100.1")).status == 200
        assert (await login(owner, path, admin["email"], PASSWORD, "192.0.2.4")).status == 200

        # A known browser still has a budget of its own: three failures, then 429 there...
        for _ in range(3):
            resp = await login(owner, path, admin["email"], "typo", "198.51.100.1")
            assert resp.status == 401
        resp = await login(owner, path, admin["email"], PASSWORD, "198.51.100.1")
        await error_of(resp, 429, "rate_limited")
        # ...and the account's token still changes the password (a budget of its own).
        resp = await client.post(
            "/api/auth/password",
            json={"current_password": PASSWORD, "new_password": "a new long password"},
            headers={**admin["headers"], **ip("203.0.113.9")},
        )
        assert resp.status == 200, await resp.text()

        clock.advance(20)
        resp = await login(new, path, admin["email"], "a new long password", "198.51.100.1")
        assert resp.status == 200


async def test_a_forged_or_borrowed_cookie_is_an_unknown_browser(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client("all", server={"login_rate_per_minute": 2, **BEHIND_PROXY})
    victim = await register_admin(client)
    other = await register_admin(client)
    path = "/api/auth/login"
    async with browser(client) as attacker:
        # The attacker's own account makes their browser known to it, not to the victim.
        assert (await login(attacker, path, other["email"], PASSWORD, "203.0.113.1")).status == 200
        for _ in range(2):
            resp = await login(attacker, path, victim["email"], "guess", "203.0.113.1")
            assert resp.status == 401
        resp = await login(attacker, path, victim["email"], "guess", "203.0.113.1")
        await error_of(resp, 429, "rate_limited")

        # Their cookie, renamed to the victim's cookie name, or a made-up value, is refused
        # as a device (the account's spent budget applies, not a fresh one).
        owned = next(iter(device_cookies(attacker).values()))
        name = KnownDevices(secret="not the server's").cookie_name("admin", victim["email"])
        async with browser(client) as forger:
            async with browser(client) as owner:
                resp = await login(owner, path, victim["email"], PASSWORD, "198.51.100.4")
                # (the budget is spent for unknown browsers: the owner's first login here
                # is refused too, and leaves no cookie; it logs in once the budget refills)
                await error_of(resp, 429, "rate_limited")
                clock.advance(60)
                resp = await login(owner, path, victim["email"], PASSWORD, "198.51.100.4")
                assert resp.status == 200
                for _ in range(2):
                    resp = await login(attacker, path, victim["email"], "guess", "203.0.113.1")
                    assert resp.status == 401
            real_name = next(iter(device_cookies(owner)))
            for value in (owned.value, "x.99999999999.y", owned.value.rsplit(".", 1)[0] + ".zz"):
                forger.cookie_jar.update_cookies({real_name: value, name: value})
                resp = await login(forger, path, victim["email"], PASSWORD, "203.0.113.2")
                await error_of(resp, 429, "rate_limited")


async def test_students_too(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client("all", server={"login_rate_per_minute": 2, **BEHIND_PROXY})
    admin = await register_admin(client)
    student = await create_student(client, admin)
    path = "/api/students/login"
    async with browser(client) as owner, browser(client) as stranger:
        assert (await login(owner, path, student["email"], PASSWORD, "198.51.100.1")).status == 200
        for _ in range(2):
            resp = await login(stranger, path, student["email"], "guess", "203.0.113.1")
            assert resp.status == 401
        resp = await login(stranger, path, student["email"], PASSWORD, "203.0.113.1")
        await error_of(resp, 429, "rate_limited")
        resp = await owner.post(
            path,
            json={"email": student["email"], "password": PASSWORD},
            headers=ip("198.51.100.1"),
        )
        assert resp.status == 200
        # The student's cookie is for the student login only: the admin route never sees it.
        assert {c["path"] for c in device_cookies(owner).values()} == {path}
        token = (await resp.json())["access_token"]
        assert (await owner.get("/api/auth/me", headers=bearer(token))).status == 200


def test_one_browser_keeps_a_bounded_number_of_device_cookies() -> None:
    """A school computer shared by a class: every student's login leaves a cookie, but the
    oldest are expired past MAX_PER_BROWSER, so the Cookie header stays small."""
    devices = KnownDevices("secret")
    cookies = {}
    for n in range(MAX_PER_BROWSER + 5):
        name = devices.cookie_name("student", f"s{n}@school.example")
        cookies[name] = f"nonce{n}.{2_000_000_000 + n}.sig"
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    request = make_mocked_request("POST", "/api/students/login", headers={"Cookie": header})
    response = web.Response()
    devices.remember(request, response, "/api/students/login", "student", "new@school.example")
    expired = sorted(k for k, c in response.cookies.items() if c["max-age"] == "0")
    oldest = sorted(list(cookies)[:6])
    assert expired == oldest
    kept = [k for k, c in response.cookies.items() if c["max-age"] != "0"]
    assert kept == [devices.cookie_name("student", "new@school.example")]
