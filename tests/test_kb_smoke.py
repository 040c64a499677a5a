"""Knowledge bases end to end in the all role (smoke): upload, ingest, a turn with sources."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.test_utils import TestClient

from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import MakeClient, receive_json, receive_until, ws_path
from .web_helpers import create_student, create_tutor, register_admin, start_session


async def upload(client: TestClient, admin: dict, kb_id: str, name: str, data: bytes) -> dict:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name)
    resp = await client.post(f"/api/kbs/{kb_id}/documents", data=form, headers=admin["headers"])
    assert resp.status == 202, await resp.text()
    doc = await resp.json()
    for _ in range(200):
        got = await client.get(f"/api/kbs/{kb_id}/documents/{doc['id']}", headers=admin["headers"])
        doc = await got.json()
        if doc["status"] != "processing":
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError("ingestion never finished")


async def test_turn_uses_the_tutors_knowledge_base(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    resp = await client.post("/api/kbs", json={"name": "Biology"}, headers=admin["headers"])
    kb = await resp.json()
    doc = await upload(
        client,
        admin,
        kb["id"],
        "cells.md",
        b"# Mitochondria\n\nThe mitochondria is the powerhouse of the cell.\n\n"
        b"# Ribosomes\n\nRibosomes build proteins.",
    )
    assert doc["status"] == "ready" and doc["chunks"] == 2
    tutor = await create_tutor(client, admin, kb_id=kb["id"], greeting="")
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    await ws.send_json({"type": "text", "content": "What is the powerhouse of the cell?"})
    messages = await receive_until(ws, "response_done")
    sources = next(m for m in messages if m["type"] == "sources")
    assert sources["sources"][0]["document"] == "cells.md"
    assert "powerhouse" in sources["sources"][0]["excerpt"]
    # The scripted backend echoes the student turn it was given: the passage was in it.
    assert "powerhouse of the cell." in messages[-2]["content"]
    await ws.close()


async def test_search_ignores_negations_and_survives_a_dead_embeddings_server(
    make_client: MakeClient,
) -> None:
    from tutorsrv.appkeys import DB
    from tutorsrv.web import rag

    from .processes import free_port

    client = await make_client("all")
    admin = await register_admin(client)
    kb = await (await client.post("/api/kbs", json={"name": "B"}, headers=admin["headers"])).json()
    await upload(
        client,
        admin,
        kb["id"],
        "cells.md",
        b"# Mitochondria\n\nThe mitochondria is the powerhouse of the cell.\n\n"
        b"# Ribosomes\n\nRibosomes build proteins.",
    )
    db = client.server.app[DB]
    # A negated word must not turn into "everything without it".
    found = await rag.search(db, kb["id"], "powerhouse -ribosomes", 5)
    assert [p["heading"] for p in found] == ["Mitochondria"]
    assert await rag.search(db, kb["id"], "-ribosomes", 5) == []

    dead = rag.Embedder(f"http://127.0.0.1:{free_port()}", "none", timeout=2)
    try:
        found = await rag.search(db, kb["id"], "What builds proteins?", 3, dead)
    finally:
        await dead.close()
    assert found and found[0]["heading"] == "Ribosomes"


async def test_a_session_can_opt_out_of_the_tutors_knowledge_base(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await (await client.post("/api/kbs", json={"name": "K"}, headers=admin["headers"])).json()
    tutor = await create_tutor(client, admin, kb_id=kb["id"])
    student = await create_student(client, admin)
    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions",
        json={"student_id": student["id"], "kb_id": None},
        headers=admin["headers"],
    )
    assert resp.status == 201
    row = await (
        await client.get(
            f"/api/sessions/{(await resp.json())['session_id']}", headers=admin["headers"]
        )
    ).json()
    assert row["kb_id"] is None
    default = await start_session(client, admin, tutor, student)
    row = await (
        await client.get(f"/api/sessions/{default['session_id']}", headers=admin["headers"])
    ).json()
    assert row["kb_id"] == kb["id"]
