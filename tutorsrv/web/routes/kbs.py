"""Knowledge bases (admin only): create them, upload documents, watch them become searchable."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg
from aiohttp import BodyPartReader, web

from ... import validation as v
from ...appkeys import CONFIG, DB, INGESTOR
from ...compact_json import json_response
from ...http_errors import APIError
from ..ingest import FILE_TYPES, UnreadableFile, decode_text, file_type
from ..parsing import ParseLimits, ParsingBusy
from ..security import require_admin
from .common import path_id, row_json

KB_COLUMNS = "id, name, description, language::text AS language, created_at, updated_at"
DOC_COLUMNS = (
    "id, kb_id, filename, content_type, size_bytes, sha256, status, error, chunks, progress,"
    " created_at, updated_at"
)


async def _language(db: asyncpg.Pool, value: str | None) -> str | None:
    if value is None:
        return None
    exists = await db.fetchval("SELECT count(*) FROM pg_ts_config WHERE cfgname = $1", value)
    if not exists:
        raise APIError(
            422,
            "invalid_field",
            "'language' must be a PostgreSQL text search configuration (english, simple, ...)",
            field="language",
        )
    return value


async def owned_kb(db: asyncpg.Pool, kb_id: uuid.UUID, tenant: uuid.UUID) -> asyncpg.Record:
    row = await db.fetchrow(
        f"SELECT {KB_COLUMNS} FROM kbs WHERE id = $1 AND admin_id = $2", kb_id, tenant
    )
    if row is None:
        raise APIError(404, "kb_not_found", "no such knowledge base")
    return row


async def owned_kb_id(db: asyncpg.Pool, raw: str, tenant: uuid.UUID) -> uuid.UUID:
    """A ``kb_id`` given in a body (a tutor's default, a session's): one of this tenant's
    knowledge bases, or 404 naming the field, exactly as for a missing one."""
    try:
        kb_id = uuid.UUID(raw)
    except ValueError:
        kb_id = None
    if kb_id is None or not await db.fetchval(
        "SELECT 1 FROM kbs WHERE id = $1 AND admin_id = $2", kb_id, tenant
    ):
        raise APIError(404, "kb_not_found", "no such knowledge base", field="kb_id")
    return kb_id


async def list_kbs(request: web.Request) -> web.Response:
    who = require_admin(request)
    rows = await request.app[DB].fetch(
        f"SELECT {KB_COLUMNS}, (SELECT count(*) FROM documents d WHERE d.kb_id = kbs.id)"
        " AS documents FROM kbs WHERE admin_id = $1 ORDER BY created_at",
        who.tenant_id,
    )
    return json_response({"kbs": [row_json(r) for r in rows]})


async def create_kb(request: web.Request) -> web.Response:
    who = require_admin(request)
    body = await v.json_body(request)
    v.only_fields(body, ("name", "description", "language"))
    db = request.app[DB]
    name = v.text(body, "name", required=True, max_len=200)
    description = v.text(body, "description", max_len=2000) or ""
    language = await _language(db, v.text(body, "language", max_len=63)) or "english"
    row = await db.fetchrow(
        f"INSERT INTO kbs (admin_id, name, description, language) VALUES ($1, $2, $3, $4)"
        f" RETURNING {KB_COLUMNS}",
        who.tenant_id,
        name,
        description,
        language,
    )
    return json_response(row_json(row), status=201)


async def get_kb(request: web.Request) -> web.Response:
    who = require_admin(request)
    kb = await owned_kb(request.app[DB], path_id(request.match_info["kb_id"], "kb"), who.tenant_id)
    return json_response(row_json(kb))


async def update_kb(request: web.Request) -> web.Response:
    who = require_admin(request)
    kb_id = path_id(request.match_info["kb_id"], "kb")
    body = await v.json_body(request)
    v.only_fields(body, ("name", "description"))
    values: dict[str, Any] = {}
    if "name" in body:
        values["name"] = v.text(body, "name", required=True, max_len=200)
    if "description" in body:
        values["description"] = v.text(body, "description", max_len=2000) or ""
    if not values:
        # The language is fixed: changing it would need every chunk re-indexed.
        raise APIError(422, "missing_field", "send 'name' and/or 'description'")
    sets = ", ".join(f"{key} = ${i}" for i, key in enumerate(values, start=3))
    row = await request.app[DB].fetchrow(
        f"UPDATE kbs SET {sets}, updated_at = now() WHERE id = $1 AND admin_id = $2"
        f" RETURNING {KB_COLUMNS}",
        kb_id,
        who.tenant_id,
        *values.values(),
    )
    if row is None:
        raise APIError(404, "kb_not_found", "no such knowledge base")
    return json_response(row_json(row))


async def delete_kb(request: web.Request) -> web.Response:
    who = require_admin(request)
    kb_id = path_id(request.match_info["kb_id"], "kb")
    result = await request.app[DB].execute(
        "DELETE FROM kbs WHERE id = $1 AND admin_id = $2", kb_id, who.tenant_id
    )
    if result == "DELETE 0":
        raise APIError(404, "kb_not_found", "no such knowledge base")
    return web.Response(status=204)


async def _read_upload(request: web.Request, limit: int) -> tuple[str, bytes]:
    """The multipart field ``file``: its name and bytes, refusing more than ``limit`` bytes
    while reading (the body is never held beyond the limit)."""
    if not request.content_type.startswith("multipart/"):
        raise APIError(415, "unsupported_media_type", "upload the file as multipart/form-data")
    try:
        return await _read_file_part(request, limit)
    except (ValueError, LookupError) as e:
        # aiohttp's multipart reader: no or wrong boundary, truncated or malformed parts,
        # an unknown charset.
        raise APIError(
            400, "invalid_multipart", f"the form data is malformed ({type(e).__name__})"
        ) from None


async def _read_file_part(request: web.Request, limit: int) -> tuple[str, bytes]:
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            raise APIError(422, "missing_field", "the form needs a 'file' field", field="file")
        if isinstance(part, BodyPartReader) and part.name == "file":
            break
        await part.release()  # type: ignore[union-attr]
    filename = (part.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not filename or len(filename) > 255 or "\x00" in filename:
        raise APIError(422, "invalid_field", "the file needs a name", field="file")
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data.extend(chunk)
        if len(data) > limit:
            raise APIError(
                413, "file_too_large", f"the file is larger than {limit} bytes", field="file"
            )
    return filename, bytes(data)


async def upload_document(request: web.Request) -> web.Response:
    who = require_admin(request)
    db = request.app[DB]
    kb = await owned_kb(db, path_id(request.match_info["kb_id"], "kb"), who.tenant_id)
    filename, data = await _read_upload(request, request.app[CONFIG].kb.max_upload_bytes)
    kind = file_type(filename)
    if kind is None:
        raise APIError(
            415,
            "unsupported_file_type",
            f"accepted types: {', '.join(sorted(FILE_TYPES))}",
            field="file",
        )
    if not data.strip():
        raise APIError(422, "empty_file", "the file is empty", field="file")
    ingestor = request.app[INGESTOR]
    tenant = str(who.tenant_id)
    try:
        ingestor.parsing.reserve(tenant, len(data))
    except ParsingBusy:
        raise APIError(
            429,
            "too_many_uploads",
            "this organisation's earlier uploads are still being read (kb.max_pending_upload_"
            "bytes); upload more when they are ready",
            headers={"Retry-After": "10"},
        ) from None
    try:
        await _check_readable(ingestor.parsing, tenant, kind, data)
        row = await _store_document(db, kb["id"], who.tenant_id, filename, kind, data)
    except BaseException:
        ingestor.parsing.release(tenant, len(data))
        raise
    ingestor.start(row["id"], filename, data, tenant)
    # 202: accepted; GET the document to follow status and progress.
    return json_response(row_json(row), status=202)


async def _check_readable(parsing: ParseLimits, tenant: str, kind: str, data: bytes) -> None:
    """Refuse at once what cannot be read: a PDF that will not open (in a limited child
    process, like all parsing of uploads), binary or undecodable text (cheap, linear)."""
    try:
        if kind == "application/pdf":
            await parsing.check_pdf(tenant, data)
        else:
            decode_text(data)
    except UnreadableFile as e:
        raise APIError(422, "unreadable_file", str(e), field="file") from None


async def _store_document(
    db: asyncpg.Pool, kb_id: Any, tenant_id: Any, filename: str, kind: str, data: bytes
) -> asyncpg.Record:
    return await db.fetchrow(
        "INSERT INTO documents (kb_id, admin_id, filename, content_type, size_bytes, sha256)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (kb_id, filename) DO UPDATE SET content_type = EXCLUDED.content_type,"
        "   size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256, status = 'processing',"
        "   error = NULL, progress = 0, updated_at = now()"
        f" RETURNING {DOC_COLUMNS}, (xmax <> 0) AS replaced",
        kb_id,
        tenant_id,
        filename,
        kind,
        len(data),
        hashlib.sha256(data).hexdigest(),
    )


async def list_documents(request: web.Request) -> web.Response:
    who = require_admin(request)
    db = request.app[DB]
    kb = await owned_kb(db, path_id(request.match_info["kb_id"], "kb"), who.tenant_id)
    rows = await db.fetch(
        f"SELECT {DOC_COLUMNS} FROM documents WHERE kb_id = $1 ORDER BY created_at", kb["id"]
    )
    return json_response({"documents": [row_json(r) for r in rows]})


async def _document(request: web.Request) -> tuple[uuid.UUID, uuid.UUID]:
    who = require_admin(request)
    kb_id = path_id(request.match_info["kb_id"], "kb")
    doc_id = path_id(request.match_info["document_id"], "document")
    await owned_kb(request.app[DB], kb_id, who.tenant_id)
    return kb_id, doc_id


async def get_document(request: web.Request) -> web.Response:
    kb_id, doc_id = await _document(request)
    row = await request.app[DB].fetchrow(
        f"SELECT {DOC_COLUMNS} FROM documents WHERE id = $1 AND kb_id = $2", doc_id, kb_id
    )
    if row is None:
        raise APIError(404, "document_not_found", "no such document")
    return json_response(row_json(row))


async def delete_document(request: web.Request) -> web.Response:
    kb_id, doc_id = await _document(request)
    result = await request.app[DB].execute(
        "DELETE FROM documents WHERE id = $1 AND kb_id = $2", doc_id, kb_id
    )
    if result == "DELETE 0":
        raise APIError(404, "document_not_found", "no such document")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/kbs", list_kbs)
    app.router.add_post("/api/kbs", create_kb)
    app.router.add_get("/api/kbs/{kb_id}", get_kb)
    app.router.add_patch("/api/kbs/{kb_id}", update_kb)
    app.router.add_delete("/api/kbs/{kb_id}", delete_kb)
    app.router.add_post("/api/kbs/{kb_id}/documents", upload_document)
    app.router.add_get("/api/kbs/{kb_id}/documents", list_documents)
    app.router.add_get("/api/kbs/{kb_id}/documents/{document_id}", get_document)
    app.router.add_delete("/api/kbs/{kb_id}/documents/{document_id}", delete_document)
