"""Account tokens can be revoked: a new or reset password, a sign-out everywhere and a removed
account each end the tokens issued before, at once; and accounts change their own password
and (admins) email with their current password."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from .conftest import MakeClient
from .web_helpers import (
    PASSWORD,
    bearer,
    create_student,
    create_tutor,
    register_admin,
    student_login,
)

ME = "/api/auth/me"
NEW_PASSWORD = "a completely new passphrase"


async def status_and_code(client: TestClient, path: str, headers: dict[str, str]) -> tuple:
    resp = await client.get(path, headers=headers)
    body = await resp.json()
    return resp.status, body.get("error")


async def login_admin(client: TestClient, email: str, password: str) -> Any:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def test_a_reset_password_revokes_the_students_tokens_at_once(
    make_client: MakeClient,
) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    old = await student_login(client, student)
    assert (await status_and_code(client, ME, old))[0] == 200

    resp = await client.patch(
        f"/api/students/{student['id']}", json={"password": NEW_PASSWORD}, headers=admin["headers"]
    )
    assert resp.status == 200
    assert await status_and_code(client, ME, old) == (401, "token_revoked")
    # Not even a session start, which once still worked with the old token.
    resp = await client.post(f"/api/tutors/{tutor['id']}/sessions", json={}, headers=old)
    assert resp.status == 401 and (await resp.json())["error"] == "token_revoked"
    # The new password gives a token that works.
    new = await student_login(client, {**student, "password": NEW_PASSWORD})
    assert (await status_and_code(client, ME, new))[0] == 200
    # A rename is not a revocation.
    resp = await client.patch(
        f"/api/students/{student['id']}", json={"name": "Samira"}, headers=admin["headers"]
    )
    assert resp.status == 200 and (await status_and_code(client, ME, new))[0] == 200


async def test_a_removed_students_token_lists_nothing(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    await create_tutor(client, admin)
    student = await create_student(client, admin)
    token = await student_login(client, student)
    assert (await status_and_code(client, "/api/tutors", token))[0] == 200
    resp = await client.delete(f"/api/students/{student['id']}", headers=admin["headers"])
    assert resp.status == 204
    assert await status_and_code(client, "/api/tutors", token) == (401, "token_revoked")


async def test_an_admin_changes_their_password(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    other_device = bearer(
        (await (await login_admin(client, admin["email"], PASSWORD)).json())["access_token"]
    )

    wrong = await client.post(
        "/api/auth/password",
        json={"current_password": "not my password", "new_password": NEW_PASSWORD},
        headers=admin["headers"],
    )
    assert wrong.status == 403 and (await wrong.json())["field"] == "current_password"
    short = await client.post(
        "/api/auth/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=admin["headers"],
    )
    assert short.status == 422 and (await short.json())["field"] == "new_password"
    assert (await status_and_code(client, ME, admin["headers"]))[0] == 200  # nothing changed

    resp = await client.post(
        "/api/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=admin["headers"],
    )
    assert resp.status == 200
    fresh = bearer((await resp.json())["access_token"])
    assert (await status_and_code(client, ME, fresh))[0] == 200
    # Every earlier token, on this device and the others, is revoked.
    assert await status_and_code(client, ME, admin["headers"]) == (401, "token_revoked")
    assert await status_and_code(client, ME, other_device) == (401, "token_revoked")
    assert (await login_admin(client, admin["email"], PASSWORD)).status == 401
    assert (await login_admin(client, admin["email"], NEW_PASSWORD)).status == 200


async def test_a_student_changes_their_own_password(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    student = await create_student(client, admin)
    token = await student_login(client, student)
    resp = await client.post(
        "/api/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=token,
    )
    assert resp.status == 200
    assert await status_and_code(client, ME, token) == (401, "token_revoked")
    await student_login(client, {**student, "password": NEW_PASSWORD})


async def test_sign_out_everywhere(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    second = bearer(
        (await (await login_admin(client, admin["email"], PASSWORD)).json())["access_token"]
    )
    resp = await client.post("/api/auth/sign-out", headers=second)
    assert resp.status == 204
    for headers in (admin["headers"], second):
        assert await status_and_code(client, ME, headers) == (401, "token_revoked")
    again = await client.post("/api/auth/sign-out", headers=second)
    assert again.status == 401
    # Logging in again works, with the same password.
    assert (await login_admin(client, admin["email"], PASSWORD)).status == 200


async def test_an_admin_changes_name_and_email(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    taken = await register_admin(client)
    headers = admin["headers"]

    resp = await client.patch(ME, json={"name": "Ms Lovelace"}, headers=headers)
    assert resp.status == 200 and (await resp.json())["name"] == "Ms Lovelace"
    # A new email needs the current password.
    resp = await client.patch(ME, json={"email": "ada@school.example"}, headers=headers)
    assert resp.status == 422 and (await resp.json())["field"] == "current_password"
    resp = await client.patch(
        ME, json={"email": "ada@school.example", "current_password": "nope"}, headers=headers
    )
    assert resp.status == 403
    resp = await client.patch(
        ME, json={"email": taken["email"], "current_password": PASSWORD}, headers=headers
    )
    assert resp.status == 409 and (await resp.json())["error"] == "email_taken"
    resp = await client.patch(
        ME, json={"email": "Ada@School.example", "current_password": PASSWORD}, headers=headers
    )
    assert resp.status == 200 and (await resp.json())["email"] == "ada@school.example"
    assert (await login_admin(client, "ada@school.example", PASSWORD)).status == 200
    assert (await login_admin(client, admin["email"], PASSWORD)).status == 401
    assert (await client.patch(ME, json={}, headers=headers)).status == 422

    student = await create_student(client, admin)
    token = await student_login(client, student)
    resp = await client.patch(ME, json={"name": "Me"}, headers=token)
    assert resp.status == 403 and (await resp.json())["error"] == "admin_only"
