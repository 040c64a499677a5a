"""Known devices: a browser that has logged in to an account is not locked out of it by a
stranger's wrong passwords.

The per-account login budget (``server.login_rate_per_minute``) stops password guessing, but
anyone who knows an email can spend it, and the owner is then locked out too. So a successful
login (or registration) leaves a cookie, set for that account's login route only and
readable by no script, that names this browser as one the account has used. A login that
brings it is counted in a budget of its own (the same size, for this browser alone); only
logins without it share the account's. A stranger can still exhaust the account's budget,
which then locks out the owner's *new* browsers for a minute, never the ones they already
use (the "device cookie" defence, as OWASP describes it).

The cookie holds no email and no account id: its name is a keyed hash of role and email, its
value a random nonce, an expiry and a signature over all three. It is not a credential: it
never lets anyone in, it only changes whose budget a failed attempt is charged to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from aiohttp import web

COOKIE_PREFIX = "tutorsrv_device_"
LIFETIME_SECONDS = 180 * 24 * 3600
# Cookies kept per login route in one browser; past this the oldest are expired. A school
# computer shared by a class would otherwise send a cookie per student with every login,
# and a request header over 8 KiB is refused.
MAX_PER_BROWSER = 20


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class KnownDevices:
    def __init__(self, secret: str) -> None:
        # A key of its own, derived from the token secret: never the same MAC as a JWT.
        self._key = hmac.new(secret.encode(), b"tutorsrv known devices", hashlib.sha256).digest()

    def _mac(self, *parts: str) -> str:
        message = "\n".join(parts).encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest()[:18])

    def cookie_name(self, role: str, email: str) -> str:
        return COOKIE_PREFIX + self._mac("name", role, email.lower())[:20]

    def budget_key(self, request: web.Request, role: str, email: str) -> str | None:
        """The login budget of this browser for this account, or None if it brings no valid
        cookie for it (an unknown device: the account's shared budget applies)."""
        name = self.cookie_name(role, email)
        nonce, _, rest = request.cookies.get(name, "").partition(".")
        expires, _, signature = rest.partition(".")
        if not (nonce and expires.isdigit() and len(expires) <= 12 and signature):
            return None
        if int(expires) < time.time():
            return None
        if not hmac.compare_digest(signature, self._mac("value", name, nonce, expires)):
            return None
        return "device:" + nonce

    def remember(
        self,
        request: web.Request,
        response: web.StreamResponse,
        login_path: str,
        role: str,
        email: str,
    ) -> None:
        """Mark this browser as known to the account (a fresh cookie at every login), and
        expire the oldest of its other device cookies beyond MAX_PER_BROWSER."""
        name = self.cookie_name(role, email)
        nonce = _b64(secrets.token_bytes(12))
        expires = str(int(time.time()) + LIFETIME_SECONDS)
        value = f"{nonce}.{expires}.{self._mac('value', name, nonce, expires)}"
        response.set_cookie(
            name,
            value,
            max_age=LIFETIME_SECONDS,
            path=login_path,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        others = [
            (_expiry(value), key)
            for key, value in request.cookies.items()
            if key.startswith(COOKIE_PREFIX) and key != name
        ]
        others.sort()
        for _, key in others[: max(0, len(others) - (MAX_PER_BROWSER - 1))]:
            response.del_cookie(key, path=login_path)


def _expiry(value: str) -> int:
    expires = value.partition(".")[2].partition(".")[0]
    return int(expires) if expires.isdigit() and len(expires) <= 12 else 0


KNOWN_DEVICES = web.AppKey("known_devices", KnownDevices)
