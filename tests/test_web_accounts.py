"""Accounts on the web role: admin registration and login, account tokens, student login and
what a student's token may do. Every test runs the `all` role against a fresh PostgreSQL
database."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import JWT_SECRET, MakeClient, receive_json, ws_path
from .web_helpers import (
    PASSWORD,
    bearer,
    create_student,
    create_tutor,
    register_admin,
    start_session,
    student_login,
)

ME = "/api/auth/me"
REGISTER = "/api/auth/register"
LOGIN = "/api/auth/login"
STUDENT_LOGIN = "/api/students/login"


def new_email(prefix: str = "admin") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@school.example"


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    """The JSON error body of ``resp``, after checking its status."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    body = await resp.json()
    assert set(body) >= {"error", "message"}, body
    return body


async def web_client(make_client: MakeClient, **sections: dict[str, Any]) -> TestClient:
    return await make_client("all", **sections)


async def shut_down(client: TestClient) -> None:
    """Stop the app while its test database still exists. The make_client fixture drops the
    database before aiohttp_client closes the app, so a transcript turn (the greeting that a
    WebSocket connection starts) still queued then would be retried against a dropped
    database for the whole shutdown flush window (10 s)."""
    await client.close()


# ---------------------------------------------------------------------------------------------
# Registration


async def test_register_returns_a_token_that_works(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    email = new_email()
    resp = await client.post(REGISTER, json={"email": email, "password": PASSWORD, "name": "Ann"})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["role"] == "admin"

    me = await client.get(ME, headers=bearer(body["access_token"]))
    assert me.status == 200, await me.text()
    who = await me.json()
    assert who["email"] == email
    assert who["name"] == "Ann"
    assert who["role"] == "admin"
    assert who["id"] == body["user_id"]
    # An admin is its own organisation.
    assert who["organisation_id"] == body["user_id"]
    assert "password" not in who and "password_hash" not in who


async def test_register_duplicate_email_is_refused_case_insensitively(
    make_client: MakeClient,
) -> None:
    client = await web_client(make_client)
    local = uuid.uuid4().hex[:8]
    first = await client.post(
        REGISTER, json={"email": f"Mixed.{local}@School.example", "password": PASSWORD}
    )
    assert first.status == 201, await first.text()
    again = await client.post(
        REGISTER, json={"email": f"mixed.{local}@school.EXAMPLE", "password": "another password"}
    )
    body = await error_of(again, 409)
    assert body["error"] == "email_taken"
    assert body["field"] == "email"
    # The first account keeps its password, and its email matches in any case.
    login = await client.post(
        LOGIN, json={"email": f"MIXED.{local}@school.example", "password": PASSWORD}
    )
    assert login.status == 200, await login.text()
    refused = await client.post(
        LOGIN, json={"email": f"mixed.{local}@school.example", "password": "another password"}
    )
    assert refused.status == 401


VALID = {"email": "valid@school.example", "password": PASSWORD}

REGISTER_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("empty body", {}, "email"),
    ("email missing", {"password": PASSWORD}, "email"),
    ("email null", {**VALID, "email": None}, "email"),
    ("email empty", {**VALID, "email": ""}, "email"),
    ("email without at", {**VALID, "email": "not-an-email"}, "email"),
    ("email without domain dot", {**VALID, "email": "someone@localhost"}, "email"),
    ("email with space", {**VALID, "email": "some one@school.example"}, "email"),
    ("email a number", {**VALID, "email": 42}, "email"),
    ("email a list", {**VALID, "email": ["a@b.example"]}, "email"),
    ("email too long", {**VALID, "email": "a" * 250 + "@school.example"}, "email"),
    ("password missing", {"email": VALID["email"]}, "password"),
    ("password too short", {**VALID, "password": "1234567"}, "password"),
    ("password too long", {**VALID, "password": "p" * 257}, "password"),
    ("password a number", {**VALID, "password": 12345678}, "password"),
    ("password an object", {**VALID, "password": {"value": PASSWORD}}, "password"),
    ("name a number", {**VALID, "name": 7}, "name"),
    ("name too long", {**VALID, "name": "n" * 201}, "name"),
    # PostgreSQL text cannot hold U+0000: it must be refused as invalid input, not crash.
    ("email with NUL", {**VALID, "email": "nul\x00@school.example"}, "email"),
    ("name with NUL", {**VALID, "name": "Ann\x00"}, "name"),
    ("unknown field", {**VALID, "role": "admin"}, "role"),
    (
        "unknown field organisation",
        {**VALID, "organisation_id": str(uuid.uuid4())},
        "organisation_id",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [pytest.param(body, field, id=name) for name, body, field in REGISTER_INVALID],
)
async def test_register_validation_names_the_field(
    make_client: MakeClient, body: dict[str, Any], field: str
) -> None:
    client = await web_client(make_client)
    resp = await client.post(REGISTER, json=body)
    error = await error_of(resp, 422)
    assert error["field"] == field
    assert error["error"] in ("missing_field", "invalid_field", "unknown_field")
    if field in ("role", "organisation_id"):
        assert error["error"] == "unknown_field"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"email": "a@school.example", "password": ', id="truncated"),
        pytest.param(b"email=a@school.example", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'["a@school.example", "password"]', id="array"),
        pytest.param(b'"a string"', id="string"),
    ],
)
async def test_register_malformed_json_is_400(make_client: MakeClient, raw: bytes) -> None:
    client = await web_client(make_client)
    resp = await client.post(REGISTER, data=raw, headers={"Content-Type": "application/json"})
    error = await error_of(resp, 400)
    assert error["error"] == "invalid_json"


async def test_registration_can_be_switched_off(make_client: MakeClient) -> None:
    client = await web_client(make_client, web={"allow_registration": False})
    email = new_email()
    resp = await client.post(REGISTER, json={"email": email, "password": PASSWORD})
    error = await error_of(resp, 403)
    assert error["error"] == "registration_closed"
    # No account came into being.
    login = await client.post(LOGIN, json={"email": email, "password": PASSWORD})
    assert login.status == 401


# ---------------------------------------------------------------------------------------------
# Login


async def test_login_returns_a_bearer_token(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    admin = await register_admin(client)
    resp = await client.post(LOGIN, json={"email": admin["email"], "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "bearer"
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    me = await client.get(ME, headers=bearer(body["access_token"]))
    assert me.status == 200, await me.text()
    assert (await me.json())["id"] == admin["id"]


async def test_wrong_password_and_unknown_user_answer_the_same(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    admin = await register_admin(client)
    wrong = await client.post(LOGIN, json={"email": admin["email"], "password": "wrong password"})
    unknown = await client.post(LOGIN, json={"email": new_email("nobody"), "password": PASSWORD})
    wrong_body = await error_of(wrong, 401)
    unknown_body = await error_of(unknown, 401)
    assert wrong_body["error"] == "invalid_credentials"
    assert wrong_body == unknown_body


async def test_login_checks_the_password_exactly(make_client: MakeClient) -> None:
    """Passwords are not trimmed at registration, so login must not trim them either: the
    exact password works, a trimmed or padded variant does not."""
    client = await web_client(make_client)
    email = new_email()
    padded = "  padded secret  "
    resp = await client.post(REGISTER, json={"email": email, "password": padded})
    assert resp.status == 201, await resp.text()

    exact = await client.post(LOGIN, json={"email": email, "password": padded})
    assert exact.status == 200, await exact.text()
    trimmed = await client.post(LOGIN, json={"email": email, "password": padded.strip()})
    assert (await error_of(trimmed, 401))["error"] == "invalid_credentials"

    admin = await register_admin(client)
    extra_space = await client.post(
        LOGIN, json={"email": admin["email"], "password": PASSWORD + " "}
    )
    assert (await error_of(extra_space, 401))["error"] == "invalid_credentials"


@pytest.mark.parametrize("path", [LOGIN, STUDENT_LOGIN])
async def test_login_with_a_nul_character_is_a_client_error(
    make_client: MakeClient, path: str
) -> None:
    """No account can have such an email: the answer is invalid credentials or a validation
    error naming the field, never a server error."""
    client = await web_client(make_client)
    resp = await client.post(path, json={"email": "nul\x00@school.example", "password": PASSWORD})
    assert resp.status in (401, 422), await resp.text()
    error = await resp.json()
    if resp.status == 422:
        assert error["field"] == "email"
    else:
        assert error["error"] == "invalid_credentials"


# ---------------------------------------------------------------------------------------------
# Account tokens on /api/auth/me


def _claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _sign(claims: dict[str, Any], key: str | None = JWT_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # HS512 with the (deliberately reused) 42-byte test secret.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, key=key, algorithm=algorithm)


def _without(claims: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k != key}


def _tampered(token: str) -> str:
    """The real token with its payload rewritten (role changed) and the old signature kept."""
    header, _, signature = token.split(".")
    claims = {**_claims_of(token), "role": "student"}
    forged_payload = _sign(claims, "x" * 32).split(".")[1]
    return f"{header}.{forged_payload}.{signature}"


# name -> (build Authorization header from (real token, its claims), expected error code)
TokenCase = Callable[[str, dict[str, Any]], dict[str, str]]
BAD_TOKENS: list[tuple[str, TokenCase, str]] = [
    ("missing", lambda t, c: {}, "not_authenticated"),
    ("empty bearer", lambda t, c: {"Authorization": "Bearer "}, "not_authenticated"),
    ("other scheme", lambda t, c: {"Authorization": f"Basic {t}"}, "not_authenticated"),
    ("token without scheme", lambda t, c: {"Authorization": t}, "not_authenticated"),
    ("garbage", lambda t, c: bearer("not.a.token"), "invalid_token"),
    ("random text", lambda t, c: bearer("hello"), "invalid_token"),
    ("truncated signature", lambda t, c: bearer(t[:-6]), "invalid_token"),
    ("tampered payload", lambda t, c: bearer(_tampered(t)), "invalid_token"),
    (
        "other secret",
        lambda t, c: bearer(_sign(c, "another-secret-0123456789abcdefghijklmnop")),
        "invalid_token",
    ),
    ("algorithm none", lambda t, c: bearer(_sign(c, None, "none")), "invalid_token"),
    (
        "HS512 with the right secret",
        lambda t, c: bearer(_sign(c, algorithm="HS512")),
        "invalid_token",
    ),
    (
        "HS384 with the right secret",
        lambda t, c: bearer(_sign(c, algorithm="HS384")),
        "invalid_token",
    ),
    (
        "expired",
        lambda t, c: bearer(
            _sign({**c, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})
        ),
        "token_expired",
    ),
    ("no exp", lambda t, c: bearer(_sign(_without(c, "exp"))), "invalid_token"),
    ("no audience", lambda t, c: bearer(_sign(_without(c, "aud"))), "invalid_token"),
    (
        "wrong audience",
        lambda t, c: bearer(_sign({**c, "aud": "tutorsrv-engine"})),
        "invalid_token",
    ),
    ("no subject", lambda t, c: bearer(_sign(_without(c, "sub"))), "invalid_token"),
    ("no tenant", lambda t, c: bearer(_sign(_without(c, "tid"))), "invalid_token"),
    ("unknown role", lambda t, c: bearer(_sign({**c, "role": "superuser"})), "invalid_token"),
    ("subject not a uuid", lambda t, c: bearer(_sign({**c, "sub": "admin"})), "invalid_token"),
    ("no version", lambda t, c: bearer(_sign(_without(c, "ver"))), "invalid_token"),
    ("version as text", lambda t, c: bearer(_sign({**c, "ver": "0"})), "invalid_token"),
    ("an older version", lambda t, c: bearer(_sign({**c, "ver": -1})), "token_revoked"),
    ("a later version", lambda t, c: bearer(_sign({**c, "ver": 7})), "token_revoked"),
]


async def test_a_token_built_like_the_bad_ones_but_valid_is_accepted(
    make_client: MakeClient,
) -> None:
    """The control for the cases below: the same construction with the right secret, HS256
    and all claims is accepted, so each refusal is due to the one thing that case changes."""
    client = await web_client(make_client)
    admin = await register_admin(client)
    claims = _claims_of(admin["token"])
    rebuilt = _sign({**claims, "iat": int(time.time()), "exp": int(time.time()) + 600})
    resp = await client.get(ME, headers=bearer(rebuilt))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["id"] == admin["id"]


@pytest.mark.parametrize(
    ("headers_for", "code"),
    [pytest.param(build, code, id=name) for name, build, code in BAD_TOKENS],
)
async def test_bad_tokens_are_refused(
    make_client: MakeClient, headers_for: TokenCase, code: str
) -> None:
    client = await web_client(make_client)
    admin = await register_admin(client)
    headers = headers_for(admin["token"], _claims_of(admin["token"]))
    resp = await client.get(ME, headers=headers)
    error = await error_of(resp, 401)
    assert error["error"] == code
    # A protected resource refuses it the same way.
    tutors = await client.get("/api/tutors", headers=headers)
    assert (await error_of(tutors, 401))["error"] == code


async def test_missing_token_asks_for_bearer_auth(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    resp = await client.get(ME)
    assert (await error_of(resp, 401))["error"] == "not_authenticated"
    assert resp.headers.get("WWW-Authenticate", "").lower().startswith("bearer")


# ---------------------------------------------------------------------------------------------
# Student login


async def test_student_login_gives_a_student_token(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    admin = await register_admin(client)
    student = await create_student(client, admin, name="Sam")
    resp = await client.post(
        STUDENT_LOGIN, json={"email": student["email"].upper(), "password": student["password"]}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "bearer"
    assert body["role"] == "student"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert _claims_of(body["access_token"])["role"] == "student"

    me = await client.get(ME, headers=bearer(body["access_token"]))
    assert me.status == 200, await me.text()
    who = await me.json()
    assert who["role"] == "student"
    assert who["id"] == student["id"]
    assert who["email"] == student["email"]
    assert who["organisation_id"] == admin["id"]


async def test_student_login_failures(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    admin = await register_admin(client)
    student = await create_student(client, admin)
    wrong = await client.post(
        STUDENT_LOGIN, json={"email": student["email"], "password": "wrong password"}
    )
    unknown = await client.post(
        STUDENT_LOGIN, json={"email": new_email("nobody"), "password": PASSWORD}
    )
    wrong_body = await error_of(wrong, 401)
    assert wrong_body["error"] == "invalid_credentials"
    assert wrong_body == await error_of(unknown, 401)
    # A student account is not an admin account, and an admin is not a student.
    as_admin = await client.post(
        LOGIN, json={"email": student["email"], "password": student["password"]}
    )
    assert (await error_of(as_admin, 401))["error"] == "invalid_credentials"
    as_student = await client.post(
        STUDENT_LOGIN, json={"email": admin["email"], "password": PASSWORD}
    )
    assert (await error_of(as_student, 401))["error"] == "invalid_credentials"


async def test_student_login_checks_the_password_exactly(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    admin = await register_admin(client)
    student = await create_student(client, admin, password="  padded secret  ")
    exact = await client.post(
        STUDENT_LOGIN, json={"email": student["email"], "password": "  padded secret  "}
    )
    assert exact.status == 200, await exact.text()
    trimmed = await client.post(
        STUDENT_LOGIN, json={"email": student["email"], "password": "padded secret"}
    )
    assert (await error_of(trimmed, 401))["error"] == "invalid_credentials"


async def test_student_enrolled_by_two_admins_must_name_the_organisation(
    make_client: MakeClient,
) -> None:
    client = await web_client(make_client)
    admin_a = await register_admin(client)
    admin_b = await register_admin(client)
    email = new_email("twice")
    in_a = await create_student(client, admin_a, email=email, password="password in A")
    in_b = await create_student(client, admin_b, email=email, password="password in B")
    assert in_a["id"] != in_b["id"]

    # Different passwords: each one opens its own account, no organisation needed.
    for student, password in ((in_a, "password in A"), (in_b, "password in B")):
        resp = await client.post(STUDENT_LOGIN, json={"email": email, "password": password})
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["access_token"]
        me = await (await client.get(ME, headers=bearer(token))).json()
        assert me["id"] == student["id"]
    # A wrong password reveals nothing about the two enrolments.
    wrong = await client.post(STUDENT_LOGIN, json={"email": email, "password": "not either"})
    assert (await error_of(wrong, 401))["error"] == "invalid_credentials"

    # The same password in both: only the organisation can say which account is meant.
    same = new_email("same")
    await create_student(client, admin_a, email=same, password="shared secret")
    await create_student(client, admin_b, email=same, password="shared secret")
    ambiguous = await client.post(STUDENT_LOGIN, json={"email": same, "password": "shared secret"})
    error = await error_of(ambiguous, 409)
    assert error["error"] == "organisation_required"
    assert error["field"] == "organisation_id"

    for admin, student, password in (
        (admin_a, in_a, "password in A"),
        (admin_b, in_b, "password in B"),
    ):
        resp = await client.post(
            STUDENT_LOGIN,
            json={"email": email, "password": password, "organisation_id": admin["id"]},
        )
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["access_token"]
        me = await (await client.get(ME, headers=bearer(token))).json()
        assert me["id"] == student["id"]
        assert me["organisation_id"] == admin["id"]

    # The organisation picks the account; the other organisation's password does not open it.
    crossed = await client.post(
        STUDENT_LOGIN,
        json={"email": email, "password": "password in B", "organisation_id": admin_a["id"]},
    )
    assert (await error_of(crossed, 401))["error"] == "invalid_credentials"


# ---------------------------------------------------------------------------------------------
# What a student's token may do


async def _school(client: TestClient) -> dict[str, Any]:
    """Admin A with a tutor and two students (the first logged in), admin B with a tutor."""
    admin_a = await register_admin(client)
    admin_b = await register_admin(client)
    tutor_a = await create_tutor(client, admin_a, name="Ada")
    tutor_b = await create_tutor(client, admin_b, name="Bob")
    student = await create_student(client, admin_a, name="Sam")
    other = await create_student(client, admin_a, name="Olive")
    return {
        "admin_a": admin_a,
        "admin_b": admin_b,
        "tutor_a": tutor_a,
        "tutor_b": tutor_b,
        "student": student,
        "other": other,
        "headers": await student_login(client, student),
    }


ADMIN_ONLY: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/tutors", {"name": "Sneaky"}),
    ("PUT", "/api/tutors/{tutor_a}", {"name": "Renamed"}),
    ("PATCH", "/api/tutors/{tutor_a}", {"name": "Renamed"}),
    ("DELETE", "/api/tutors/{tutor_a}", None),
    ("GET", "/api/students", None),
    ("POST", "/api/students", {"email": "x@school.example", "name": "X", "password": PASSWORD}),
    ("GET", "/api/students/{student}", None),
    ("PATCH", "/api/students/{student}", {"name": "Renamed"}),
    ("PATCH", "/api/students/{other}", {"password": "taken over!"}),
    ("DELETE", "/api/students/{student}", None),
    ("DELETE", "/api/students/{other}", None),
]


async def test_student_reads_its_organisations_tutors_without_the_persona(
    make_client: MakeClient,
) -> None:
    client = await web_client(make_client)
    school = await _school(client)
    listing = await client.get("/api/tutors", headers=school["headers"])
    assert listing.status == 200
    tutors = (await listing.json())["tutors"]
    assert [t["id"] for t in tutors] == [school["tutor_a"]["id"]]  # not the other school's
    assert "system_prompt" not in tutors[0] and "model" not in tutors[0]
    assert tutors[0]["name"] == school["tutor_a"]["name"]
    one = await client.get(f"/api/tutors/{school['tutor_a']['id']}", headers=school["headers"])
    assert one.status == 200 and "system_prompt" not in await one.json()
    other = await client.get(f"/api/tutors/{school['tutor_b']['id']}", headers=school["headers"])
    assert (await error_of(other, 404))["error"] == "tutor_not_found"


async def test_student_is_refused_admin_endpoints(make_client: MakeClient) -> None:
    """Every write on /api/tutors and every verb on /api/students answers a student 403
    admin_only, and changes nothing. (One school for the whole matrix: each account costs
    an argon2 hash.)"""
    client = await web_client(make_client)
    school = await _school(client)
    admin = school["admin_a"]["headers"]

    async def snapshot() -> tuple[Any, Any]:
        tutors = await (await client.get("/api/tutors", headers=admin)).json()
        students = await (await client.get("/api/students", headers=admin)).json()
        return tutors, students

    before = await snapshot()
    assert before[0]["tutors"] == [school["tutor_a"]]
    assert len(before[1]["students"]) == 2
    for method, path, body in ADMIN_ONLY:
        url = path.format(
            tutor_a=school["tutor_a"]["id"],
            student=school["student"]["id"],
            other=school["other"]["id"],
        )
        resp = await client.request(method, url, json=body, headers=school["headers"])
        assert resp.status == 403, f"{method} {path}: {resp.status} {await resp.text()}"
        assert (await resp.json())["error"] == "admin_only", f"{method} {path}"
        assert await snapshot() == before, f"{method} {path} changed something"
    # The other student's password was not reset, and the student's own token still works.
    assert await student_login(client, school["other"])
    assert (await client.get(ME, headers=school["headers"])).status == 200


async def test_student_starts_a_session_for_itself(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    school = await _school(client)
    resp = await client.post(
        f"/api/tutors/{school['tutor_a']['id']}/sessions", json={}, headers=school["headers"]
    )
    assert resp.status == 201, await resp.text()
    session = await resp.json()
    assert session["student_id"] == school["student"]["id"]
    assert session["tutor_id"] == school["tutor_a"]["id"]
    assert session["engine_url"] and session["engine_token"] and session["expires_at"]

    # The admin sees it as that student's session with that tutor.
    seen = await client.get(
        f"/api/sessions/{session['session_id']}", headers=school["admin_a"]["headers"]
    )
    assert seen.status == 200, await seen.text()
    row = await seen.json()
    assert row["student_id"] == school["student"]["id"]
    assert row["tutor_id"] == school["tutor_a"]["id"]
    assert row["status"] == "active"

    # And the engine session it was handed is live.
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    try:
        first = await receive_json(ws)
        assert first["type"] == "session"
        assert first["session_id"] == session["session_id"]
    finally:
        await ws.close()
    await shut_down(client)


async def test_student_cannot_use_another_admins_tutor(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    school = await _school(client)
    resp = await client.post(
        f"/api/tutors/{school['tutor_b']['id']}/sessions", json={}, headers=school["headers"]
    )
    foreign = await error_of(resp, 404)
    missing = await client.post(
        f"/api/tutors/{uuid.uuid4()}/sessions", json={}, headers=school["headers"]
    )
    assert foreign == await error_of(missing, 404)
    assert foreign["error"] == "tutor_not_found"
    # No session was created anywhere.
    for admin in (school["admin_a"], school["admin_b"]):
        listing = await (await client.get("/api/sessions", headers=admin["headers"])).json()
        assert listing["sessions"] == []


@pytest.mark.parametrize("whose", ["other", "student"])
async def test_student_cannot_pass_a_student_id(make_client: MakeClient, whose: str) -> None:
    client = await web_client(make_client)
    school = await _school(client)
    resp = await client.post(
        f"/api/tutors/{school['tutor_a']['id']}/sessions",
        json={"student_id": school[whose]["id"]},
        headers=school["headers"],
    )
    error = await error_of(resp, 422)
    assert error["error"] == "unknown_field"
    assert error["field"] == "student_id"
    listing = await (await client.get("/api/sessions", headers=school["admin_a"]["headers"])).json()
    assert listing["sessions"] == []


async def test_student_sees_only_its_own_sessions(make_client: MakeClient) -> None:
    client = await web_client(make_client)
    school = await _school(client)
    mine = await start_session(client, school["admin_a"], school["tutor_a"], school["student"])
    theirs = await start_session(client, school["admin_a"], school["tutor_a"], school["other"])
    own_headers = school["headers"]

    listing = await client.get("/api/sessions", headers=own_headers)
    assert listing.status == 200, await listing.text()
    ids = [s["id"] for s in (await listing.json())["sessions"]]
    assert ids == [mine["session_id"]]

    own = await client.get(f"/api/sessions/{mine['session_id']}", headers=own_headers)
    assert own.status == 200, await own.text()
    own_messages = await client.get(
        f"/api/sessions/{mine['session_id']}/messages", headers=own_headers
    )
    assert own_messages.status == 200, await own_messages.text()

    missing_id = uuid.uuid4().hex
    for method, suffix in (
        ("GET", "/api/sessions/{}"),
        ("GET", "/api/sessions/{}/messages"),
        ("DELETE", "/api/sessions/{}"),
        ("DELETE", "/api/tutors/sessions/{}"),
    ):
        resp = await client.request(
            method, suffix.format(theirs["session_id"]), headers=own_headers
        )
        body = await error_of(resp, 404)
        assert body["error"] == "session_not_found"
        missing = await client.request(method, suffix.format(missing_id), headers=own_headers)
        assert body == await error_of(missing, 404)

    # The other student's session is untouched and still live on the engine.
    seen = await client.get(
        f"/api/sessions/{theirs['session_id']}", headers=school["admin_a"]["headers"]
    )
    assert seen.status == 200
    assert (await seen.json())["status"] == "active"
    ws = await client.ws_connect(ws_path(theirs), protocols=[SUBPROTOCOL])
    try:
        assert (await receive_json(ws))["type"] == "session"
    finally:
        await ws.close()

    # A student may end its own session.
    ended = await client.delete(f"/api/sessions/{mine['session_id']}", headers=own_headers)
    assert ended.status == 204, await ended.text()
    row = await (
        await client.get(f"/api/sessions/{mine['session_id']}", headers=own_headers)
    ).json()
    assert row["status"] == "ended"
    await shut_down(client)


async def test_student_login_costs_the_same_however_many_organisations_enrolled_the_email(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """31 enrolments of one email once meant 31 password hashes per login (and a time that
    told the count). Now a login checks a fixed number of hashes."""
    from tutorsrv.web.routes import auth

    checks = []
    real = auth.verify_password

    async def counted(stored: str | None, password: str) -> bool:
        checks.append(stored)
        return await real(stored, password)

    monkeypatch.setattr(auth, "verify_password", counted)
    client = await make_client("all")
    email = "shared-student@school.example"
    admins = [await register_admin(client) for _ in range(5)]
    for n, admin in enumerate(admins):
        await create_student(client, admin, email=email, password=f"password number {n}")

    async def login(password: str, organisation: str | None = None) -> aiohttp.ClientResponse:
        body = {"email": email, "password": password}
        if organisation:
            body["organisation_id"] = organisation
        checks.clear()
        return await client.post("/api/students/login", json=body)

    one = await create_student(client, admins[0], password="only one enrolment")
    checks.clear()
    resp = await client.post(
        "/api/students/login", json={"email": one["email"], "password": "only one enrolment"}
    )
    assert resp.status == 200 and len(checks) == auth.STUDENT_LOGIN_CHECKS
    # Five enrolments: the same number of checks, whatever the outcome.
    assert (await login("password number 0")).status == 200
    assert len(checks) == auth.STUDENT_LOGIN_CHECKS
    assert (await login("wrong password")).status == 409
    assert len(checks) == auth.STUDENT_LOGIN_CHECKS
    # The password of an enrolment past the checked ones: the organisation must be named.
    past = await login("password number 4")
    assert past.status == 409 and (await past.json())["error"] == "organisation_required"
    named = await login("password number 4", organisation=admins[4]["id"])
    assert named.status == 200 and len(checks) == 1
    wrong = await login("wrong password", organisation=admins[4]["id"])
    assert wrong.status == 401 and len(checks) == 1
