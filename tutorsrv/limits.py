"""Abuse limits: request rates per client IP and per account, WebSocket message rates, and
allowed browser origins (``[server]`` settings).

Rates use token buckets kept in memory, one per key (``"ip:203.0.113.9"``,
``"account:ada@school.example"``): a bucket holds up to ``burst`` tokens, refills at ``rate``
tokens per second, and every attempt takes one. A refused attempt takes nothing and learns how
many seconds until it would succeed (the ``Retry-After``). A bucket that has refilled is the
same as no bucket, so idle keys are dropped and memory stays bounded by the keys active within
one refill period (capped at ``max_keys``, oldest first).

Limits are per process: with several web replicas a client gets the limit at each of them.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from .config import Config
from .http_errors import APIError, Handler

Clock = Callable[[], float]


# The limiters' clock; looked up at each reading, so tests can replace it.
monotonic: Clock = time.monotonic


def _now() -> float:
    return monotonic()


class TokenBucket:
    """One bucket: ``burst`` tokens at most, ``rate`` new tokens per second."""

    __slots__ = ("_clock", "burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, clock: Clock | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock or _now
        self.tokens = burst
        self.stamp = self._clock()

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, now: float | None = None, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens are there (0.0: now). Takes nothing."""
        self._refill(self._clock() if now is None else now)
        return 0.0 if self.tokens >= amount else (amount - self.tokens) / self.rate

    def take(self, now: float | None = None, amount: float = 1.0) -> float:
        """Take ``amount`` tokens: 0.0 when taken, else the seconds to wait (nothing taken)."""
        waited = self.wait(now, amount)
        if waited == 0.0:
            self.tokens -= amount
        return waited

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class RateLimiter:
    """Token buckets by key: ``per_minute`` attempts per minute each (that many at once).
    ``period`` changes the minute: RateLimiter(20, period=3600) is 20 an hour."""

    def __init__(
        self,
        per_minute: int,
        *,
        period: float = 60.0,
        max_keys: int = 100_000,
        clock: Clock | None = None,
    ) -> None:
        self.per_minute = per_minute
        self.period = period
        self.max_keys = max_keys
        self._clock = clock or _now
        # Least recently used first.
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._next_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, *keys: str) -> float:
        """One attempt counted against every key, all or nothing: 0.0 when every key has
        room (a token is taken from each), else the longest wait in seconds (none taken)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        self._sweep(now)
        buckets = [self._bucket(key) for key in keys]
        waited = max((bucket.wait(now) for bucket in buckets), default=0.0)
        if waited == 0.0:
            for bucket in buckets:
                bucket.take(now)
        return waited

    def give_back(self, key: str) -> None:
        """Return the token an attempt took (it turned out not to count, e.g. a login that
        succeeded)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.per_minute / self.period, self.per_minute, self._clock)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def _sweep(self, now: float) -> None:
        """Drop refilled buckets, once per refill period: an empty bucket is full again one
        period later. Between sweeps, ``max_keys`` caps the count (oldest go)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.period
        for key in [k for k, bucket in self._buckets.items() if bucket.full(now)]:
            del self._buckets[key]


class Verdict(Enum):
    ACCEPT = "accept"
    # Over the rate: drop the message, tell the client, keep the socket.
    DROP = "drop"
    # Far over the rate for a while: close the socket (1008).
    CLOSE = "close"


class MessageRate:
    """One socket's client messages: ``per_second`` on average with bursts of twice that.

    Refused messages are dropped (the client is told). A client that keeps sending far beyond
    the limit is closed: drops are themselves budgeted at ``2 * per_second`` a second with a
    reserve of ``6 * per_second``, and a flood that has emptied the reserve and gone on for
    ``FLOOD_SECONDS`` is closed. Sending at 3x the limit is only ever refused; 5x sustained
    is closed after about three seconds; a short burst, however fast, only loses messages."""

    FLOOD_SECONDS = 2.0

    def __init__(self, per_second: int, clock: Clock | None = None) -> None:
        self.enabled = per_second > 0
        rate = max(per_second, 1)
        self._clock = clock or _now
        self._messages = TokenBucket(rate, 2 * rate, self._clock)
        self._drops = TokenBucket(2 * rate, 6 * rate, self._clock)
        # When the current run of drops began (None: the drop reserve is full).
        self._flood_since: float | None = None

    def check(self) -> Verdict:
        if not self.enabled:
            return Verdict.ACCEPT
        now = self._clock()
        if self._messages.take(now) == 0.0:
            return Verdict.ACCEPT
        if self._flood_since is None or self._drops.full(now):
            self._flood_since = now
        if self._drops.take(now) == 0.0 or now - self._flood_since < self.FLOOD_SECONDS:
            return Verdict.DROP
        return Verdict.CLOSE


@dataclass
class Limits:
    """The process's request limiters."""

    login: RateLimiter
    login_ip: RateLimiter
    sessions: RateLimiter
    sessions_ip: RateLimiter
    registrations_ip: RateLimiter

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        # Separate budgets per address: a whole class behind one school NAT address logs in
        # and starts sessions in the same minute.
        server = config.server
        return cls(
            login=RateLimiter(server.login_rate_per_minute),
            login_ip=RateLimiter(server.login_rate_per_ip_per_minute),
            sessions=RateLimiter(server.session_rate_per_minute),
            sessions_ip=RateLimiter(server.session_rate_per_ip_per_minute),
            # Registration creates an organisation and costs a password hash: per hour.
            registrations_ip=RateLimiter(server.registration_rate_per_ip_per_hour, period=3600),
        )


LIMITS = web.AppKey("limits", Limits)


def client_ip(request: web.Request) -> str:
    """The client's address: the peer's, or the one a trusted proxy forwarded (the
    ``forwarded`` middleware has already put it in ``request.remote``)."""
    return request.remote or "unknown"


def _refuse(waited: float, what: str) -> APIError:
    seconds = max(1, math.ceil(waited))
    return APIError(
        429,
        "rate_limited",
        f"too many {what}; try again in {seconds} seconds",
        headers={"Retry-After": str(seconds)},
    )


def limit_login(request: web.Request, budget: str | None) -> None:
    """Count a password check (a login, or a change that needs the current password) by
    client IP and against ``budget``: the account's, or a known browser's own (see
    ``web/devices.py``); 429 beyond. Called before the password is checked, so parallel
    guesses are counted too; ``login_succeeded`` then gives a right password's token back:
    only failures stay counted against the account."""
    limits = request.config_dict[LIMITS]
    waited = limits.login_ip.hit("ip:" + client_ip(request))
    if not waited and budget:
        waited = limits.login.hit(budget)
    if waited:
        raise _refuse(waited, "login attempts")


def login_succeeded(request: web.Request, budget: str | None) -> None:
    if budget:
        request.config_dict[LIMITS].login.give_back(budget)


def limit_registration(request: web.Request) -> None:
    """Count a registration by client IP; 429 beyond. Called before the password is hashed."""
    limits = request.config_dict[LIMITS]
    waited = limits.registrations_ip.hit("ip:" + client_ip(request))
    if waited:
        raise _refuse(waited, "registrations from this address")


def limit_session_start(request: web.Request, account: str) -> None:
    """Count a session start by client IP and by account; 429 beyond."""
    limits = request.config_dict[LIMITS]
    waited = limits.sessions_ip.hit("ip:" + client_ip(request))
    if not waited:
        waited = limits.sessions.hit("account:" + account)
    if waited:
        raise _refuse(waited, "session starts")


def normalise_origin(value: str) -> str:
    """An origin as compared here and in CORS: no spaces, no trailing slash, lower case."""
    return value.strip().rstrip("/").lower()


def origin_allowed(request: web.Request, allowed: frozenset[str]) -> bool:
    """No Origin (not a browser), an allowed one, or the server's own origin."""
    origin = request.headers.get("Origin")
    if origin is None or not allowed:
        return True
    origin = normalise_origin(origin)
    if origin in allowed or "*" in allowed:
        return True
    # The pages this server serves itself call it from its own origin (as the browser sees
    # it: behind a trusted proxy, the forwarded scheme and host).
    parts = urlsplit(origin)
    return parts.netloc == request.host.lower() and parts.scheme == request.scheme.lower()


# Paths where a browser's Origin is checked: the JSON API and the session WebSocket (checked
# here, before the handler upgrades the connection).
_CHECKED_PREFIXES = ("/api/", "/ws/")


def make_origin_check(config: Config) -> Middleware:
    # Pages allowed to call the API cross-origin (CORS) may of course also reach it.
    allowed = frozenset(normalise_origin(o) for o in config.server.allowed_origins)
    if allowed:
        allowed |= {normalise_origin(o) for o in config.server.cors_origins}

    @web.middleware
    async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (
            allowed
            and (path == "/api" or path.startswith(_CHECKED_PREFIXES))
            and not origin_allowed(request, allowed)
        ):
            raise APIError(
                403, "origin_not_allowed", "requests from this origin are not allowed here"
            )
        return await handler(request)

    return check_origin


def setup(app: web.Application, config: Config) -> None:
    app[LIMITS] = Limits.from_config(config)
