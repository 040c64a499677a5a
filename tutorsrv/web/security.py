"""Passwords (argon2id) and account tokens (JWT, HS256 pinned, expiry required).

A token says who is calling (``sub``), as what (``role``: admin or student), for which
tenant (``tid``, the admin's id), and which of the account's token versions it belongs to
(``ver``). Handlers read the ``Principal`` that the ``authenticate`` middleware puts on the
request; every query is then scoped by ``principal.tenant_id``.

Tokens are signed, not stored, so revoking them works by version: each request checks the
token's ``ver`` against the account's ``token_version`` (one primary-key lookup). Raising the
account's version (a new password, "sign out everywhere") revokes every earlier token, and a
removed account has none.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import asyncpg
import jwt
from aiohttp import hdrs, web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..appkeys import DB
from ..http_errors import APIError, Handler

ALGORITHM = "HS256"
AUDIENCE = "tutorsrv-web"
Role = Literal["admin", "student"]

_hasher = PasswordHasher()
# Password hashing has threads of its own, one per core: each hash holds 64 MiB while it
# runs, so this bounds their memory (a registration flood once took +410 MiB through the
# shared default pool), and nothing else that runs in threads (recordings, the transcript
# queue) waits behind a flood of logins, nor logins behind it.
_argon2_threads = ThreadPoolExecutor(
    max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="argon2"
)
# New hashes (registrations, enrolments, password changes) have one thread of their own:
# 200 registrations at once once queued in front of every login (another school's login
# 0.16 s -> 1.8 s). Now they wait behind each other, and a login always finds its threads.
_new_hash_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2-new")


# Verified against when the account does not exist, so that "no such user" and "wrong
# password" take the same time and cannot be told apart.
@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: the engine role imports this module too.
    return _hasher.hash("tutorsrv-no-such-account")


async def hash_password(password: str) -> str:
    # argon2 is deliberately slow; keep it off the event loop.
    return await asyncio.get_running_loop().run_in_executor(
        _new_hash_thread, _hasher.hash, password
    )


async def verify_password(stored_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return (
                _hasher.verify(stored_hash or _dummy_hash(), password) and stored_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.get_running_loop().run_in_executor(_argon2_threads, check)


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: Role
    tenant_id: uuid.UUID  # the admin who owns everything this caller may see

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


PRINCIPAL = web.RequestKey("principal", Principal)


class AccountTokens:
    def __init__(self, secret: str, lifetime_seconds: float) -> None:
        self._secret = secret
        self.lifetime = int(lifetime_seconds)

    def issue(self, principal: Principal, version: int) -> str:
        now = int(time.time())
        claims = {
            "sub": str(principal.user_id),
            "role": principal.role,
            "tid": str(principal.tenant_id),
            "ver": version,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + self.lifetime,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> tuple[Principal, int]:
        """The caller and the token's version; 401 for a bad or expired token."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["exp", "sub", "role", "tid", "ver", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise APIError(
                401, "token_expired", "the access token has expired; log in again"
            ) from None
        except jwt.InvalidTokenError:
            raise APIError(401, "invalid_token", "the access token is invalid") from None
        try:
            role, version = claims["role"], claims["ver"]
            if role not in ("admin", "student") or type(version) is not int:
                raise ValueError(role)
            return Principal(uuid.UUID(claims["sub"]), role, uuid.UUID(claims["tid"])), version
        except (ValueError, TypeError):
            raise APIError(401, "invalid_token", "the access token is invalid") from None


ACCOUNT_TOKENS = web.AppKey("account_tokens", AccountTokens)

REVOKED = (
    "this access token was revoked (a new password, a sign-out everywhere, or a removed "
    "account); log in again"
)


def own_account(who: Principal) -> tuple[str, str, tuple[uuid.UUID, ...]]:
    """The caller's own account row, scoped to its tenant: (table, WHERE clause, its
    parameters $1.. ). An admin's id is its tenant; a student also names its admin."""
    if who.is_admin:
        return "admins", "id = $1", (who.user_id,)
    return "students", "id = $1 AND admin_id = $2", (who.user_id, who.tenant_id)


async def token_version(db: asyncpg.Pool, who: Principal) -> int | None:
    """The account's current token version; None if the account is gone."""
    table, where, args = own_account(who)
    return await db.fetchval(f"SELECT token_version FROM {table} WHERE {where}", *args)


async def revoke_tokens(db: asyncpg.Pool | asyncpg.Connection, who: Principal) -> int:
    """Raise the account's token version (every token issued so far stops working); returns
    the new version, for a fresh token."""
    table, where, args = own_account(who)
    return await db.fetchval(
        f"UPDATE {table} SET token_version = token_version + 1 WHERE {where} "
        "RETURNING token_version",
        *args,
    )


def make_authenticate(public: frozenset[tuple[str, str]]) -> object:
    """Middleware: /api/* needs a valid bearer token, except the ``(method, path)`` pairs in
    ``public``. By method, not by path alone: a public path's other methods may route to a
    private handler (``GET /api/students/login`` once reached ``get_student`` with no
    account). Requests that route nowhere (404, 405) pass, to get that answer."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        method = hdrs.METH_GET if request.method == hdrs.METH_HEAD else request.method
        if not request.path.startswith("/api/") or (method, request.path) in public:
            return await handler(request)
        if request.match_info.http_exception is not None:
            return await handler(request)  # no such route or method (404/405): nothing to guard
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "not_authenticated",
                "log in and send 'Authorization: Bearer <access_token>'",
                headers={"WWW-Authenticate": 'Bearer realm="tutorsrv"'},
            )
        who, version = request.app[ACCOUNT_TOKENS].verify(token.strip())
        if await token_version(request.app[DB], who) != version:
            raise APIError(401, "token_revoked", REVOKED)
        request[PRINCIPAL] = who
        return await handler(request)

    return authenticate


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]  # type: ignore[return-value]


def require_admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.is_admin:
        raise APIError(403, "admin_only", "only the organisation's admin may do this")
    return who
