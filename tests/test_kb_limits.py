"""Uploads are parsed in limited child processes: a file that makes its parser run away
fails by itself, and one organisation cannot queue more upload bytes than its share."""

from __future__ import annotations

import asyncio

import aiohttp
import psutil
from aiohttp.test_utils import TestClient

from .conftest import MakeClient
from .test_kb_smoke import upload
from .web_helpers import PASSWORD, register_admin

# stdlib html.parser is quadratic on this: 30 KB costs it about 5 s of CPU.
TAG_SOUP = b"<a " * 10_000


async def new_kb(client: TestClient, admin: dict) -> str:
    resp = await client.post("/api/kbs", json={"name": "Notes"}, headers=admin["headers"])
    return (await resp.json())["id"]


def parse_workers() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "tutorsrv.web.parse_worker" in " ".join(p.cmdline())
    ]


async def test_a_runaway_parse_is_stopped_in_its_own_process(make_client: MakeClient) -> None:
    client = await make_client("all", kb={"parse_cpu_seconds": 1.0})
    admin, other = await register_admin(client), await register_admin(client)
    kb = await new_kb(client, admin)
    form = aiohttp.FormData()
    form.add_field("file", TAG_SOUP, filename="soup.html")
    resp = await client.post(f"/api/kbs/{kb}/documents", data=form, headers=admin["headers"])
    assert resp.status == 202
    doc = await resp.json()
    # While it runs, the parser is a child process, and everyone else is served.
    for _ in range(100):
        if parse_workers():
            break
        await asyncio.sleep(0.02)
    assert parse_workers(), "the upload is not parsed in a child process"
    login = await client.post(
        "/api/auth/login", json={"email": other["email"], "password": PASSWORD}
    )
    assert login.status == 200
    still = await client.get(f"/api/kbs/{kb}/documents/{doc['id']}", headers=admin["headers"])
    assert (await still.json())["status"] == "processing"  # the login did not wait for it
    for _ in range(300):
        got = await client.get(f"/api/kbs/{kb}/documents/{doc['id']}", headers=admin["headers"])
        doc = await got.json()
        if doc["status"] != "processing":
            break
        await asyncio.sleep(0.05)
    assert doc["status"] == "failed" and "1 s of CPU time" in doc["error"], doc
    assert not parse_workers()
    # The organisation goes on uploading normally.
    fine = await upload(client, admin, kb, "fine.md", b"# Cells\n\nCells are small.\n")
    assert fine["status"] == "ready"


async def test_one_organisation_cannot_queue_more_than_its_share(make_client: MakeClient) -> None:
    client = await make_client(
        "all", kb={"parse_cpu_seconds": 2.0, "max_pending_upload_bytes": 40_000}
    )
    admin, other = await register_admin(client), await register_admin(client)
    kb, other_kb = await new_kb(client, admin), await new_kb(client, other)

    async def post(who: dict, kb_id: str, name: str, data: bytes) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name)
        return await client.post(f"/api/kbs/{kb_id}/documents", data=form, headers=who["headers"])

    first = await post(admin, kb, "soup.html", TAG_SOUP)  # 30 KB, held while it is read
    assert first.status == 202
    second = await post(admin, kb, "more.html", TAG_SOUP)  # 60 KB pending: over 40 KB
    assert second.status == 429
    body = await second.json()
    assert body["error"] == "too_many_uploads" and second.headers["Retry-After"]
    # Nothing of the refused upload was stored.
    listed = await client.get(f"/api/kbs/{kb}/documents", headers=admin["headers"])
    assert [d["filename"] for d in (await listed.json())["documents"]] == ["soup.html"]
    # Another organisation is not affected, and its file is read beside the first one.
    theirs = await upload(client, other, other_kb, "cells.md", b"# Cells\n\nCells are small.\n")
    assert theirs["status"] == "ready"
    # Once the first is done (it fails: too much CPU), the first organisation may upload again.
    for _ in range(300):
        got = await client.get(f"/api/kbs/{kb}/documents", headers=admin["headers"])
        if (await got.json())["documents"][0]["status"] != "processing":
            break
        await asyncio.sleep(0.05)
    again = await upload(client, admin, kb, "fine.md", b"# Cells\n\nCells are small.\n")
    assert again["status"] == "ready"


# --- passages cost prompt tokens: kb.passage_tokens bounds them ----------------------------


def words(text: str) -> int:
    return len(text.split())


def passage(n: int, size: int) -> dict:
    return {"document": f"d{n}.md", "heading": "", "content": " ".join(["w"] * size)}


def test_passages_are_kept_in_rank_order_while_they_fit() -> None:
    from tutorsrv.knowledge import fit_passages

    found = [passage(1, 40), passage(2, 50), passage(3, 10)]
    assert [p["document"] for p in fit_passages(found, 95, words)] == ["d1.md", "d2.md"]
    # The third would fit after the second is skipped, but rank order stops at the first
    # that does not: a worse passage never displaces a better one.
    assert [p["document"] for p in fit_passages(found, 60, words)] == ["d1.md"]
    assert fit_passages(found, 1000, words) == found


def test_a_first_passage_too_long_alone_is_cut_at_a_word() -> None:
    from tutorsrv.knowledge import fit_passages

    [cut] = fit_passages([passage(1, 500), passage(2, 5)], 30, words)
    assert cut["document"] == "d1.md"
    assert cut["content"].endswith(" …") and words(cut["content"]) == 30  # 29 words + "…"


async def test_a_turn_reads_at_most_the_passage_budget(make_client: MakeClient) -> None:
    """The real model and its tokenizer: with kb.passage_tokens = 60, a turn's prompt grows
    by no more than that over the same question without course material, however long the
    matching document."""
    from .test_kb_smoke import upload
    from .web_helpers import ask_once, create_student, create_tutor

    client = await make_client(
        "all",
        llm={"backend": "llamacpp", "max_tokens": 8, "temperature": 0.0},
        kb={"passage_tokens": 60},
    )
    admin = await register_admin(client)
    kb = await new_kb(client, admin)
    text = "# Mars\n\n" + "Mars is red because iron oxide dust covers its rocks. " * 60
    assert (await upload(client, admin, kb, "mars.md", text.encode()))["status"] == "ready"
    student = await create_student(client, admin)
    prompts = {}
    for name, kb_id in (("with", kb), ("without", None)):
        tutor = await create_tutor(client, admin, kb_id=kb_id, greeting="")
        messages = await ask_once(client, admin, tutor, student, "Why is Mars red?")
        prompts[name] = messages[-1]["metrics"]["prompt_tokens"]
        if kb_id:
            assert messages[0]["type"] == "sources" and len(messages[0]["sources"]) == 1
    # 60 passage tokens plus the framing around them ("Course material ...", the [1] label).
    assert prompts["without"] < prompts["with"] <= prompts["without"] + 60 + 40
