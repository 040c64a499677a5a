"""Tenancy on the web role: admin B must not see, change or even detect admin A's tutors,
students and sessions (another tenant's id answers exactly as a missing id does), plus the
tutor and student CRUD that the isolation rests on. All against a real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import MakeClient, receive_json, ws_path
from .web_helpers import (
    PASSWORD,
    bearer,
    create_student,
    create_tutor,
    register_admin,
    start_session,
    student_login,
)


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/json", text
    body = await resp.json()
    assert set(body) >= {"error", "message"}, body
    return body


async def shut_down(client: TestClient) -> None:
    """Stop the app while its test database still exists. The make_client fixture drops the
    database before aiohttp_client closes the app, so a transcript turn (the greeting that a
    WebSocket connection starts) still queued then would be retried against a dropped
    database for the whole shutdown flush window (10 s)."""
    await client.close()


async def validation_problem(resp: Any, field: str | None, code: str | None) -> str | None:
    """What is wrong with ``resp`` as a 422 naming ``field`` (and with ``code``, if given);
    None when nothing is. Matrices collect these so that one run reports every bad case."""
    if resp.status != 422 or resp.content_type != "application/json":
        return f"{resp.status} {await resp.text()}"
    error = await resp.json()
    if error.get("field") != field:
        return f"field {error.get('field')!r}, expected {field!r}: {error}"
    if code is not None and error.get("error") != code:
        return f"error {error.get('error')!r}, expected {code!r}"
    return None


async def get_json(client: TestClient, path: str, admin: dict[str, Any]) -> Any:
    resp = await client.get(path, headers=admin["headers"])
    assert resp.status == 200, f"GET {path}: {resp.status} {await resp.text()}"
    return await resp.json()


# ---------------------------------------------------------------------------------------------
# The isolation matrix


async def _two_tenants(client: TestClient) -> dict[str, Any]:
    """Admin A with a tutor, a student and a live session; admin B with its own tutor and
    student. Also A's view of its data, read back before B does anything."""
    a = await register_admin(client)
    b = await register_admin(client)
    a_tutor = await create_tutor(
        client,
        a,
        name="Ada",
        subject="maths",
        system_prompt="You are Ada, a patient maths tutor.",
        greeting="Hello, I am Ada.",
        language="en",
        voice="joe",
        model="scripted",  # the one model the scripted backend serves
        max_reply_tokens=48,
    )
    a_student = await create_student(client, a, name="Sam")
    a_session = await start_session(client, a, a_tutor, a_student)
    b_tutor = await create_tutor(client, b, name="Bea")
    b_student = await create_student(client, b, name="Bo")
    world = {
        "a": a,
        "b": b,
        "a_tutor": a_tutor,
        "a_student": a_student,
        "a_session": a_session,
        "b_tutor": b_tutor,
        "b_student": b_student,
    }
    world["a_view"] = await _a_view(client, world)
    return world


async def _a_view(client: TestClient, w: dict[str, Any]) -> dict[str, Any]:
    a = w["a"]
    session_id = w["a_session"]["session_id"]
    return {
        "tutor": await get_json(client, f"/api/tutors/{w['a_tutor']['id']}", a),
        "student": await get_json(client, f"/api/students/{w['a_student']['id']}", a),
        "session": await get_json(client, f"/api/sessions/{session_id}", a),
        "tutors": await get_json(client, "/api/tutors", a),
        "students": await get_json(client, "/api/students", a),
        "sessions": await get_json(client, "/api/sessions", a),
        "messages": await get_json(client, f"/api/sessions/{session_id}/messages", a),
    }


async def _assert_a_unchanged(client: TestClient, w: dict[str, Any]) -> None:
    """A's data reads back exactly as before, A's student can still log in with its own
    password, and A's engine session is still live (its WebSocket connects)."""
    before = w["a_view"]
    after = await _a_view(client, w)
    assert after["tutor"] == before["tutor"] == w["a_tutor"]
    assert after["student"] == before["student"]
    assert after["session"] == before["session"]
    assert after["session"]["status"] == "active"
    assert after == before
    await student_login(client, w["a_student"])

    ws = await client.ws_connect(ws_path(w["a_session"]), protocols=[SUBPROTOCOL])
    try:
        first = await receive_json(ws)
        assert first["type"] == "session", first
        assert first["session_id"] == w["a_session"]["session_id"]
    finally:
        await ws.close()


def _missing_id(kind: str) -> str:
    # Tutor and student ids are UUIDs; a session id is the engine's (32 hex digits).
    return uuid.uuid4().hex if kind == "session" else str(uuid.uuid4())


# (name, method, path, body, which of A's resources {target} stands for)
Attempt = tuple[str, str, str, dict[str, Any] | None, str]
ATTEMPTS: list[Attempt] = [
    ("get tutor", "GET", "/api/tutors/{target}", None, "tutor"),
    (
        "put tutor",
        "PUT",
        "/api/tutors/{target}",
        {"name": "Hijacked", "subject": "crime", "system_prompt": "Obey admin B."},
        "tutor",
    ),
    ("patch tutor", "PATCH", "/api/tutors/{target}", {"name": "Hijacked"}, "tutor"),
    ("patch tutor model", "PATCH", "/api/tutors/{target}", {"model": None}, "tutor"),
    ("delete tutor", "DELETE", "/api/tutors/{target}", None, "tutor"),
    ("get student", "GET", "/api/students/{target}", None, "student"),
    ("patch student name", "PATCH", "/api/students/{target}", {"name": "Hijacked"}, "student"),
    (
        "patch student email",
        "PATCH",
        "/api/students/{target}",
        {"email": "hijacked@school.example"},
        "student",
    ),
    (
        "reset student password",
        "PATCH",
        "/api/students/{target}",
        {"password": "admin B was here"},
        "student",
    ),
    ("delete student", "DELETE", "/api/students/{target}", None, "student"),
    (
        "session with A's tutor",
        "POST",
        "/api/tutors/{target}/sessions",
        {"student_id": "{b_student}"},
        "tutor",
    ),
    (
        "session for A's student",
        "POST",
        "/api/tutors/{b_tutor}/sessions",
        {"student_id": "{target}"},
        "student",
    ),
    ("get session", "GET", "/api/sessions/{target}", None, "session"),
    ("get messages", "GET", "/api/sessions/{target}/messages", None, "session"),
    ("delete session", "DELETE", "/api/sessions/{target}", None, "session"),
    ("delete session, old path", "DELETE", "/api/tutors/sessions/{target}", None, "session"),
]


def _target_of(w: dict[str, Any], kind: str) -> str:
    return {
        "tutor": w["a_tutor"]["id"],
        "student": w["a_student"]["id"],
        "session": w["a_session"]["session_id"],
    }[kind]


async def _attempt(client: TestClient, w: dict[str, Any], attempt: Attempt, target: str) -> Any:
    _, method, path, body, _ = attempt
    names = {"target": target, "b_tutor": w["b_tutor"]["id"], "b_student": w["b_student"]["id"]}
    if body is not None:
        body = {k: v.format(**names) if isinstance(v, str) else v for k, v in body.items()}
    return await client.request(method, path.format(**names), json=body, headers=w["b"]["headers"])


@pytest.mark.parametrize("attempt", [pytest.param(a, id=a[0]) for a in ATTEMPTS])
async def test_other_tenant_gets_404_exactly_like_a_missing_id(
    make_client: MakeClient, attempt: Attempt
) -> None:
    client = await make_client("all")
    w = await _two_tenants(client)
    kind = attempt[4]

    foreign = await error_of(await _attempt(client, w, attempt, _target_of(w, kind)), 404)
    missing = await error_of(await _attempt(client, w, attempt, _missing_id(kind)), 404)
    assert foreign == missing
    assert foreign["error"] == f"{kind}_not_found"

    await _assert_a_unchanged(client, w)
    # B's own side did not gain anything either (no session was created for B).
    assert (await get_json(client, "/api/sessions", w["b"]))["sessions"] == []
    await shut_down(client)


async def test_all_attempts_in_a_row_leave_a_untouched(make_client: MakeClient) -> None:
    """Every attempt of the matrix against one world, then A's data is re-read."""
    client = await make_client("all")
    w = await _two_tenants(client)
    for attempt in ATTEMPTS:
        resp = await _attempt(client, w, attempt, _target_of(w, attempt[4]))
        assert resp.status == 404, f"{attempt[0]}: {resp.status} {await resp.text()}"
    await _assert_a_unchanged(client, w)
    await shut_down(client)


async def test_list_endpoints_show_only_the_callers_tenant(make_client: MakeClient) -> None:
    client = await make_client("all")
    w = await _two_tenants(client)
    b_session = await start_session(client, w["b"], w["b_tutor"], w["b_student"])

    tutors = await get_json(client, "/api/tutors", w["b"])
    students = await get_json(client, "/api/students", w["b"])
    sessions = await get_json(client, "/api/sessions", w["b"])
    assert [t["id"] for t in tutors["tutors"]] == [w["b_tutor"]["id"]]
    assert [s["id"] for s in students["students"]] == [w["b_student"]["id"]]
    assert [s["id"] for s in sessions["sessions"]] == [b_session["session_id"]]

    # And the other way round.
    a_tutors = await get_json(client, "/api/tutors", w["a"])
    a_students = await get_json(client, "/api/students", w["a"])
    a_sessions = await get_json(client, "/api/sessions", w["a"])
    assert [t["id"] for t in a_tutors["tutors"]] == [w["a_tutor"]["id"]]
    assert [s["id"] for s in a_students["students"]] == [w["a_student"]["id"]]
    assert [s["id"] for s in a_sessions["sessions"]] == [w["a_session"]["session_id"]]

    # Nothing of A's leaks into B's listings under any key.
    text = str((tutors, students, sessions))
    for secret in (
        w["a_tutor"]["id"],
        w["a_student"]["id"],
        w["a_student"]["email"],
        w["a_session"]["session_id"],
        w["a"]["id"],
    ):
        assert secret not in text


async def test_other_tenants_student_cannot_reach_a(make_client: MakeClient) -> None:
    """B's student gets 404 on A's tutor and on A's session, like missing ids."""
    client = await make_client("all")
    w = await _two_tenants(client)
    headers = await student_login(client, w["b_student"])
    for method, path, body in (
        ("POST", "/api/tutors/{}/sessions", {}),
        ("GET", "/api/sessions/{}", None),
        ("GET", "/api/sessions/{}/messages", None),
        ("DELETE", "/api/sessions/{}", None),
    ):
        kind = "tutor" if "tutors" in path else "session"
        target = _target_of(w, kind)
        foreign = await client.request(method, path.format(target), json=body, headers=headers)
        missing = await client.request(
            method, path.format(_missing_id(kind)), json=body, headers=headers
        )
        assert await error_of(foreign, 404) == await error_of(missing, 404), f"{method} {path}"
    await _assert_a_unchanged(client, w)
    await shut_down(client)


# ---------------------------------------------------------------------------------------------
# Malformed ids

MALFORMED_IDS = ["not-a-uuid", "12345", "0" * 31 + "g", "'%20OR%20'1'='1", "..%2F", "%E2%82%AC"]
MALFORMED_PATHS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/api/tutors/{}", None, "tutor"),
    ("PUT", "/api/tutors/{}", {"name": "X"}, "tutor"),
    ("PATCH", "/api/tutors/{}", {"name": "X"}, "tutor"),
    ("DELETE", "/api/tutors/{}", None, "tutor"),
    ("GET", "/api/students/{}", None, "student"),
    ("PATCH", "/api/students/{}", {"name": "X"}, "student"),
    ("DELETE", "/api/students/{}", None, "student"),
    ("POST", "/api/tutors/{}/sessions", {"student_id": str(uuid.uuid4())}, "tutor"),
    ("GET", "/api/sessions/{}", None, "session"),
    ("GET", "/api/sessions/{}/messages", None, "session"),
    ("DELETE", "/api/sessions/{}", None, "session"),
    ("DELETE", "/api/tutors/sessions/{}", None, "session"),
]


@pytest.mark.parametrize("kind", ["tutor", "student", "session"])
async def test_malformed_ids_in_paths_are_404(make_client: MakeClient, kind: str) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    wrong: list[str] = []
    for method, path, body, of in MALFORMED_PATHS:
        if of != kind:
            continue
        for raw in MALFORMED_IDS:
            url = path.format(raw)
            resp = await client.request(method, url, json=body, headers=admin["headers"])
            error = await resp.json()
            if resp.status != 404 or error.get("error") != f"{kind}_not_found":
                wrong.append(f"{method} {url}: {resp.status} {error}")
    assert wrong == []


async def test_a_nul_byte_in_a_path_id_is_404(make_client: MakeClient) -> None:
    """%00 decodes to U+0000, which PostgreSQL text cannot hold: still just "no such id"."""
    client = await make_client("all")
    admin = await register_admin(client)
    wrong: list[str] = []
    for method, path, body, kind in MALFORMED_PATHS:
        resp = await client.request(
            method, path.format("abc%00def"), json=body, headers=admin["headers"]
        )
        error = await resp.json()
        if resp.status != 404 or error.get("error") != f"{kind}_not_found":
            wrong.append(f"{method} {path}: {resp.status} {error}")
    assert wrong == []


# ---------------------------------------------------------------------------------------------
# Tutors


TUTOR = {
    "name": "Ada",
    "subject": "maths",
    "system_prompt": "You are Ada.",
    "greeting": "Hello!",
    "language": "fr",
    "voice": "joe",
    "model": "scripted",  # a model the server serves (here, the scripted backend's only one)
    "max_reply_tokens": 120,
}


async def test_tutor_crud(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    h = admin["headers"]

    created_resp = await client.post("/api/tutors", json=TUTOR, headers=h)
    assert created_resp.status == 201, await created_resp.text()
    tutor = await created_resp.json()
    assert {k: tutor[k] for k in TUTOR} == TUTOR
    assert set(tutor) >= {"id", "created_at", "updated_at"}
    assert "admin_id" not in tutor
    assert await get_json(client, f"/api/tutors/{tutor['id']}", admin) == tutor

    # Only the name is required; the rest has defaults.
    minimal_resp = await client.post("/api/tutors", json={"name": "  Min  "}, headers=h)
    assert minimal_resp.status == 201, await minimal_resp.text()
    minimal = await minimal_resp.json()
    assert minimal["name"] == "Min"
    assert minimal["language"] == "en"
    assert minimal["model"] is None
    assert minimal["subject"] == minimal["greeting"] == minimal["system_prompt"] == ""

    listing = await get_json(client, "/api/tutors", admin)
    assert [t["id"] for t in listing["tutors"]] == [tutor["id"], minimal["id"]]

    # PUT with every field replaces them all.
    replacement = {
        "name": "Ada II",
        "subject": "physics",
        "system_prompt": "You are Ada II.",
        "greeting": "Hi!",
        "language": "de",
        "voice": "amy",
        "model": None,
        "max_reply_tokens": None,
    }
    put = await client.put(f"/api/tutors/{tutor['id']}", json=replacement, headers=h)
    assert put.status == 200, await put.text()
    replaced = await put.json()
    assert {k: replaced[k] for k in replacement} == replacement
    assert replaced["id"] == tutor["id"]
    assert replaced["created_at"] == tutor["created_at"]
    assert replaced["updated_at"] >= tutor["updated_at"]

    # PATCH changes only what is sent.
    patch = await client.patch(f"/api/tutors/{tutor['id']}", json={"subject": "chem"}, headers=h)
    assert patch.status == 200, await patch.text()
    patched = await patch.json()
    assert patched == {**replaced, "subject": "chem", "updated_at": patched["updated_at"]}
    patch = await client.patch(f"/api/tutors/{tutor['id']}", json={"model": "scripted"}, headers=h)
    assert (await patch.json())["model"] == "scripted"
    assert await get_json(client, f"/api/tutors/{tutor['id']}", admin) == {
        **patched,
        "model": "scripted",
        "updated_at": (await patch.json())["updated_at"],
    }

    # Limits are inclusive.
    longest = {"name": "n" * 200, "language": "l" * 32, "greeting": "g" * 2000}
    at_limit = await client.post("/api/tutors", json=longest, headers=h)
    assert at_limit.status == 201, await at_limit.text()
    assert {k: v for k, v in (await at_limit.json()).items() if k in longest} == longest

    deleted = await client.delete(f"/api/tutors/{tutor['id']}", headers=h)
    assert deleted.status == 204, await deleted.text()
    again = await client.get(f"/api/tutors/{tutor['id']}", headers=h)
    assert (await error_of(again, 404))["error"] == "tutor_not_found"
    twice = await client.delete(f"/api/tutors/{tutor['id']}", headers=h)
    assert (await error_of(twice, 404))["error"] == "tutor_not_found"
    listing = await get_json(client, "/api/tutors", admin)
    assert tutor["id"] not in [t["id"] for t in listing["tutors"]]


async def test_tutor_put_replaces_the_fields_not_sent(make_client: MakeClient) -> None:
    """PUT replaces the tutor (PATCH is the partial update): a field left out of a PUT goes
    back to its default instead of keeping the old value."""
    client = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin, **TUTOR)
    put = await client.put(
        f"/api/tutors/{tutor['id']}", json={"name": "Fresh"}, headers=admin["headers"]
    )
    assert put.status == 200, await put.text()
    replaced = await put.json()
    assert replaced["name"] == "Fresh"
    assert replaced["subject"] == ""
    assert replaced["system_prompt"] == ""
    assert replaced["greeting"] == ""
    assert replaced["language"] == "en"
    assert replaced["voice"] == ""
    assert replaced["model"] is None
    assert replaced["max_reply_tokens"] is None


# (name, method, body, field or None for a body-level error)
TUTOR_INVALID: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("post empty body", "POST", {}, "name"),
    ("post without name", "POST", {"subject": "maths"}, "name"),
    ("post empty name", "POST", {"name": ""}, "name"),
    ("post blank name", "POST", {"name": "   "}, "name"),
    ("post null name", "POST", {"name": None}, "name"),
    ("post numeric name", "POST", {"name": 5}, "name"),
    ("post list name", "POST", {"name": ["Ada"]}, "name"),
    ("post long name", "POST", {"name": "n" * 201}, "name"),
    ("post long subject", "POST", {"name": "A", "subject": "s" * 201}, "subject"),
    ("post long prompt", "POST", {"name": "A", "system_prompt": "p" * 20_001}, "system_prompt"),
    ("post long greeting", "POST", {"name": "A", "greeting": "g" * 2001}, "greeting"),
    ("post long language", "POST", {"name": "A", "language": "l" * 33}, "language"),
    ("post long voice", "POST", {"name": "A", "voice": "v" * 201}, "voice"),
    ("post long model", "POST", {"name": "A", "model": "m" * 201}, "model"),
    ("post numeric model", "POST", {"name": "A", "model": 3}, "model"),
    ("post null subject", "POST", {"name": "A", "subject": None}, "subject"),
    ("post bool greeting", "POST", {"name": "A", "greeting": True}, "greeting"),
    ("post NUL in name", "POST", {"name": "A\x00B"}, "name"),
    ("post NUL in prompt", "POST", {"name": "A", "system_prompt": "be \x00 nice"}, "system_prompt"),
    ("post unknown field", "POST", {"name": "A", "colour": "red"}, "colour"),
    ("post admin_id", "POST", {"name": "A", "admin_id": str(uuid.uuid4())}, "admin_id"),
    ("post id", "POST", {"name": "A", "id": str(uuid.uuid4())}, "id"),
    ("put empty body", "PUT", {}, "name"),
    ("put without name", "PUT", {"subject": "physics"}, "name"),
    ("put empty name", "PUT", {"name": ""}, "name"),
    ("put numeric name", "PUT", {"name": 1}, "name"),
    ("put long voice", "PUT", {"name": "A", "voice": "v" * 201}, "voice"),
    ("put unknown field", "PUT", {"name": "A", "owner": "B"}, "owner"),
    ("patch empty name", "PATCH", {"name": ""}, "name"),
    ("patch null name", "PATCH", {"name": None}, "name"),
    ("patch numeric language", "PATCH", {"language": 7}, "language"),
    ("patch long subject", "PATCH", {"subject": "s" * 201}, "subject"),
    ("patch NUL in greeting", "PATCH", {"greeting": "hi\x00"}, "greeting"),
    ("patch unknown field", "PATCH", {"created_at": "2000-01-01"}, "created_at"),
    ("patch nothing", "PATCH", {}, None),
]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_tutor_validation_names_the_field(make_client: MakeClient, method: str) -> None:
    """Every invalid body of TUTOR_INVALID for this method (one account for all of them:
    each costs an argon2 hash); failures are collected so that all bad cases are named."""
    client = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    path = "/api/tutors" if method == "POST" else f"/api/tutors/{tutor['id']}"
    cases = [(name, body, field) for name, m, body, field in TUTOR_INVALID if m == method]
    assert cases
    wrong: list[str] = []
    for name, body, field in cases:
        resp = await client.request(method, path, json=body, headers=admin["headers"])
        code = "unknown_field" if field is not None and field not in TUTOR else None
        problem = await validation_problem(resp, field, code)
        if problem:
            wrong.append(f"{name}: {problem}")
    assert wrong == []
    # Nothing was created or changed.
    assert (await get_json(client, "/api/tutors", admin))["tutors"] == [tutor]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_tutor_malformed_json_is_400(make_client: MakeClient, method: str) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    path = "/api/tutors" if method == "POST" else f"/api/tutors/{tutor['id']}"
    headers = {**admin["headers"], "Content-Type": "application/json"}
    for raw in (b'{"name": "Ada"', b"[]", b"null"):
        resp = await client.request(method, path, data=raw, headers=headers)
        assert (await error_of(resp, 400))["error"] == "invalid_json", raw
    assert (await get_json(client, "/api/tutors", admin))["tutors"] == [tutor]


async def test_deleting_a_tutor_removes_its_sessions_from_the_listing(
    make_client: MakeClient,
) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    doomed = await create_tutor(client, admin, name="Doomed")
    kept = await create_tutor(client, admin, name="Kept")
    student = await create_student(client, admin)
    gone = await start_session(client, admin, doomed, student)
    stays = await start_session(client, admin, kept, student)
    before = await get_json(client, "/api/sessions", admin)
    assert {s["id"] for s in before["sessions"]} == {gone["session_id"], stays["session_id"]}

    resp = await client.delete(f"/api/tutors/{doomed['id']}", headers=admin["headers"])
    assert resp.status == 204, await resp.text()

    after = await get_json(client, "/api/sessions", admin)
    assert [s["id"] for s in after["sessions"]] == [stays["session_id"]]
    for path in (
        f"/api/sessions/{gone['session_id']}",
        f"/api/sessions/{gone['session_id']}/messages",
    ):
        missing = await client.get(path, headers=admin["headers"])
        assert (await error_of(missing, 404))["error"] == "session_not_found"
    student_view = await get_json(
        client, "/api/sessions", {"headers": await student_login(client, student)}
    )
    assert [s["id"] for s in student_view["sessions"]] == [stays["session_id"]]


# ---------------------------------------------------------------------------------------------
# Students


def _no_secrets(value: Any) -> None:
    """No password or password hash anywhere in a response."""
    text = str(value)
    assert "password" not in text, value
    assert "$argon2" not in text, value


async def test_student_crud(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    h = admin["headers"]
    email = f"Sam.{uuid.uuid4().hex[:6]}@School.example"

    resp = await client.post(
        "/api/students", json={"email": email, "name": " Sam ", "password": PASSWORD}, headers=h
    )
    assert resp.status == 201, await resp.text()
    student = await resp.json()
    _no_secrets(student)
    assert student["email"] == email.lower()
    assert student["name"] == "Sam"
    assert set(student) >= {"id", "email", "name", "created_at", "updated_at"}
    assert await get_json(client, f"/api/students/{student['id']}", admin) == student

    other = await create_student(client, admin, name="Olive")
    listing = await get_json(client, "/api/students", admin)
    _no_secrets(listing)
    assert [s["id"] for s in listing["students"]] == [student["id"], other["id"]]
    for row in listing["students"]:
        assert "password" not in row and "password_hash" not in row

    renamed = await client.patch(
        f"/api/students/{student['id']}", json={"name": "Samuel"}, headers=h
    )
    assert renamed.status == 200, await renamed.text()
    body = await renamed.json()
    _no_secrets(body)
    assert body["name"] == "Samuel"
    assert body["email"] == student["email"]

    deleted = await client.delete(f"/api/students/{other['id']}", headers=h)
    assert deleted.status == 204, await deleted.text()
    missing = await client.get(f"/api/students/{other['id']}", headers=h)
    assert (await error_of(missing, 404))["error"] == "student_not_found"
    twice = await client.delete(f"/api/students/{other['id']}", headers=h)
    assert (await error_of(twice, 404))["error"] == "student_not_found"
    gone_login = await client.post(
        "/api/students/login", json={"email": other["email"], "password": other["password"]}
    )
    assert gone_login.status == 401
    listing = await get_json(client, "/api/students", admin)
    assert [s["id"] for s in listing["students"]] == [student["id"]]


async def test_student_email_is_unique_per_tenant_only(make_client: MakeClient) -> None:
    client = await make_client("all")
    a = await register_admin(client)
    b = await register_admin(client)
    email = f"shared-{uuid.uuid4().hex[:6]}@school.example"
    first = await create_student(client, a, email=email)

    duplicate = await client.post(
        "/api/students",
        json={"email": email.upper(), "name": "Copy", "password": PASSWORD},
        headers=a["headers"],
    )
    error = await error_of(duplicate, 409)
    assert error["error"] == "email_taken"
    assert error["field"] == "email"

    # Another organisation may enrol the same address.
    in_b = await create_student(client, b, email=email)
    assert in_b["id"] != first["id"]

    # Renaming onto a taken address within the tenant is refused too.
    second = await create_student(client, a)
    clash = await client.patch(
        f"/api/students/{second['id']}", json={"email": email}, headers=a["headers"]
    )
    assert (await error_of(clash, 409))["error"] == "email_taken"
    assert (await get_json(client, f"/api/students/{second['id']}", a))["email"] == second["email"]
    assert [s["email"] for s in (await get_json(client, "/api/students", a))["students"]] == [
        email,
        second["email"],
    ]


async def test_student_password_reset(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    student = await create_student(client, admin)
    old_headers = await student_login(client, student)

    new_password = "a brand new password"
    resp = await client.patch(
        f"/api/students/{student['id']}",
        json={"password": new_password},
        headers=admin["headers"],
    )
    assert resp.status == 200, await resp.text()
    _no_secrets(await resp.json())

    with_new = await client.post(
        "/api/students/login", json={"email": student["email"], "password": new_password}
    )
    assert with_new.status == 200, await with_new.text()
    me = await client.get("/api/auth/me", headers=bearer((await with_new.json())["access_token"]))
    assert (await me.json())["id"] == student["id"]
    with_old = await client.post(
        "/api/students/login", json={"email": student["email"], "password": student["password"]}
    )
    assert (await error_of(with_old, 401))["error"] == "invalid_credentials"
    assert old_headers  # the old token is a JWT: it stays valid until it expires

    short = await client.patch(
        f"/api/students/{student['id']}", json={"password": "short"}, headers=admin["headers"]
    )
    assert (await error_of(short, 422))["field"] == "password"


STUDENT_VALID = {"email": "kid@school.example", "name": "Kid", "password": PASSWORD}
STUDENT_INVALID: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("post empty body", "POST", {}, "email"),
    ("post without email", "POST", {"name": "Kid", "password": PASSWORD}, "email"),
    ("post bad email", "POST", {**STUDENT_VALID, "email": "kid"}, "email"),
    ("post numeric email", "POST", {**STUDENT_VALID, "email": 1}, "email"),
    ("post without name", "POST", {"email": "kid@school.example", "password": PASSWORD}, "name"),
    ("post blank name", "POST", {**STUDENT_VALID, "name": "  "}, "name"),
    ("post long name", "POST", {**STUDENT_VALID, "name": "n" * 201}, "name"),
    ("post numeric name", "POST", {**STUDENT_VALID, "name": 3}, "name"),
    ("post without password", "POST", {"email": "kid@school.example", "name": "Kid"}, "password"),
    ("post short password", "POST", {**STUDENT_VALID, "password": "1234567"}, "password"),
    ("post numeric password", "POST", {**STUDENT_VALID, "password": 123456789}, "password"),
    ("post NUL in name", "POST", {**STUDENT_VALID, "name": "Kid\x00"}, "name"),
    ("post NUL in email", "POST", {**STUDENT_VALID, "email": "kid\x00@school.example"}, "email"),
    ("post unknown field", "POST", {**STUDENT_VALID, "admin_id": str(uuid.uuid4())}, "admin_id"),
    ("patch bad email", "PATCH", {"email": "nope"}, "email"),
    ("patch null name", "PATCH", {"name": None}, "name"),
    ("patch empty name", "PATCH", {"name": ""}, "name"),
    ("patch unknown field", "PATCH", {"password_hash": "x"}, "password_hash"),
    ("patch nothing", "PATCH", {}, None),
]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_student_validation_names_the_field(make_client: MakeClient, method: str) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    student = await create_student(client, admin)
    path = "/api/students" if method == "POST" else f"/api/students/{student['id']}"
    cases = [(name, body, field) for name, m, body, field in STUDENT_INVALID if m == method]
    assert cases
    wrong: list[str] = []
    for name, body, field in cases:
        resp = await client.request(method, path, json=body, headers=admin["headers"])
        code = "unknown_field" if field in ("admin_id", "password_hash") else None
        problem = await validation_problem(resp, field, code)
        if problem:
            wrong.append(f"{name}: {problem}")
    assert wrong == []
    listing = (await get_json(client, "/api/students", admin))["students"]
    assert listing == [{k: v for k, v in student.items() if k != "password"}]
