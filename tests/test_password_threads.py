"""New password hashes (registrations, enrolments, password changes) run on one thread of
their own, so a flood of them never queues in front of another school's login."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from tutorsrv.web import security

from .conftest import MakeClient, eventually
from .web_helpers import PASSWORD, register_admin


class HeldHasher:
    """The real hasher, except that new hashes wait until ``release`` (a flood in progress)."""

    def __init__(self) -> None:
        self.real = security._hasher
        self.release = threading.Event()
        self.hashing: set[str] = set()
        self.verifying: set[str] = set()

    def hash(self, password: str) -> str:
        self.hashing.add(threading.current_thread().name)
        self.release.wait(30)
        return self.real.hash(password)

    def verify(self, stored: str, password: str) -> bool:
        self.verifying.add(threading.current_thread().name)
        return self.real.verify(stored, password)


async def test_logins_do_not_wait_behind_new_hashes(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    held = HeldHasher()
    monkeypatch.setattr(security, "_hasher", held)

    def register(n: int) -> Any:
        email = f"flood{n}-{uuid.uuid4().hex[:6]}@school.example"
        return client.post("/api/auth/register", json={"email": email, "password": PASSWORD})

    flood = [asyncio.create_task(register(n)) for n in range(6)]
    try:
        # The first registration is hashing (and holding its thread).
        await eventually(lambda: held.hashing, "a registration's hash to start")
        # Every login thread is free: the admin logs in while six registrations wait.
        for _ in range(3):
            resp = await asyncio.wait_for(
                client.post(
                    "/api/auth/login", json={"email": admin["email"], "password": PASSWORD}
                ),
                timeout=20,
            )
            assert resp.status == 200
        assert not any(t.done() for t in flood)
        assert held.hashing == {"argon2-new_0"}
        assert held.verifying and "argon2-new_0" not in held.verifying
    finally:
        held.release.set()
    assert sorted(r.status for r in await asyncio.gather(*flood)) == [201] * 6
