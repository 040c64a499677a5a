"""Retrieval quality on a small fixture corpus: recall@3 of full-text search.

``fixtures/kb_corpus.json`` holds 20 short school documents and 20 questions phrased the way a
student would ask them (paraphrases, not the documents' own words), each labelled with the
document that answers it. The documents go into a knowledge base through the real API, and
each question is answered by ``rag.search``, as a turn would. A question counts as found when
its document is among the top 3 passages. Run with ``-s`` to see each question's result.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import DB
from tutorsrv.web import rag

from .conftest import MakeClient
from .web_helpers import register_admin

CORPUS = Path(__file__).resolve().parent / "fixtures" / "kb_corpus.json"
K = 3
# Measured recall@3 with full-text search only (english configuration): 0.95 (19 of 20; the
# miss is "Why does the ground suddenly start shaking...", which shares no word with the
# plate tectonics document). The floor leaves room for two more questions slipping out of the
# top 3 after a harmless change in ranking, and fails on anything like a real regression.
RECALL_AT_3_FLOOR = 0.85


async def _upload_all(
    client: TestClient, admin: dict[str, Any], kb_id: str, documents: list[dict[str, str]]
) -> None:
    """Upload every document (multipart, like a browser), then wait until all are ready."""
    ids = []
    for document in documents:
        form = aiohttp.FormData()
        form.add_field("file", document["text"].encode(), filename=document["filename"])
        resp = await client.post(f"/api/kbs/{kb_id}/documents", data=form, headers=admin["headers"])
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["id"])
    pending = set(ids)
    for _ in range(400):
        for doc_id in list(pending):
            got = await client.get(f"/api/kbs/{kb_id}/documents/{doc_id}", headers=admin["headers"])
            doc = await got.json()
            if doc["status"] != "processing":
                assert doc["status"] == "ready", doc
                assert doc["chunks"] >= 1, doc
                pending.discard(doc_id)
        if not pending:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(pending)} documents never finished ingesting")


async def test_full_text_recall_at_3_on_the_fixture_corpus(make_client: MakeClient) -> None:
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    documents, questions = corpus["documents"], corpus["questions"]
    assert len(documents) == 20 and len(questions) == 20
    client = await make_client("all")
    admin = await register_admin(client)
    resp = await client.post("/api/kbs", json={"name": "School"}, headers=admin["headers"])
    assert resp.status == 201, await resp.text()
    kb_id = (await resp.json())["id"]
    await _upload_all(client, admin, kb_id, documents)

    db = client.server.app[DB]
    found = 0
    print(f"\nrecall@{K} on {CORPUS.name} (full text):")
    for item in questions:
        passages = await rag.search(db, kb_id, item["question"], K)
        names = [p["document"] for p in passages]
        hit = item["answer"] in names
        found += hit
        rank = names.index(item["answer"]) + 1 if hit else None
        print(
            f"  {'HIT ' if hit else 'MISS'} rank={rank!s:4} want={item['answer']:24}"
            f" got={names}  q={item['question']!r}"
        )
    recall = found / len(questions)
    print(f"recall@{K} = {recall:.2f} ({found}/{len(questions)})")
    assert recall >= RECALL_AT_3_FLOOR, f"recall@{K} fell to {recall:.2f}"
