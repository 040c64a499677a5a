"""One student cannot take every slot of an engine: a share per student (of an organisation),
a deadline to connect to a new session, and a page reload that never fails because of it."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.registry import SessionQuota, SessionRegistry, TokenSigner

from .conftest import MakeClient, receive_json, ws_path
from .test_registry import Clock, FakeSocket
from .web_helpers import create_student, create_tutor, register_admin, start_session


def registry(clock: Clock, **kw: float) -> SessionRegistry:
    return SessionRegistry(
        max_sessions=10,
        idle_timeout=600,
        max_duration=3600,
        signer=TokenSigner("s" * 32),
        clock=clock,
        wall_clock=lambda: clock.now,
        max_sessions_per_student=int(kw.get("per_student", 2)),
        max_sessions_per_tenant=int(kw.get("per_tenant", 0)),
        connect_deadline=kw.get("deadline", 0.0),
    )


async def test_a_new_session_replaces_the_students_oldest_unconnected_one() -> None:
    clock = Clock()
    reg = registry(clock)
    first, _ = reg.create(tutor_id="t", student_id="s", tenant_id="org")
    clock.now += 1
    second, _ = reg.create(tutor_id="t", student_id="s", tenant_id="org")
    clock.now += 1
    third, _ = reg.create(tutor_id="t", student_id="s", tenant_id="org")
    assert reg.get(first.id) is None and reg.end_reason(first.id) == "ended"
    assert reg.get(second.id) is second and reg.get(third.id) is third
    # The same student id in another organisation, and sessions without one, are apart.
    reg.create(tutor_id="t", student_id="s", tenant_id="other-org")
    for _ in range(3):
        reg.create(tutor_id="t", student_id="s")
    assert reg.get(second.id) is second and len(reg) == 6


async def test_when_every_session_is_connected_a_new_one_is_refused() -> None:
    clock = Clock()
    reg = registry(clock)
    for _ in range(2):
        session, _ = reg.create(tutor_id="t", student_id="s", tenant_id="org")
        reg.attach(session, FakeSocket())
    with pytest.raises(SessionQuota):
        reg.create(tutor_id="t", student_id="s", tenant_id="org")
    assert reg.rejected["student_quota"] == 1 and len(reg) == 2


async def test_an_organisation_share_refuses_without_ending_other_students_sessions() -> None:
    clock = Clock()
    reg = registry(clock, per_tenant=3, per_student=1)
    kept = [reg.create(tutor_id="t", student_id=f"s{n}", tenant_id="org")[0] for n in range(3)]
    with pytest.raises(SessionQuota, match="this organisation already has 3 sessions"):
        reg.create(tutor_id="t", student_id="s9", tenant_id="org")
    assert all(reg.get(s.id) is s for s in kept) and reg.rejected["tenant_quota"] == 1
    # Other organisations are not held back by it.
    reg.create(tutor_id="t", student_id="s9", tenant_id="other-org")
    # A student's new session replacing their own unconnected one fits in the share.
    again, _ = reg.create(tutor_id="t", student_id="s0", tenant_id="org")
    assert reg.get(kept[0].id) is None and reg.get(again.id) is again
    assert len([s for s in reg.list() if s.tenant_id == "org"]) == 3


async def test_a_session_nobody_connects_to_is_ended_at_the_deadline() -> None:
    clock = Clock()
    reg = registry(clock, deadline=120.0)
    unused, _ = reg.create(tutor_id="t", student_id="a")
    used, _ = reg.create(tutor_id="t", student_id="b")
    reg.attach(used, FakeSocket())
    clock.now += 119
    assert reg.reap() == []
    clock.now += 1
    assert reg.reap() == [unused.id]
    assert reg.end_reason(unused.id) == "expired" and reg.get(used.id) is used


async def test_the_api_answers_429_when_the_students_sessions_are_all_in_use(
    make_client: MakeClient,
) -> None:
    client: TestClient = await make_client("all", engine={"max_sessions_per_student": 1})
    admin = await register_admin(client)
    tutor = await create_tutor(client, admin)
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    assert (await receive_json(ws))["type"] == "session"
    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions",
        json={"student_id": student["id"]},
        headers=admin["headers"],
    )
    assert resp.status == 429
    body = await resp.json()
    assert body["error"] == "too_many_sessions" and resp.headers["Retry-After"]
    # A reload: the page's socket goes, and the new session takes the old one's place.
    await ws.close()
    again = await start_session(client, admin, tutor, student)
    assert again["session_id"] != session["session_id"]
