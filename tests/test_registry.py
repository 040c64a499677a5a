"""The registry on its own, with a hand-driven clock."""

from __future__ import annotations

import time

import jwt
import pytest

from tutorsrv.registry import CapacityError, SessionRegistry, TokenError, TokenSigner


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSocket:
    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def make_registry(clock: Clock, **kw) -> SessionRegistry:
    return SessionRegistry(
        max_sessions=kw.get("max_sessions", 3),
        idle_timeout=60,
        max_duration=600,
        signer=TokenSigner("s" * 32),
        tombstone_seconds=30,
        clock=clock,
        wall_clock=lambda: clock.now,
    )


async def test_idle_sessions_expire_and_active_ones_stay() -> None:
    clock = Clock()
    registry = make_registry(clock)
    idle, _ = registry.create(tutor_id="t", student_id="a")
    busy, _ = registry.create(tutor_id="t", student_id="b")
    sock = FakeSocket()
    registry.attach(idle, sock)
    clock.now += 50
    registry.touch(busy)
    clock.now += 20
    assert registry.reap() == [idle.id]
    await registry.wait_closed()
    assert sock.closed_with == (4408, "session expired")
    assert registry.get(busy.id) is busy
    assert registry.end_reason(idle.id) == "expired"
    # Tombstones are forgotten after their time.
    clock.now += 31
    registry.reap()
    assert registry.end_reason(idle.id) is None


async def test_capacity_and_retry_after() -> None:
    clock = Clock()
    registry = make_registry(clock, max_sessions=1)
    registry.create(tutor_id="t", student_id="a")
    clock.now += 45
    with pytest.raises(CapacityError) as info:
        registry.create(tutor_id="t", student_id="b")
    assert info.value.retry_after == 15  # when the idle one would be reaped


async def test_takeover_closes_the_old_socket_with_4409() -> None:
    registry = make_registry(Clock())
    session, _ = registry.create(tutor_id="t", student_id="a")
    old, new = FakeSocket(), FakeSocket()
    assert registry.attach(session, old) is False
    assert registry.attach(session, new) is True
    await registry.wait_closed()
    assert old.closed_with[0] == 4409 and new.closed_with is None
    registry.detach(session, old)  # a late detach of the old socket changes nothing
    assert session.socket is new


def test_tokens_are_pinned_to_hs256_and_need_exp() -> None:
    signer = TokenSigner("k" * 32)
    token = signer.issue("abc", time.time() + 60)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    signer.verify(token, "abc")
    no_exp = jwt.encode({"sid": "abc", "aud": "tutorsrv-engine"}, "k" * 32, algorithm="HS256")
    with pytest.raises(TokenError) as info:
        signer.verify(no_exp, "abc")
    assert info.value.code == 4401
    other_alg = jwt.encode(
        {"sid": "abc", "aud": "tutorsrv-engine", "exp": time.time() + 60},
        "k" * 64,
        algorithm="HS512",
    )
    with pytest.raises(TokenError):
        TokenSigner("k" * 64).verify(other_alg, "abc")
    no_aud = jwt.encode({"sid": "abc", "exp": time.time() + 60}, "k" * 32, algorithm="HS256")
    with pytest.raises(TokenError):
        signer.verify(no_aud, "abc")


def test_generated_secrets_differ_per_signer() -> None:
    token = TokenSigner().issue("abc", time.time() + 60)
    with pytest.raises(TokenError):
        TokenSigner().verify(token, "abc")
