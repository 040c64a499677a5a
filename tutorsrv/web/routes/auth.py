"""Accounts: admins register and log in; students log in; anyone asks who they are, changes
their password, or signs out everywhere."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from ... import validation as v
from ...appkeys import CONFIG, DB
from ...compact_json import json_response
from ...http_errors import APIError
from ...limits import limit_login, limit_registration, login_succeeded
from .. import invites
from ..devices import KNOWN_DEVICES
from ..security import (
    ACCOUNT_TOKENS,
    Principal,
    hash_password,
    own_account,
    principal,
    revoke_tokens,
    verify_password,
)

INVALID_LOGIN = "the email or password is wrong"
ADMIN_LOGIN = "/api/auth/login"
STUDENT_LOGIN = "/api/students/login"


def _login_budget(request: web.Request, role: str, email: str) -> str:
    """Whose budget a failed login is charged to: this browser's own when the account has
    logged in from it before, else the account's (see ``web/devices.py``)."""
    known = request.app[KNOWN_DEVICES].budget_key(request, role, email)
    return known or f"account:{role}:{email.lower()}"


def _remember_device(
    request: web.Request, response: web.Response, role: str, email: str
) -> web.Response:
    path = ADMIN_LOGIN if role == "admin" else STUDENT_LOGIN
    request.app[KNOWN_DEVICES].remember(request, response, path, role, email)
    return response


def _token_response(
    request: web.Request, who: Principal, version: int, status: int = 200
) -> web.Response:
    tokens = request.app[ACCOUNT_TOKENS]
    return json_response(
        {
            "access_token": tokens.issue(who, version),
            "token_type": "bearer",
            "expires_in": tokens.lifetime,
            "role": who.role,
            "user_id": str(who.user_id),
        },
        status=status,
    )


async def register(request: web.Request) -> web.Response:
    """A new admin, i.e. a new organisation. With ``web.allow_registration = false`` only
    with an unused invite (``web/invites.py``), which this registration then spends."""
    needs_invite = not request.app[CONFIG].web.allow_registration
    body = await v.json_body(request)
    v.only_fields(body, ("email", "password", "name", "invite"))
    invite = v.text(body, "invite", max_len=invites.MAX_CODE_LENGTH * 2)
    if needs_invite and not invite:
        raise APIError(
            403,
            "registration_closed",
            "registration on this server needs an invite from its operator ('invite')",
        )
    email = v.email(body)
    password = v.password(body)
    name = v.text(body, "name", max_len=200) or ""
    limit_registration(request)
    db = request.app[DB]
    if needs_invite and not await invites.is_open(db, invite or ""):
        raise APIError(
            403, "invalid_invite", "this invite is unknown, used or expired", field="invite"
        )
    password_hash = await hash_password(password)  # type: ignore[arg-type]
    try:
        async with db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO admins (email, name, password_hash) VALUES ($1, $2, $3) RETURNING id",
                email,
                name,
                password_hash,
            )
            if needs_invite and not await invites.spend(conn, invite or "", row["id"]):
                raise APIError(
                    403, "invalid_invite", "this invite was used meanwhile", field="invite"
                )
    except asyncpg.UniqueViolationError:
        raise APIError(
            409, "email_taken", "an account with this email exists", field="email"
        ) from None
    response = _token_response(request, Principal(row["id"], "admin", row["id"]), 0, status=201)
    return _remember_device(request, response, "admin", email or "")


async def login(request: web.Request) -> web.Response:
    body = await v.login_body(request)
    v.only_fields(body, ("email", "password"))
    email = v.email(body)
    password = v.password(body, new=False)
    budget = _login_budget(request, "admin", email or "")
    limit_login(request, budget)
    row = await request.app[DB].fetchrow(
        "SELECT id, password_hash, token_version FROM admins WHERE lower(email) = $1", email
    )
    if not await verify_password(row["password_hash"] if row else None, password or ""):
        raise APIError(401, "invalid_credentials", INVALID_LOGIN)
    login_succeeded(request, budget)
    who = Principal(row["id"], "admin", row["id"])
    return _remember_device(
        request, _token_response(request, who, row["token_version"]), "admin", email or ""
    )


# Password checks per student login without an organisation_id (one with it: 1).
STUDENT_LOGIN_CHECKS = 2


async def student_login(request: web.Request) -> web.Response:
    body = await v.login_body(request)
    v.only_fields(body, ("email", "password", "organisation_id"))
    email = v.email(body)
    password = v.password(body, new=False) or ""
    tenant = v.text(body, "organisation_id", max_len=64)
    budget = _login_budget(request, "student", email or "")
    limit_login(request, budget)
    rows = await request.app[DB].fetch(
        "SELECT id, admin_id, password_hash, token_version FROM students WHERE lower(email) = $1"
        " ORDER BY created_at, id",
        email,
    )
    if tenant is not None:
        rows = [r for r in rows if str(r["admin_id"]) == tenant.lower()]
    # Check the password first, so nothing about enrolments is revealed without it. Always
    # the same number of checks (real ones, then dummies), so neither the cost of a login nor
    # its time depends on how many organisations enrolled the email: 31 enrolments once
    # meant 31 password hashes per attempt.
    checks = 1 if tenant is not None else STUDENT_LOGIN_CHECKS
    checked = rows[:checks]
    matches = [r for r in checked if await verify_password(r["password_hash"], password)]
    for _ in range(checks - len(checked)):
        await verify_password(None, password)
    if not matches and len(rows) > checks:
        # More enrolments than one login checks: the password may match one of the others.
        raise APIError(
            409,
            "organisation_required",
            "this email is enrolled in several organisations; send 'organisation_id'",
            field="organisation_id",
        )
    if not matches:
        raise APIError(401, "invalid_credentials", INVALID_LOGIN)
    login_succeeded(request, budget)
    if len(matches) > 1:
        raise APIError(
            409,
            "organisation_required",
            "this email and password match students of several organisations; "
            "send 'organisation_id'",
            field="organisation_id",
        )
    row = matches[0]
    who = Principal(row["id"], "student", row["admin_id"])
    return _remember_device(
        request, _token_response(request, who, row["token_version"]), "student", email or ""
    )


async def me(request: web.Request) -> web.Response:
    who = principal(request)
    db = request.app[DB]
    if who.is_admin:
        row = await db.fetchrow(
            "SELECT id, email, name, created_at FROM admins WHERE id = $1", who.user_id
        )
    else:
        row = await db.fetchrow(
            "SELECT id, email, name, created_at FROM students WHERE id = $1 AND admin_id = $2",
            who.user_id,
            who.tenant_id,
        )
    if row is None:
        raise APIError(401, "invalid_token", "this account no longer exists")
    return json_response(
        {
            "id": str(row["id"]),
            "email": row["email"],
            "name": row["name"],
            "role": who.role,
            "organisation_id": str(who.tenant_id),
            "created_at": row["created_at"].isoformat(),
        }
    )


async def _check_current_password(request: web.Request, who: Principal, body: dict) -> None:
    """A change to the account itself needs its current password, not just a token: a
    token left on a shared computer must not be enough to take the account over."""
    current = v.password(body, "current_password", new=False) or ""
    table, where, args = own_account(who)
    row = await request.app[DB].fetchrow(f"SELECT password_hash FROM {table} WHERE {where}", *args)
    # Counted as logins are (no guessing this way), in a budget only this account's tokens
    # can spend.
    budget = f"password:{who.role}:{who.user_id}"
    limit_login(request, budget)
    if not await verify_password(row["password_hash"] if row else None, current):
        raise APIError(
            403,
            "wrong_password",
            "'current_password' is not this account's password",
            field="current_password",
        )
    login_succeeded(request, budget)


async def change_password(request: web.Request) -> web.Response:
    """Set a new password (admins and students alike); every earlier token is revoked, and
    the answer is a fresh one for this client."""
    who = principal(request)
    body = await v.json_body(request)
    v.only_fields(body, ("current_password", "new_password"))
    new = v.password(body, "new_password") or ""
    await _check_current_password(request, who, body)
    password_hash = await hash_password(new)
    table, where, args = own_account(who)
    async with request.app[DB].acquire() as conn, conn.transaction():
        await conn.execute(
            f"UPDATE {table} SET password_hash = ${len(args) + 1} WHERE {where}",
            *args,
            password_hash,
        )
        version = await revoke_tokens(conn, who)
    return _token_response(request, who, version)


async def update_me(request: web.Request) -> web.Response:
    """An admin's own name and email; a new email needs the current password."""
    who = principal(request)
    if not who.is_admin:
        raise APIError(403, "admin_only", "a student's details are changed by their admin")
    body = await v.json_body(request)
    v.only_fields(body, ("name", "email", "current_password"))
    values: dict[str, str] = {}
    if "name" in body:
        values["name"] = v.text(body, "name", max_len=200) or ""
    if "email" in body:
        values["email"] = v.email(body) or ""
        await _check_current_password(request, who, body)
    if not values:
        raise APIError(422, "missing_field", "send 'name' or 'email' to change")
    sets = ", ".join(f"{key} = ${i}" for i, key in enumerate(values, start=2))
    try:
        await request.app[DB].execute(
            f"UPDATE admins SET {sets} WHERE id = $1", who.user_id, *values.values()
        )
    except asyncpg.UniqueViolationError:
        raise APIError(
            409, "email_taken", "another account has this email", field="email"
        ) from None
    return await me(request)


async def sign_out(request: web.Request) -> web.Response:
    """Sign out everywhere: every token of this account, this one included, stops working."""
    await revoke_tokens(request.app[DB], principal(request))
    return web.Response(status=204)


# (method, path) of the /api routes that need no account token.
PUBLIC_ROUTES = frozenset(
    {
        ("POST", "/api/auth/register"),
        ("POST", "/api/auth/login"),
        ("POST", "/api/students/login"),
        ("GET", "/api/openapi.json"),
    }
)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/auth/register", register)
    app.router.add_post(ADMIN_LOGIN, login)
    app.router.add_get("/api/auth/me", me)
    app.router.add_patch("/api/auth/me", update_me)
    app.router.add_post("/api/auth/password", change_password)
    app.router.add_post("/api/auth/sign-out", sign_out)
    app.router.add_post(STUDENT_LOGIN, student_login)
