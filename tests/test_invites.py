"""Registration by invite: with web.allow_registration = false an organisation registers only
with a code from ``tutorsrv invites create``, and each code admits one registration."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import CONFIG, DB
from tutorsrv.web import invites

from .conftest import MakeClient
from .test_limits import error_of
from .web_helpers import PASSWORD

REGISTER = "/api/auth/register"


def cli(client: TestClient, *args: str) -> subprocess.CompletedProcess[str]:
    """``tutorsrv invites ...`` against the test server's own database."""
    env = {**os.environ, "TUTORSRV_DATABASE_URL": client.app[CONFIG].database.url}
    return subprocess.run(
        [sys.executable, "-m", "tutorsrv", "invites", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def registration(invite: str | None = None, email: str | None = None) -> dict[str, str]:
    body = {"email": email or f"org-{uuid.uuid4().hex[:8]}@school.example", "password": PASSWORD}
    if invite is not None:
        body["invite"] = invite
    return body


async def test_an_invite_from_the_command_line_admits_one_registration(
    make_client: MakeClient,
) -> None:
    client = await make_client("all", web={"allow_registration": False})
    made = await asyncio.to_thread(cli, client, "create", "--days", "2", "--note", "Hill School")
    assert made.returncode == 0, made.stderr
    code = made.stdout.strip()
    assert code.startswith(invites.CODE_PREFIX) and "not shown again" in made.stderr
    # Only its hash is stored.
    stored = await client.app[DB].fetchval("SELECT code_sha256 FROM registration_invites")
    assert code.encode() not in stored

    listed = await asyncio.to_thread(cli, client, "list")
    assert listed.returncode == 0 and " open " in listed.stdout and "Hill School" in listed.stdout

    resp = await client.post(REGISTER, json=registration(code, "head@hill.example"))
    assert resp.status == 201, await resp.text()
    login = await client.post(
        "/api/auth/login", json={"email": "head@hill.example", "password": PASSWORD}
    )
    assert login.status == 200
    # Spent: a second registration with it is refused, and nothing is created.
    resp = await client.post(REGISTER, json=registration(code, "other@hill.example"))
    await error_of(resp, 403, "invalid_invite")
    assert await client.app[DB].fetchval("SELECT count(*) FROM admins") == 1
    listed = await asyncio.to_thread(cli, client, "list")
    assert " used " in listed.stdout

    # A used invite cannot be revoked; an unused one can, once.
    invite_id = listed.stdout.split()[0]
    assert (await asyncio.to_thread(cli, client, "revoke", invite_id)).returncode == 1
    spare = (await asyncio.to_thread(cli, client, "create")).stdout.strip()
    spare_id = (await asyncio.to_thread(cli, client, "list")).stdout.splitlines()[-1].split()[0]
    assert (await asyncio.to_thread(cli, client, "revoke", spare_id)).returncode == 0
    assert (await asyncio.to_thread(cli, client, "revoke", spare_id)).returncode == 1
    resp = await client.post(REGISTER, json=registration(spare))
    await error_of(resp, 403, "invalid_invite")
    bad = await asyncio.to_thread(cli, client, "revoke", "not-an-id")
    assert bad.returncode == 2 and "not an invite id" in bad.stderr


async def test_closed_registration_refuses_missing_bogus_and_expired_invites(
    make_client: MakeClient,
) -> None:
    client = await make_client("all", web={"allow_registration": False})
    db = client.app[DB]
    # The home page's registration form asks for the invite.
    page = await (await client.get("/")).text()
    assert 'name="invite"' in page
    resp = await client.post(REGISTER, json=registration())
    body = await error_of(resp, 403, "registration_closed")
    assert "invite" in body["message"]
    for bogus, status, error in (
        ("inv_nothing", 403, "invalid_invite"),
        ("x" * 200, 422, "invalid_field"),
        (" ", 403, "registration_closed"),
    ):
        resp = await client.post(REGISTER, json=registration(bogus))
        await error_of(resp, status, error)
    resp = await client.post(REGISTER, json=registration(12345))  # type: ignore[arg-type]
    await error_of(resp, 422, "invalid_field")

    _, code = await invites.create(db, days=1)
    await db.execute("UPDATE registration_invites SET expires_at = now() - interval '1 second'")
    resp = await client.post(REGISTER, json=registration(code))
    await error_of(resp, 403, "invalid_invite")
    assert await db.fetchval("SELECT count(*) FROM admins") == 0
    assert [i.state for i in await invites.listing(db)] == ["expired"]


async def test_two_registrations_racing_with_one_invite_make_one_organisation(
    make_client: MakeClient,
) -> None:
    client = await make_client("all", web={"allow_registration": False})
    db = client.app[DB]
    _, code = await invites.create(db, days=1)
    answers = await asyncio.gather(
        *(client.post(REGISTER, json=registration(code)) for _ in range(4))
    )
    assert sorted(r.status for r in answers) == [201, 403, 403, 403]
    assert await db.fetchval("SELECT count(*) FROM admins") == 1


async def test_open_registration_needs_no_invite(make_client: MakeClient) -> None:
    client = await make_client("all")
    assert 'name="invite"' not in await (await client.get("/")).text()
    resp = await client.post(REGISTER, json=registration())
    assert resp.status == 201
    # An invite sent anyway is neither needed nor spent.
    _, code = await invites.create(client.app[DB], days=1)
    resp = await client.post(REGISTER, json=registration(code))
    assert resp.status == 201
    assert [i.state for i in await invites.listing(client.app[DB])] == ["open"]
