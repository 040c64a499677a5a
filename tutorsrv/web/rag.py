"""Knowledge-base storage and retrieval: chunks in PostgreSQL, found by full-text search and,
when an embeddings server is configured, by pgvector similarity too (hybrid ranking).

Full text: the student's words go through ``websearch_to_tsquery`` (the KB's language: stop
words, stemming), and the resulting terms are OR-ed, because a question rarely contains every
word of the passage that answers it; ``ts_rank_cd`` orders the matches. Hybrid: both rankings
are merged by reciprocal rank fusion, which needs no score calibration between them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from ..config import KBConfig
from .ingest import UnreadableFile, chunk
from .parsing import ParseLimits

log = logging.getLogger(__name__)

EXCERPT_CHARS = 300
RRF_K = 60


class Embedder:
    """Client of an OpenAI-compatible ``/v1/embeddings`` endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 30.0):
        self.url = base_url.rstrip("/") + "/v1/embeddings"
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), 32):
            batch = texts[start : start + 32]
            body = {"model": self.model, "input": batch}
            async with self._http.post(self.url, json=body, headers=self._headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"embeddings server answered {resp.status}")
                data = await resp.json()
            rows = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors.extend(_normalise(_pool(row["embedding"])) for row in rows)
        return vectors

    async def close(self) -> None:
        await self._http.close()


def _pool(embedding: Any) -> list[float]:
    # Some servers (llama.cpp without pooling) return one vector per token: average them.
    if embedding and isinstance(embedding[0], list):
        width = len(embedding[0])
        return [sum(tok[i] for tok in embedding) / len(embedding) for i in range(width)]
    return [float(x) for x in embedding]


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(f"{x:.6g}" for x in vector) + "]"


async def ingest(
    db: asyncpg.Pool,
    document_id: uuid.UUID,
    filename: str,
    data: bytes,
    config: KBConfig,
    embedder: Embedder | None,
    parsing: ParseLimits,
    tenant: str,
) -> None:
    """Extract, chunk, (embed,) and store one document; its status says how it went. The old
    chunks of a replaced document stay searchable until the new ones replace them at once."""
    try:
        sections = await parsing.extract(tenant, filename, data)
        chunks = await asyncio.to_thread(
            chunk, sections, config.chunk_chars, config.chunk_overlap_chars
        )
        await _progress(db, document_id, 0.4)
        vectors: list[list[float]] | None = None
        if embedder is not None:
            vectors = await embedder.embed([f"{c.heading}\n{c.content}" for c in chunks])
        await _progress(db, document_id, 0.8)
        async with db.acquire() as conn, conn.transaction():
            kb = await conn.fetchrow(
                "SELECT d.kb_id, k.language::text AS language FROM documents d"
                " JOIN kbs k ON k.id = d.kb_id WHERE d.id = $1",
                document_id,
            )
            if kb is None:  # deleted meanwhile
                return
            current = await conn.fetchval(
                "SELECT sha256 FROM documents WHERE id = $1 FOR UPDATE", document_id
            )
            if current != hashlib.sha256(data).hexdigest():
                return  # a newer upload of this file replaced it meanwhile; it stores itself
            await conn.execute("DELETE FROM chunks WHERE document_id = $1", document_id)
            await conn.executemany(
                "INSERT INTO chunks (document_id, kb_id, ordinal, heading, content, tsv, embedding)"
                " VALUES ($1, $2, $3, $4, $5,"
                " setweight(to_tsvector($6::regconfig, $4), 'A')"
                " || setweight(to_tsvector($6::regconfig, $5), 'B'), $7::text::vector)",
                [
                    (
                        document_id,
                        kb["kb_id"],
                        c.ordinal,
                        c.heading,
                        c.content,
                        kb["language"],
                        _vector_literal(vectors[i]) if vectors else None,
                    )
                    for i, c in enumerate(chunks)
                ],
            )
            await conn.execute(
                "UPDATE documents SET status = 'ready', chunks = $2, progress = 1, error = NULL,"
                " updated_at = now() WHERE id = $1",
                document_id,
                len(chunks),
            )
    except asyncio.CancelledError:
        raise
    except Exception as e:
        reason = (
            str(e) if isinstance(e, UnreadableFile) else f"ingestion failed: {type(e).__name__}"
        )
        log.warning("document %s failed: %s", document_id, e)
        await db.execute(
            "UPDATE documents SET status = 'failed', error = $2, updated_at = now() WHERE id = $1",
            document_id,
            reason,
        )


async def _progress(db: asyncpg.Pool, document_id: uuid.UUID, value: float) -> None:
    await db.execute(
        "UPDATE documents SET progress = $2, updated_at = now() WHERE id = $1", document_id, value
    )


async def search(
    db: asyncpg.Pool, kb_id: str, query: str, k: int, embedder: Embedder | None = None
) -> list[dict[str, Any]]:
    """The ``k`` best passages of a knowledge base for ``query``, best first."""
    try:
        kb = uuid.UUID(kb_id)
    except ValueError:
        return []
    parsed = await db.fetchval(
        "SELECT websearch_to_tsquery(language, $2)::text FROM kbs WHERE id = $1", kb, query
    )
    terms = _any_of(parsed or "")
    text_hits = []
    if terms:
        text_hits = await db.fetch(
            "SELECT c.id, c.heading, c.content, d.filename,"
            "   ts_rank_cd(c.tsv, $2::tsquery) AS score"
            " FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.kb_id = $1 AND c.tsv @@ $2::tsquery"
            " ORDER BY score DESC, c.id LIMIT $3",
            kb,
            terms,
            k * 4,
        )
    rankings = [list(text_hits)]
    vector: list[float] | None = None
    if embedder is not None:
        try:
            [vector] = await embedder.embed([query])
        except Exception as e:  # the words alone still find passages
            log.warning("embeddings unavailable, full-text search only: %s", type(e).__name__)
    if vector is not None:
        vector_hits = await db.fetch(
            "SELECT c.id, c.heading, c.content, d.filename,"
            "   1 - (c.embedding <=> $2::text::vector) AS score"
            " FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.kb_id = $1 AND c.embedding IS NOT NULL"
            "   AND vector_dims(c.embedding) = $3"
            " ORDER BY c.embedding <=> $2::text::vector LIMIT $4",
            kb,
            _vector_literal(vector),
            len(vector),
            k * 4,
        )
        rankings.append(list(vector_hits))
    return (
        _fuse(rankings, k)
        if len(rankings) > 1
        else [_passage(r, r["score"]) for r in text_hits[:k]]
    )


_LEXEME = re.compile(r"(!?)('(?:[^']|'')*')")


def _any_of(parsed: str) -> str:
    """The positive lexemes of a parsed query, OR-ed (negations and phrases dropped: for
    finding course passages, any shared word is evidence)."""
    positive = {lexeme for bang, lexeme in _LEXEME.findall(parsed) if not bang}
    return " | ".join(sorted(positive))


def _fuse(rankings: list[list[asyncpg.Record]], k: int) -> list[dict[str, Any]]:
    scores: dict[int, float] = {}
    rows: dict[int, asyncpg.Record] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking):
            scores[row["id"]] = scores.get(row["id"], 0.0) + 1.0 / (RRF_K + rank + 1)
            rows[row["id"]] = row
    best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [_passage(rows[i], scores[i]) for i in best]


def _passage(row: asyncpg.Record, score: float) -> dict[str, Any]:
    content = row["content"]
    excerpt = content if len(content) <= EXCERPT_CHARS else content[:EXCERPT_CHARS] + "…"
    return {
        "chunk_id": row["id"],
        "document": row["filename"],
        "heading": row["heading"],
        "excerpt": excerpt,
        "content": content,
        "score": round(float(score), 4),
    }


class Ingestor:
    """Owns the background ingestion tasks; ``close`` cancels what is still running."""

    def __init__(self, db: Callable[[], asyncpg.Pool], config: KBConfig, embedder: Embedder | None):
        self._db = db
        self.config = config
        self.embedder = embedder
        self.parsing = ParseLimits(config)
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}

    def start(self, document_id: uuid.UUID, filename: str, data: bytes, tenant: str) -> None:
        """Ingest in the background; a newer upload of the same document replaces an older
        one still in progress. The caller has reserved a place for ``tenant``
        (``parsing.reserve``); it is given back when this ingestion ends, however it ends."""
        previous = self._tasks.pop(document_id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(
            ingest(
                self._db(),
                document_id,
                filename,
                data,
                self.config,
                self.embedder,
                self.parsing,
                tenant,
            ),
            name=f"ingest-{document_id}",
        )
        self._tasks[document_id] = task
        task.add_done_callback(lambda t: self._forget(document_id, t))
        task.add_done_callback(lambda _: self.parsing.release(tenant, len(data)))

    def _forget(self, document_id: uuid.UUID, task: asyncio.Task[None]) -> None:
        if self._tasks.get(document_id) is task:
            del self._tasks[document_id]

    async def wait_idle(self) -> None:
        """Until no ingestion runs (tests and orderly shutdowns)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.embedder is not None:
            await self.embedder.close()


class DatabaseKnowledgeSearch:
    """KnowledgeSearch for the ``all`` role: straight to the database."""

    def __init__(self, db: Callable[[], asyncpg.Pool], embedder: Embedder | None) -> None:
        self._db = db
        self._embedder = embedder

    async def search(self, kb_id: str, query: str, k: int) -> list[dict[str, Any]]:
        return await search(self._db(), kb_id, query, k, self._embedder)

    async def close(self) -> None:
        return None
