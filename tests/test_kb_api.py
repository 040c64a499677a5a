"""Knowledge bases through the admin API, in the ``all`` role against a real PostgreSQL:
CRUD, uploads of every format found again by search, replacement, limits and bad files,
ingestion state, tenancy, and WebSocket turns that carry passages and their sources."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import DB, INGESTOR
from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.web import rag

from .conftest import MakeClient, receive_json, receive_until, ws_path
from .pdfs import make_pdf
from .web_helpers import (
    create_student,
    create_tutor,
    register_admin,
    start_session,
    student_login,
)

# --- helpers -----------------------------------------------------------------------------------


async def error_of(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == status, text
    body = await resp.json()
    assert body["error"] == code, body
    assert body["message"], body
    return body


async def new_kb(client: TestClient, admin: dict, **fields: Any) -> dict[str, Any]:
    resp = await client.post(
        "/api/kbs", json={"name": "Biology", **fields}, headers=admin["headers"]
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def post_file(
    client: TestClient, admin: dict, kb_id: str, name: str, data: bytes, field: str = "file"
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field(field, data, filename=name)
    return await client.post(f"/api/kbs/{kb_id}/documents", data=form, headers=admin["headers"])


async def settled(client: TestClient, admin: dict, kb_id: str, doc_id: str) -> dict[str, Any]:
    """The document once its ingestion is over (ready or failed)."""
    for _ in range(400):
        resp = await client.get(f"/api/kbs/{kb_id}/documents/{doc_id}", headers=admin["headers"])
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
        if doc["status"] != "processing":
            return doc
        await asyncio.sleep(0.025)
    raise AssertionError("ingestion never finished")


async def upload(client: TestClient, admin: dict, kb_id: str, name: str, data: bytes) -> dict:
    resp = await post_file(client, admin, kb_id, name, data)
    assert resp.status == 202, await resp.text()
    accepted = await resp.json()
    doc = await settled(client, admin, kb_id, accepted["id"])
    assert doc["status"] == "ready", doc
    return doc


async def search(client: TestClient, kb_id: str, query: str, k: int = 3) -> list[dict]:
    return await rag.search(client.server.app[DB], kb_id, query, k)


async def count(client: TestClient, table: str, column: str, value: Any) -> int:
    assert table in ("documents", "chunks") and column in ("kb_id", "document_id", "id")
    return await client.server.app[DB].fetchval(
        f"SELECT count(*) FROM {table} WHERE {column} = $1", uuid.UUID(str(value))
    )


async def open_turn(client: TestClient, session: dict, question: str) -> list[dict[str, Any]]:
    """Connect, ask one question, and return every frame up to the end of the reply."""
    ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
    try:
        await receive_json(ws)  # the session's opening frame
        await ws.send_json({"type": "text", "content": question})
        return await receive_until(ws, "response_done")
    finally:
        await ws.close()


async def stored_messages(client: TestClient, admin: dict, session_id: str, n: int) -> list:
    """The session's transcript, once it holds ``n`` messages (turns are stored async)."""
    for _ in range(300):
        resp = await client.get(f"/api/sessions/{session_id}/messages", headers=admin["headers"])
        assert resp.status == 200, await resp.text()
        messages = (await resp.json())["messages"]
        if len(messages) >= n:
            return messages
        await asyncio.sleep(0.05)
    raise AssertionError(f"the transcript never reached {n} messages")


TXT = (
    b"Zebrafish regenerate their heart muscle after injury.\n\n"
    b"Researchers study them to learn about cardiac repair."
)
MD = (
    b"# Extremophiles\n\n"
    b"Tardigrades survive the vacuum of outer space.\n\n"
    b"## Deep sea\n\n"
    b"Hydrothermal vents host chemosynthetic bacteria."
)
HTML = (
    b"<html><head><title>Amphibians</title><script>var mascot = 'quokka';</script></head>"
    b"<body><nav>Homepage navigation</nav><h1>Salamanders</h1>"
    b"<p>Axolotls keep their larval gills &amp; features all their lives.</p></body></html>"
)
PDF = make_pdf(
    [
        ["Monotremes are unusual mammals."],
        ["The platypus lays eggs and hunts by electroreception."],
    ]
)


# --- CRUD --------------------------------------------------------------------------------------


async def test_kb_crud_and_validation(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    headers = admin["headers"]

    kb = await new_kb(client, admin, description="Cells and more", language="simple")
    assert kb["name"] == "Biology"
    assert kb["description"] == "Cells and more"
    assert kb["language"] == "simple"
    uuid.UUID(kb["id"])
    plain = await new_kb(client, admin, name="History")
    assert (plain["language"], plain["description"]) == ("english", "")

    resp = await client.post("/api/kbs", json={"name": "X", "language": "klingon"}, headers=headers)
    assert (await error_of(resp, 422, "invalid_field"))["field"] == "language"
    resp = await client.post("/api/kbs", json={"name": "X", "colour": "red"}, headers=headers)
    assert (await error_of(resp, 422, "unknown_field"))["field"] == "colour"
    resp = await client.post("/api/kbs", json={"description": "no name"}, headers=headers)
    assert (await error_of(resp, 422, "missing_field"))["field"] == "name"
    resp = await client.post("/api/kbs", json={"name": "  "}, headers=headers)
    assert (await error_of(resp, 422, "invalid_field"))["field"] == "name"

    resp = await client.get("/api/kbs", headers=headers)
    listed = (await resp.json())["kbs"]
    assert [(k["id"], k["documents"]) for k in listed] == [(kb["id"], 0), (plain["id"], 0)]

    resp = await client.patch(
        f"/api/kbs/{kb['id']}", json={"name": "Cell biology"}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    patched = await resp.json()
    assert (patched["name"], patched["description"]) == ("Cell biology", "Cells and more")
    resp = await client.patch(
        f"/api/kbs/{kb['id']}", json={"description": "Only cells"}, headers=headers
    )
    assert (await resp.json())["description"] == "Only cells"
    # The language is fixed once chunks are indexed with it.
    resp = await client.patch(f"/api/kbs/{kb['id']}", json={"language": "english"}, headers=headers)
    assert (await error_of(resp, 422, "unknown_field"))["field"] == "language"
    resp = await client.patch(f"/api/kbs/{kb['id']}", json={}, headers=headers)
    await error_of(resp, 422, "missing_field")
    resp = await client.get(f"/api/kbs/{kb['id']}", headers=headers)
    got = await resp.json()
    assert (got["name"], got["description"], got["language"]) == (
        "Cell biology",
        "Only cells",
        "simple",
    )

    resp = await client.get("/api/kbs/not-a-uuid", headers=headers)
    await error_of(resp, 404, "kb_not_found")
    resp = await client.delete(f"/api/kbs/{kb['id']}", headers=headers)
    assert resp.status == 204
    resp = await client.get(f"/api/kbs/{kb['id']}", headers=headers)
    await error_of(resp, 404, "kb_not_found")
    resp = await client.delete(f"/api/kbs/{kb['id']}", headers=headers)
    await error_of(resp, 404, "kb_not_found")
    resp = await client.get("/api/kbs", headers=headers)
    assert [k["id"] for k in (await resp.json())["kbs"]] == [plain["id"]]


async def test_deleting_a_kb_removes_its_documents_and_chunks(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    other = await new_kb(client, admin, name="Kept")
    await upload(client, admin, kb["id"], "fish.txt", TXT)
    await upload(client, admin, kb["id"], "life.md", MD)
    await upload(client, admin, other["id"], "fish.txt", TXT)
    tutor = await create_tutor(client, admin, kb_id=kb["id"])
    assert await count(client, "documents", "kb_id", kb["id"]) == 2
    assert await count(client, "chunks", "kb_id", kb["id"]) >= 3
    resp = await client.get("/api/kbs", headers=admin["headers"])
    assert [k["documents"] for k in (await resp.json())["kbs"]] == [2, 1]

    resp = await client.delete(f"/api/kbs/{kb['id']}", headers=admin["headers"])
    assert resp.status == 204
    assert await count(client, "documents", "kb_id", kb["id"]) == 0
    assert await count(client, "chunks", "kb_id", kb["id"]) == 0
    assert await search(client, kb["id"], "zebrafish heart") == []
    # The tutor loses its default; the other KB keeps everything.
    resp = await client.get(f"/api/tutors/{tutor['id']}", headers=admin["headers"])
    assert (await resp.json())["kb_id"] is None
    assert await count(client, "documents", "kb_id", other["id"]) == 1
    assert (await search(client, other["id"], "zebrafish heart"))[0]["document"] == "fish.txt"


# --- uploads and search ------------------------------------------------------------------------


async def test_each_format_is_found_by_search(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    docs = {
        name: await upload(client, admin, kb["id"], name, data)
        for name, data in [
            ("fish.txt", TXT),
            ("extreme.md", MD),
            ("amphibians.html", HTML),
            ("mammals.pdf", PDF),
        ]
    }
    assert {d["content_type"] for d in docs.values()} == {
        "text/plain",
        "text/markdown",
        "text/html",
        "application/pdf",
    }
    assert all(d["chunks"] >= 1 for d in docs.values()), docs
    expectations = [
        ("zebrafish heart regeneration", "fish.txt", "", "Zebrafish regenerate"),
        ("tardigrades in space", "extreme.md", "Extremophiles", "Tardigrades survive"),
        ("hydrothermal vents", "extreme.md", "Deep sea", "chemosynthetic bacteria"),
        ("axolotl gills", "amphibians.html", "Salamanders", "larval gills & features"),
        ("does the platypus lay eggs?", "mammals.pdf", "page 2", "platypus lays eggs"),
    ]
    for query, document, heading, text in expectations:
        hits = await search(client, kb["id"], query)
        assert hits, query
        top = hits[0]
        assert (top["document"], top["heading"]) == (document, heading), (query, hits)
        assert text in top["content"] and text in top["excerpt"], (query, top)
        assert top["score"] > 0
    # What the HTML hid (script, title, navigation) is not searchable.
    for hidden in ("quokka", "homepage navigation"):
        assert await search(client, kb["id"], hidden) == [], hidden
    # A query that matches nothing finds nothing.
    assert await search(client, kb["id"], "volcano eruption") == []


async def test_reuploading_a_file_replaces_it(make_client: MakeClient) -> None:
    client = await make_client("all", kb={"chunk_chars": 200, "chunk_overlap_chars": 40})
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    resp = await post_file(client, admin, kb["id"], "notes.txt", b"Volcanoes erupt molten magma.")
    assert resp.status == 202, await resp.text()
    first = await resp.json()
    assert first["replaced"] is False
    first = await settled(client, admin, kb["id"], first["id"])
    assert (first["status"], first["chunks"]) == ("ready", 1)
    assert (await search(client, kb["id"], "volcano magma"))[0]["document"] == "notes.txt"

    paragraphs = [
        f"Glaciers carve valley number {i} slowly over many thousands of years of ice."
        for i in range(12)
    ]
    new = "\n\n".join(paragraphs).encode()
    resp = await post_file(client, admin, kb["id"], "notes.txt", new)
    assert resp.status == 202, await resp.text()
    second = await resp.json()
    assert second["replaced"] is True
    assert second["id"] == first["id"]
    assert second["status"] == "processing"
    assert second["size_bytes"] == len(new)
    assert second["sha256"] != first["sha256"]
    second = await settled(client, admin, kb["id"], second["id"])
    assert second["status"] == "ready"
    assert second["chunks"] > 1
    assert second["chunks"] == await count(client, "chunks", "document_id", first["id"])

    assert await search(client, kb["id"], "volcano magma") == []
    hits = await search(client, kb["id"], "glaciers carve valleys")
    assert hits and all(h["document"] == "notes.txt" for h in hits)
    resp = await client.get(f"/api/kbs/{kb['id']}/documents", headers=admin["headers"])
    assert [d["id"] for d in (await resp.json())["documents"]] == [first["id"]]
    assert await count(client, "documents", "kb_id", kb["id"]) == 1


async def test_a_reupload_during_ingestion_ends_with_the_newest_version(
    make_client: MakeClient,
) -> None:
    client = await make_client("all", kb={"chunk_chars": 200, "chunk_overlap_chars": 0})
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    # A large first version (thousands of chunks) is still being ingested when a small second
    # version of the same file arrives; the second must win, whichever ingestion ends last.
    old = "\n\n".join(f"Obsolete draft paragraph {i} about dinosaurs." for i in range(6000))
    resp = await post_file(client, admin, kb["id"], "syllabus.txt", old.encode())
    assert resp.status == 202, await resp.text()
    resp = await post_file(
        client, admin, kb["id"], "syllabus.txt", b"Final syllabus: photosynthesis only."
    )
    assert resp.status == 202, await resp.text()
    doc = await resp.json()
    assert doc["replaced"] is True
    await client.server.app[INGESTOR].wait_idle()
    doc = await settled(client, admin, kb["id"], doc["id"])
    assert (doc["status"], doc["chunks"]) == ("ready", 1), doc
    assert await count(client, "chunks", "document_id", doc["id"]) == 1
    assert await search(client, kb["id"], "dinosaurs") == []
    assert (await search(client, kb["id"], "photosynthesis"))[0]["document"] == "syllabus.txt"


# --- limits and bad files ----------------------------------------------------------------------


async def test_upload_size_limit(make_client: MakeClient) -> None:
    client = await make_client("all", kb={"max_upload_bytes": 2048})
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    at_limit = (b"Exactly at the limit. " * 100)[:2047] + b"."
    assert len(at_limit) == 2048
    doc = await upload(client, admin, kb["id"], "fits.txt", at_limit)
    assert doc["size_bytes"] == 2048

    for size in (2049, 200_000):
        data = (b"Too large for this server. " * (size // 27 + 1))[:size]
        resp = await post_file(client, admin, kb["id"], f"big-{size}.txt", data)
        body = await error_of(resp, 413, "file_too_large")
        assert body["field"] == "file"
    db = client.server.app[DB]
    names = await db.fetch("SELECT filename FROM documents WHERE kb_id = $1", uuid.UUID(kb["id"]))
    assert [r["filename"] for r in names] == ["fits.txt"]


async def test_bad_uploads_are_refused_with_a_clear_4xx(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    cases = [
        ("empty.txt", b"", 422, "empty_file"),
        ("blank.md", b"  \n\n\t \r\n", 422, "empty_file"),
        ("essay.docx", b"PK\x03\x04 a word document", 415, "unsupported_file_type"),
        ("setup.exe", b"MZ\x90\x00\x03\x00\x00\x00", 415, "unsupported_file_type"),
        ("noextension", b"plain words", 415, "unsupported_file_type"),
        ("broken.pdf", b"%PDF-1.4\nthis is not really a pdf", 422, "unreadable_file"),
        ("truncated.pdf", PDF[: len(PDF) // 2], 422, "unreadable_file"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", 422, "unreadable_file"),
        ("image.html", bytes(range(256)), 422, "unreadable_file"),
    ]
    for name, data, status, code in cases:
        resp = await post_file(client, admin, kb["id"], name, data)
        body = await error_of(resp, status, code)
        assert body["field"] == "file", (name, body)

    resp = await client.post(
        f"/api/kbs/{kb['id']}/documents", json={"file": "notes"}, headers=admin["headers"]
    )
    await error_of(resp, 415, "unsupported_media_type")
    resp = await client.post(
        f"/api/kbs/{kb['id']}/documents",
        data=b"raw bytes",
        headers={**admin["headers"], "Content-Type": "application/octet-stream"},
    )
    await error_of(resp, 415, "unsupported_media_type")
    resp = await post_file(client, admin, kb["id"], "notes.txt", b"words", field="upload")
    assert (await error_of(resp, 422, "missing_field"))["field"] == "file"

    assert await count(client, "documents", "kb_id", kb["id"]) == 0
    resp = await client.get(f"/api/kbs/{kb['id']}/documents", headers=admin["headers"])
    assert (await resp.json())["documents"] == []


async def test_a_file_accepted_but_without_text_ends_failed(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    page = b"<html><head><script>var x = 1;</script></head><body><nav>Menu</nav></body></html>"
    # A PDF whose page tree is damaged: it opens, but nothing can be read from it.
    damaged = PDF[:100] + bytes(200) + PDF[300:]
    for name, data in [("scripts.html", page), ("damaged.pdf", damaged)]:
        resp = await post_file(client, admin, kb["id"], name, data)
        if resp.status == 422:  # refusing it at once is as good
            await error_of(resp, 422, "unreadable_file")
            continue
        assert resp.status == 202, await resp.text()
        doc = await settled(client, admin, kb["id"], (await resp.json())["id"])
        assert doc["status"] == "failed", doc
        assert doc["error"], doc
        assert doc["chunks"] == 0
        assert await count(client, "chunks", "document_id", doc["id"]) == 0


# --- documents and ingestion state -------------------------------------------------------------


async def test_ingestion_state_and_document_routes(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    headers = admin["headers"]
    kb = await new_kb(client, admin)
    other = await new_kb(client, admin, name="Other")

    resp = await post_file(client, admin, kb["id"], "fish.txt", TXT)
    assert resp.status == 202, await resp.text()
    accepted = await resp.json()
    assert accepted["status"] == "processing"
    assert (accepted["progress"], accepted["chunks"], accepted["error"]) == (0, 0, None)
    assert (accepted["filename"], accepted["kb_id"]) == ("fish.txt", kb["id"])
    assert accepted["size_bytes"] == len(TXT)
    doc = await settled(client, admin, kb["id"], accepted["id"])
    assert (doc["status"], doc["progress"], doc["error"]) == ("ready", 1, None)
    assert doc["chunks"] > 0
    assert doc["chunks"] == await count(client, "chunks", "document_id", doc["id"])
    pdf = await upload(client, admin, kb["id"], "mammals.pdf", PDF)

    resp = await client.get(f"/api/kbs/{kb['id']}/documents", headers=headers)
    listed = (await resp.json())["documents"]
    assert [(d["id"], d["status"]) for d in listed] == [(doc["id"], "ready"), (pdf["id"], "ready")]
    resp = await client.get(f"/api/kbs/{other['id']}/documents", headers=headers)
    assert (await resp.json())["documents"] == []

    # A document is only found under its own knowledge base.
    for bad in (f"{other['id']}/documents/{doc['id']}", f"{kb['id']}/documents/not-a-uuid"):
        resp = await client.get(f"/api/kbs/{bad}", headers=headers)
        await error_of(resp, 404, "document_not_found")
        resp = await client.delete(f"/api/kbs/{bad}", headers=headers)
        await error_of(resp, 404, "document_not_found")

    assert (await search(client, kb["id"], "zebrafish"))[0]["document"] == "fish.txt"
    resp = await client.delete(f"/api/kbs/{kb['id']}/documents/{doc['id']}", headers=headers)
    assert resp.status == 204
    assert await search(client, kb["id"], "zebrafish") == []
    assert await count(client, "chunks", "document_id", doc["id"]) == 0
    resp = await client.get(f"/api/kbs/{kb['id']}/documents/{doc['id']}", headers=headers)
    await error_of(resp, 404, "document_not_found")
    resp = await client.delete(f"/api/kbs/{kb['id']}/documents/{doc['id']}", headers=headers)
    await error_of(resp, 404, "document_not_found")
    # The other document is untouched.
    assert (await search(client, kb["id"], "platypus"))[0]["document"] == "mammals.pdf"


# --- tenancy -----------------------------------------------------------------------------------


async def test_another_tenants_kb_is_not_found_anywhere(make_client: MakeClient) -> None:
    client = await make_client("all")
    a = await register_admin(client)
    b = await register_admin(client)
    kb = await new_kb(client, a)
    doc = await upload(client, a, kb["id"], "fish.txt", TXT)
    own = await new_kb(client, b, name="B's own")
    kb_path = f"/api/kbs/{kb['id']}"
    doc_path = f"{kb_path}/documents/{doc['id']}"

    attempts = [
        lambda: client.get(kb_path, headers=b["headers"]),
        lambda: client.patch(kb_path, json={"name": "Hijacked"}, headers=b["headers"]),
        lambda: client.delete(kb_path, headers=b["headers"]),
        lambda: client.get(f"{kb_path}/documents", headers=b["headers"]),
        lambda: post_file(client, b, kb["id"], "fish.txt", b"Overwritten by B."),
        lambda: post_file(client, b, kb["id"], "new.txt", b"Planted by B."),
        lambda: client.get(doc_path, headers=b["headers"]),
        lambda: client.delete(doc_path, headers=b["headers"]),
    ]
    for attempt in attempts:
        await error_of(await attempt(), 404, "kb_not_found")
    # A's document under B's own knowledge base is no more found.
    for method in (client.get, client.delete):
        resp = await method(f"/api/kbs/{own['id']}/documents/{doc['id']}", headers=b["headers"])
        await error_of(resp, 404, "document_not_found")
    resp = await client.get("/api/kbs", headers=b["headers"])
    assert [k["id"] for k in (await resp.json())["kbs"]] == [own["id"]]

    # Nothing of A's changed.
    resp = await client.get(kb_path, headers=a["headers"])
    assert (await resp.json())["name"] == "Biology"
    resp = await client.get(f"{kb_path}/documents", headers=a["headers"])
    documents = (await resp.json())["documents"]
    assert [(d["id"], d["sha256"]) for d in documents] == [(doc["id"], doc["sha256"])]
    assert (await search(client, kb["id"], "zebrafish"))[0]["document"] == "fish.txt"

    # B can name A's KB neither as its tutor's default nor for a session.
    resp = await client.post(
        "/api/tutors", json={"name": "Thief", "kb_id": kb["id"]}, headers=b["headers"]
    )
    assert (await error_of(resp, 404, "kb_not_found"))["field"] == "kb_id"
    tutor = await create_tutor(client, b, greeting="")
    for method in (client.patch, client.put):
        resp = await method(
            f"/api/tutors/{tutor['id']}",
            json={"name": "Thief", "kb_id": kb["id"]},
            headers=b["headers"],
        )
        assert (await error_of(resp, 404, "kb_not_found"))["field"] == "kb_id"
    resp = await client.get(f"/api/tutors/{tutor['id']}", headers=b["headers"])
    assert (await resp.json())["kb_id"] is None
    student = await create_student(client, b)
    for kb_id in (kb["id"], str(uuid.uuid4()), "not-a-uuid"):
        resp = await client.post(
            f"/api/tutors/{tutor['id']}/sessions",
            json={"student_id": student["id"], "kb_id": kb_id},
            headers=b["headers"],
        )
        assert (await error_of(resp, 404, "kb_not_found"))["field"] == "kb_id"
    # Nor can B's student, starting a session itself.
    student_headers = await student_login(client, student)
    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions", json={"kb_id": kb["id"]}, headers=student_headers
    )
    assert (await error_of(resp, 404, "kb_not_found"))["field"] == "kb_id"
    resp = await client.get("/api/sessions", headers=b["headers"])
    assert (await resp.json())["sessions"] == []

    # Students may not manage knowledge bases at all, not even their own admin's.
    as_student = {"headers": student_headers}
    routes = [
        lambda: client.get("/api/kbs", headers=student_headers),
        lambda: client.post("/api/kbs", json={"name": "Mine"}, headers=student_headers),
        lambda: client.get(f"/api/kbs/{own['id']}", headers=student_headers),
        lambda: client.patch(f"/api/kbs/{own['id']}", json={"name": "X"}, headers=student_headers),
        lambda: client.delete(f"/api/kbs/{own['id']}", headers=student_headers),
        lambda: client.get(f"/api/kbs/{own['id']}/documents", headers=student_headers),
        lambda: post_file(client, as_student, own["id"], "a.txt", b"words"),
    ]
    for attempt in routes:
        await error_of(await attempt(), 403, "admin_only")
    resp = await client.get(f"/api/kbs/{own['id']}", headers=b["headers"])
    assert resp.status == 200
    assert await count(client, "documents", "kb_id", own["id"]) == 0


# --- turns -------------------------------------------------------------------------------------


async def test_a_turn_gets_passages_and_sources_that_are_stored(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    await upload(client, admin, kb["id"], "extreme.md", MD)
    await upload(client, admin, kb["id"], "mammals.pdf", PDF)
    tutor = await create_tutor(client, admin, kb_id=kb["id"], greeting="")
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)

    frames = await open_turn(client, session, "Which mammal lays eggs?")
    kinds = [f["type"] for f in frames]
    assert "error" not in kinds, frames
    assert kinds.count("sources") == 1, kinds
    assert kinds.index("sources") < kinds.index("text_stream"), kinds
    sources = frames[kinds.index("sources")]
    done = frames[-1]
    assert sources["response_id"] == done["response_id"]
    top = sources["sources"][0]
    assert (top["document"], top["heading"]) == ("mammals.pdf", "page 2")
    assert "platypus lays eggs" in top["excerpt"]
    assert "content" not in top
    assert all(s["document"] in ("mammals.pdf", "extreme.md") for s in sources["sources"])
    # The scripted model echoes the last user message of its prompt: the passage was in it,
    # together with the student's own words.
    reply = next(f for f in frames if f["type"] == "text")
    assert "platypus lays eggs and hunts by electroreception" in reply["content"]
    assert "mammals.pdf" in reply["content"]
    assert "Which mammal lays eggs" in reply["content"]

    messages = await stored_messages(client, admin, session["session_id"], 2)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Which mammal lays eggs?"
    assert messages[1]["response_id"] == done["response_id"]
    assert messages[1]["sources"] == sources["sources"]


async def test_a_session_kb_overrides_the_tutors_default(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    default = await new_kb(client, admin, name="Default")
    chosen = await new_kb(client, admin, name="Chosen")
    await upload(client, admin, default["id"], "default.txt", b"Comets have icy tails.")
    await upload(client, admin, chosen["id"], "chosen.txt", b"Comets orbit the sun slowly.")
    tutor = await create_tutor(client, admin, kb_id=default["id"], greeting="")
    student = await create_student(client, admin)

    resp = await client.post(
        f"/api/tutors/{tutor['id']}/sessions",
        json={"student_id": student["id"], "kb_id": chosen["id"]},
        headers=admin["headers"],
    )
    assert resp.status == 201, await resp.text()
    explicit = await resp.json()
    implicit = await start_session(client, admin, tutor, student)
    for session, kb_id in ((explicit, chosen["id"]), (implicit, default["id"])):
        resp = await client.get(f"/api/sessions/{session['session_id']}", headers=admin["headers"])
        assert (await resp.json())["kb_id"] == kb_id

    frames = await open_turn(client, explicit, "Tell me about comets")
    sources = next(f for f in frames if f["type"] == "sources")["sources"]
    assert [s["document"] for s in sources] == ["chosen.txt"]
    frames = await open_turn(client, implicit, "Tell me about comets")
    sources = next(f for f in frames if f["type"] == "sources")["sources"]
    assert [s["document"] for s in sources] == ["default.txt"]


async def test_a_session_without_kb_sends_no_sources(make_client: MakeClient) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    await upload(client, admin, kb["id"], "fish.txt", TXT)  # exists, but nobody uses it
    tutor = await create_tutor(client, admin, greeting="")
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)

    frames = await open_turn(client, session, "What do zebrafish regenerate?")
    kinds = [f["type"] for f in frames]
    assert "sources" not in kinds and "error" not in kinds, frames
    reply = next(f for f in frames if f["type"] == "text")
    assert "Zebrafish regenerate" not in reply["content"]
    messages = await stored_messages(client, admin, session["session_id"], 2)
    assert messages[1]["sources"] == []


async def test_a_turn_after_its_kb_was_deleted_is_still_answered(
    make_client: MakeClient,
) -> None:
    client = await make_client("all")
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    await upload(client, admin, kb["id"], "fish.txt", TXT)
    tutor = await create_tutor(client, admin, kb_id=kb["id"], greeting="")
    student = await create_student(client, admin)
    session = await start_session(client, admin, tutor, student)
    resp = await client.delete(f"/api/kbs/{kb['id']}", headers=admin["headers"])
    assert resp.status == 204

    frames = await open_turn(client, session, "What do zebrafish regenerate?")
    kinds = [f["type"] for f in frames]
    assert "sources" not in kinds, frames
    assert "text_stream" in kinds and "text" in kinds, kinds
    reply = next(f for f in frames if f["type"] == "text")
    assert "What do zebrafish regenerate?" in reply["content"]
    assert "heart muscle" not in reply["content"]
    messages = await stored_messages(client, admin, session["session_id"], 2)
    assert messages[1]["sources"] == []
