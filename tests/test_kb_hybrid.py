"""Hybrid retrieval for real: pgvector similarity from a real embeddings server
(llama.cpp's OpenAI-compatible server with the packaged SmolLM2 GGUF), fused with full text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.appkeys import DB, INGESTOR
from tutorsrv.web import rag

from .conftest import MakeClient
from .llama_server import llama_server
from .test_kb_smoke import upload
from .web_helpers import register_admin


@pytest.fixture
async def embeddings_url() -> AsyncIterator[str]:
    async with llama_server("--embedding", "true") as server:
        yield server.url


async def test_chunks_get_embeddings_and_search_fuses_both_rankings(
    make_client: MakeClient, embeddings_url: str
) -> None:
    client: TestClient = await make_client(
        "all", kb={"embeddings_url": embeddings_url, "embeddings_model": "smollm2"}
    )
    admin = await register_admin(client)
    kb = await (
        await client.post("/api/kbs", json={"name": "Mixed"}, headers=admin["headers"])
    ).json()
    for name, text in (
        ("volcano.md", b"# Volcanoes\n\nMagma rises through the crust and erupts as lava."),
        ("rivers.md", b"# Rivers\n\nRivers carry water from mountains down to the sea."),
    ):
        doc = await upload(client, admin, kb["id"], name, text)
        assert doc["status"] == "ready", doc
    db = client.server.app[DB]
    dims = await db.fetch("SELECT vector_dims(embedding) AS d FROM chunks")
    assert len(dims) == 2 and all(r["d"] and r["d"] > 100 for r in dims)

    embedder = client.server.app[INGESTOR].embedder
    assert embedder is not None
    passages = await rag.search(db, kb["id"], "Where does lava come from?", 2, embedder)
    # Fused scores are reciprocal-rank sums (k = 60). Only the lava document matches the
    # words, so it has a full-text rank and a vector rank; the rivers one only a vector rank.
    by_name = {p["document"]: p["score"] for p in passages}
    assert passages[0]["document"] == "volcano.md"
    assert by_name["volcano.md"] in {round(1 / 61 + 1 / 61, 4), round(1 / 61 + 1 / 62, 4)}
    assert by_name["rivers.md"] in {round(1 / 61, 4), round(1 / 62, 4)}
