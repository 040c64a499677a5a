"""Abuse limits: login and session-start rates (429 + Retry-After), WebSocket message rates,
allowed origins, request body limits. Time is frozen (a fake clock) so nothing here depends
on how fast the machine is."""

from __future__ import annotations

import base64
import os
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tutorsrv import limits
from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.limits import MessageRate, RateLimiter, TokenBucket, Verdict

from .conftest import AUTH, MakeClient, expect_close, new_session, receive_json, ws_path
from .web_helpers import PASSWORD, bearer, create_student, create_tutor, register_admin


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Stops the limiters' time for the test; it moves only with ``advance``."""
    fake = FakeClock()
    monkeypatch.setattr(limits, "monotonic", fake)
    return fake


async def error_of(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == code, body
    return body


# --- the limiters themselves ---------------------------------------------------------------


def test_token_bucket_burst_then_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(rate=2.0, burst=4)
    assert [bucket.take() for _ in range(4)] == [0.0] * 4
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.take() == pytest.approx(0.5)  # a refusal takes nothing
    clock.advance(0.5)
    assert bucket.take() == 0.0
    clock.advance(100)
    assert [bucket.take() for _ in range(5)][-1] == pytest.approx(0.5)  # never above burst


def test_rate_limiter_per_key_retry_after_and_all_or_nothing(clock: FakeClock) -> None:
    limiter = RateLimiter(3)
    assert [limiter.hit("ip:a", "account:x") for _ in range(3)] == [0.0] * 3
    assert limiter.hit("ip:a", "account:x") == pytest.approx(20.0)  # 3 a minute: one per 20 s
    # The account is full: another IP is refused for it, and that IP is not charged.
    assert limiter.hit("ip:b", "account:x") == pytest.approx(20.0)
    assert [limiter.hit("ip:b", "account:y") for _ in range(3)] == [0.0] * 3
    assert limiter.hit("ip:b", "account:z") > 0
    clock.advance(20)
    assert limiter.hit("ip:a", "account:x") == 0.0
    assert limiter.hit("ip:a", "account:x") > 0


def test_rate_limiter_zero_is_off(clock: FakeClock) -> None:
    limiter = RateLimiter(0)
    assert all(limiter.hit("ip:a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_rate_limiter_forgets_idle_keys_and_is_capped(clock: FakeClock) -> None:
    limiter = RateLimiter(3, max_keys=50)
    for i in range(40):
        limiter.hit(f"ip:{i}")
    assert len(limiter) == 40
    clock.advance(61)  # every bucket has refilled: they are the same as none
    limiter.hit("ip:new")
    assert len(limiter) == 1
    for i in range(500):
        limiter.hit(f"ip:flood-{i}")
    assert len(limiter) == 50  # oldest dropped beyond the cap


def test_message_rate_drops_a_burst_and_closes_a_lasting_flood(clock: FakeClock) -> None:
    rate = MessageRate(5)
    # A burst of twice the rate goes through; beyond it, however many, messages are dropped.
    verdicts = [rate.check() for _ in range(100)]
    assert verdicts == [Verdict.ACCEPT] * 10 + [Verdict.DROP] * 90
    # A second later: five more go through, the rest is dropped.
    clock.advance(1.0)
    verdicts = [rate.check() for _ in range(100)]
    assert verdicts == [Verdict.ACCEPT] * 5 + [Verdict.DROP] * 95
    # Two seconds of flooding: once the drop reserve (10 more a second) is spent, the close.
    clock.advance(1.0)
    verdicts = [rate.check() for _ in range(20)]
    assert verdicts == [Verdict.ACCEPT] * 5 + [Verdict.DROP] * 10 + [Verdict.CLOSE] * 5


def test_message_rate_forgives_a_flood_that_stopped(clock: FakeClock) -> None:
    rate = MessageRate(5)
    assert Verdict.DROP in [rate.check() for _ in range(100)]
    clock.advance(3.0)  # quiet long enough for the drop reserve to refill
    assert Verdict.DROP in [rate.check() for _ in range(100)]
    clock.advance(1.0)
    assert Verdict.CLOSE not in [rate.check() for _ in range(100)]


def test_message_rate_tolerates_3x_but_not_5x_sustained(clock: FakeClock) -> None:
    def run(per_second: int, multiple: int, seconds: int) -> list[Verdict]:
        rate = MessageRate(per_second)
        out = []
        for _ in range(seconds * per_second * multiple):
            clock.advance(1 / (per_second * multiple))
            out.append(rate.check())
        return out

    at_3x = run(20, 3, 30)
    assert Verdict.CLOSE not in at_3x and Verdict.DROP in at_3x
    at_5x = run(20, 5, 10)
    first_close = at_5x.index(Verdict.CLOSE)
    assert 2 * 100 <= first_close <= 5 * 100  # after 2 to 5 seconds at 100 messages a second
    assert MessageRate(0).check() is Verdict.ACCEPT


# --- login ---------------------------------------------------------------------------------

# The test client connects from 127.0.0.1: as a proxy on the same machine would.
BEHIND_PROXY = {"trusted_proxies": ["127.0.0.1"]}


def ip(address: str) -> dict[str, str]:
    """The client address a trusted proxy says it relays."""
    return {"X-Forwarded-For": address}


async def test_admin_login_limited_per_account_and_per_ip(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(
        "all",
        server={"login_rate_per_minute": 3, "login_rate_per_ip_per_minute": 3, **BEHIND_PROXY},
    )
    admin = await register_admin(client)
    other = await register_admin(client)
    # From here on a browser that has never logged in to either (registering made this one
    # known to both; tests/test_known_devices.py covers known browsers).
    client.session.cookie_jar.clear()

    def login(email: str, password: str, address: str) -> Any:
        return client.post(
            "/api/auth/login", json={"email": email, "password": password}, headers=ip(address)
        )

    # Failed attempts count: three wrong passwords from three addresses...
    for n in range(3):
        assert (await login(admin["email"], "wrong password", f"198.51.100.{n}")).status == 401
    # ...and the right one is now refused too, from a fresh address.
    resp = await login(admin["email"], PASSWORD, "198.51.100.50")
    body = await error_of(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "20"
    assert "login" in body["message"]
    # The other account is unaffected.
    assert (await login(other["email"], PASSWORD, "198.51.100.51")).status == 200

    # Per account, a right password gives its attempt back...
    for n in range(5):
        client.session.cookie_jar.clear()
        assert (await login(other["email"], PASSWORD, f"203.0.113.{n}")).status == 200
    # ...per address every attempt counts, right or wrong.
    for _ in range(3):
        assert (await login(other["email"], PASSWORD, "198.51.100.60")).status == 200
    resp = await login(other["email"], PASSWORD, "198.51.100.60")
    await error_of(resp, 429, "rate_limited")
    for n in range(3):
        resp = await login(f"nobody{n}@school.example", "x", "192.0.2.1")
        assert resp.status == 401
    resp = await login("nobody9@school.example", "x", "192.0.2.1")
    await error_of(resp, 429, "rate_limited")

    clock.advance(20)
    assert (await login(admin["email"], PASSWORD, "198.51.100.50")).status == 200


async def test_registrations_limited_per_address_per_hour(
    make_client: MakeClient, clock: FakeClock
) -> None:
    """200 parallel registrations from one address once all succeeded (each an organisation,
    each a password hash). Now an address has a budget per hour, counted before hashing."""
    client = await make_client(
        "all", server={"registration_rate_per_ip_per_hour": 3, **BEHIND_PROXY}
    )

    def register(n: int, address: str) -> Any:
        body = {"email": f"org{n}@school.example", "password": PASSWORD, "name": "x"}
        return client.post("/api/auth/register", json=body, headers=ip(address))

    for n in range(3):
        assert (await register(n, "198.51.100.7")).status == 201
    resp = await register(3, "198.51.100.7")
    body = await error_of(resp, 429, "rate_limited")
    assert "registrations" in body["message"] and resp.headers["Retry-After"] == "1200"
    # Another address is not affected; the first gets one more after 20 minutes.
    assert (await register(4, "198.51.100.8")).status == 201
    clock.advance(1200)
    assert (await register(5, "198.51.100.7")).status == 201
    assert (await register(6, "198.51.100.7")).status == 429


async def test_student_login_limited_and_forwarded_ignored_when_untrusted(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(
        "all",
        server={"login_rate_per_minute": 3, "login_rate_per_ip_per_minute": 3},
    )
    admin = await register_admin(client)
    students = [await create_student(client, admin) for _ in range(4)]
    # No trusted proxy (the default): every request comes from the test client's address,
    # whatever X-Forwarded-For says.
    for n, student in enumerate(students[:3]):
        resp = await client.post(
            "/api/students/login",
            json={"email": student["email"], "password": PASSWORD},
            headers=ip(f"198.51.100.{n}"),
        )
        assert resp.status == 200
    resp = await client.post(
        "/api/students/login",
        json={"email": students[3]["email"], "password": PASSWORD},
        headers=ip("198.51.100.99"),
    )
    await error_of(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) == 20
    # Admin and student logins share the address's budget.
    resp = await client.post(
        "/api/auth/login", json={"email": admin["email"], "password": PASSWORD}
    )
    await error_of(resp, 429, "rate_limited")


# --- session starts ------------------------------------------------------------------------


async def test_session_starts_limited_per_account_and_per_ip(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(
        "all",
        server={"session_rate_per_minute": 3, "session_rate_per_ip_per_minute": 3, **BEHIND_PROXY},
    )
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    path = f"/api/tutors/{tutor['id']}/sessions"

    for _ in range(3):
        resp = await client.post(
            path,
            json={"student_id": student["id"]},
            headers={**admin["headers"], **ip("198.51.100.1")},
        )
        assert resp.status == 201, await resp.text()
    resp = await client.post(
        path, json={"student_id": student["id"]}, headers={**admin["headers"], **ip("192.0.2.7")}
    )
    await error_of(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "20"

    # The student is another account: its own budget, but the same address's.
    resp = await client.post(
        "/api/students/login", json={"email": student["email"], "password": PASSWORD}
    )
    student_headers = bearer((await resp.json())["access_token"])
    resp = await client.post(path, json={}, headers={**student_headers, **ip("198.51.100.1")})
    await error_of(resp, 429, "rate_limited")
    resp = await client.post(path, json={}, headers={**student_headers, **ip("192.0.2.8")})
    assert resp.status == 201, await resp.text()

    # The engine's own session API (service key) has no such limit.
    for _ in range(5):
        await new_session(client)

    clock.advance(20)
    resp = await client.post(path, json={"student_id": student["id"]}, headers=admin["headers"])
    assert resp.status == 201, await resp.text()


# --- WebSocket message rate ----------------------------------------------------------------


async def connect(client: TestClient, session: dict[str, Any]) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    return ws


async def test_ws_excess_messages_dropped_socket_stays_open(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(server={"ws_messages_per_second": 5})
    ws = await connect(client, await new_session(client))
    # Binary frames count: 10 (the burst) are answered, the 11th message is dropped.
    for _ in range(10):
        await ws.send_bytes(b"\x00" * 64)
    for n in range(3):
        await ws.send_json({"type": "ping", "id": n})
    replies = [await receive_json(ws) for _ in range(13)]
    assert [m.get("code") for m in replies[:10]] == ["audio_unavailable"] * 10
    assert [(m["type"], m["code"], m["fatal"]) for m in replies[10:]] == [
        ("error", "rate_limited", False)
    ] * 3

    clock.advance(1.0)  # five more messages' worth
    for n in range(5):
        await ws.send_json({"type": "ping", "id": n})
    assert [await receive_json(ws) for _ in range(5)] == [
        {"type": "pong", "id": n} for n in range(5)
    ]
    assert not ws.closed
    await ws.close()


async def test_ws_flood_closed_with_1008_others_unaffected(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(server={"ws_messages_per_second": 5})
    bystander = await connect(client, await new_session(client))
    flooder = await connect(client, await new_session(client))

    async def flood(count: int) -> None:
        for n in range(count):
            try:
                if n % 2:
                    await flooder.send_bytes(os.urandom(32))
                else:
                    await flooder.send_json({"type": "ping", "id": n})
            except ConnectionError:
                return  # the server has closed it already

    def codes(messages: list[dict[str, Any]]) -> list[str]:
        return [m.get("code", m["type"]) for m in messages]

    # Two seconds (of the limiters' clock) of flooding: dropped, answered, still open.
    await flood(100)
    first = [await receive_json(flooder) for _ in range(100)]
    assert codes(first) == ["pong", "audio_unavailable"] * 5 + ["rate_limited"] * 90
    assert not any(m.get("fatal") for m in first)
    clock.advance(1.0)
    await flood(100)
    second = [await receive_json(flooder) for _ in range(100)]
    burst = ["pong", "audio_unavailable", "pong", "audio_unavailable", "pong"]
    assert codes(second) == burst + ["rate_limited"] * 95
    # And it goes on: closed with 1008 after a fatal error frame.
    clock.advance(1.0)
    await flood(100)
    code, before = await expect_close(flooder)
    assert code == 1008
    assert codes(before) == burst + ["rate_limited"] * 11
    assert before[-1]["fatal"] is True and not any(m["fatal"] for m in before[5:-1])

    # The other socket, and a new session, work as before.
    await bystander.send_json({"type": "ping", "id": "still-here"})
    assert await receive_json(bystander) == {"type": "pong", "id": "still-here"}
    fresh = await connect(client, await new_session(client))
    await fresh.send_json({"type": "text", "content": "hello"})
    while (message := await receive_json(fresh))["type"] != "response_done":
        assert message["type"] != "error", message
    for ws in (bystander, fresh):
        await ws.close()


# --- allowed origins -----------------------------------------------------------------------

ALLOWED = "https://tutors.school.example"
EVIL = "https://evil.example"


def upgrade_headers(origin: str | None) -> dict[str, str]:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def test_api_origins(make_client: MakeClient) -> None:
    client = await make_client("all", server={"allowed_origins": [ALLOWED]})
    body = {"email": "a@school.example", "password": PASSWORD}
    resp = await client.post("/api/auth/register", json=body, headers={"Origin": EVIL})
    await error_of(resp, 403, "origin_not_allowed")
    resp = await client.post("/api/auth/register", json=body, headers={"Origin": ALLOWED + "/"})
    assert resp.status == 201
    token = (await resp.json())["access_token"]
    # No Origin: not a browser. The server's own origin: its own pages.
    assert (await client.get("/api/auth/me", headers=bearer(token))).status == 200
    own = f"http://{client.host}:{client.port}"
    headers = {**bearer(token), "Origin": own}
    assert (await client.get("/api/auth/me", headers=headers)).status == 200
    resp = await client.get("/api/auth/me", headers={**bearer(token), "Origin": "null"})
    await error_of(resp, 403, "origin_not_allowed")
    # Outside /api (pages, health) nothing changes.
    assert (await client.get("/health", headers={"Origin": EVIL})).status == 200


async def test_api_any_origin_when_list_empty(make_client: MakeClient) -> None:
    client = await make_client("all")
    body = {"email": "a@school.example", "password": PASSWORD}
    resp = await client.post("/api/auth/register", json=body, headers={"Origin": EVIL})
    assert resp.status == 201


async def test_engine_socket_origins(make_client: MakeClient) -> None:
    client = await make_client(server={"allowed_origins": [ALLOWED]})
    session = await new_session(client)
    resp = await client.get(ws_path(session), headers=upgrade_headers(EVIL))
    await error_of(resp, 403, "origin_not_allowed")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(ws_path(session), origin=EVIL, protocols=[SUBPROTOCOL])
    assert refused.value.status == 403
    for origin in (ALLOWED, None):
        ws = await client.ws_connect(ws_path(session), origin=origin, protocols=[SUBPROTOCOL])
        assert (await receive_json(ws))["type"] == "session"
        await ws.close()


async def test_proxy_socket_origins(make_client: MakeClient) -> None:
    client = await make_client(
        "web",
        server={"allowed_origins": [ALLOWED]},
        web={"engine_urls": ["http://127.0.0.1:9"], "proxy_websocket": True},
    )
    path = "/ws/ws/" + "0" * 32 + "?token=x"
    resp = await client.get(path, headers=upgrade_headers(EVIL))
    await error_of(resp, 403, "origin_not_allowed")
    # Without an Origin the upgrade goes ahead (and the unknown session is refused on it).
    ws = await client.ws_connect(path, protocols=[SUBPROTOCOL])
    code, before = await expect_close(ws)
    assert code == 4404 and before[-1]["code"] == "unknown_session"


# --- request body limits -------------------------------------------------------------------

BIG = b'{"name": "' + b"x" * (300 * 1024) + b'"}'


async def test_bodies_over_the_limit_get_413_json(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    json_type = {"Content-Type": "application/json"}
    for path, headers in (
        ("/api/auth/login", {}),
        ("/api/auth/register", {}),
        ("/api/tutors", admin["headers"]),
        ("/v1/sessions", AUTH),
        ("/internal/v1/turns", AUTH),
    ):
        resp = await client.post(path, data=BIG, headers={**headers, **json_type})
        body = await error_of(resp, 413, "body_too_large")
        assert body["message"], path
    # Just under the limit is read (and then judged on its content).
    small = b'{"name": "' + b"x" * (200 * 1024) + b'"}'
    resp = await client.post("/api/tutors", data=small, headers={**admin["headers"], **json_type})
    assert resp.status != 413
