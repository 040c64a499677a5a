"""The OpenAPI 3.1 document of the HTTP API, built as a plain dict (served at /api/openapi.json).

One function, ``document``, describes the routes one process serves: the web role's (``/api``,
``/internal/v1``), the engine role's (``/v1``), or both (``all``), plus ``/health``,
``/metrics`` and ``/api/openapi.json``, which every role serves. The HTML pages, ``/static``
and the session WebSocket are not described here (the WebSocket protocol is
docs/protocol.md); docs/api.md is the prose reference.

The schemas say what the handlers really check and answer: request schemas are never looser
than the validation in the handlers (``tutorsrv/validation.py`` and the routes), so data that
matches them is accepted, and response schemas mark a property ``required`` only when it is
always present. ``tests/`` keep it true: against the routes the app registers, and against
the live server (Schemathesis generates requests from this document and checks every answer
against it).

Only the standard library is imported, so the document can be built and checked without the
server's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"

# --- string patterns (ECMA-262 and Python `re` read them alike) -------------------------------
#
# Text fields are stripped (str.strip) and may not contain NUL (PostgreSQL text cannot hold it).
# Whitespace is spelled out as Python's str.isspace() has it: ECMA's `\s` lacks U+001C..U+001F
# and U+0085 and adds U+FEFF, so with `\s` "non-blank" would not mean the same to the server.
_NUL = "\\u0000"
_SPACE = (
    "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000"
)
NO_NUL = f"^[^{_NUL}]*$"
NON_BLANK = f"^[^{_NUL}]*[^{_NUL}{_SPACE}][^{_NUL}]*$"
# Somewhere a character that is not whitespace (NUL allowed: the engine keeps ids in memory).
HAS_TEXT = f"[^{_SPACE}]"
# validation.email's `^[^@\s]+@[^@\s]+\.[^@\s]+$`, without NUL. (The server strips the value
# first; allowing spaces around it here would let a longer-than-maxLength value pass.)
_EMAIL_PART = f"[^@{_NUL}{_SPACE}]+"
EMAIL = f"^{_EMAIL_PART}@{_EMAIL_PART}\\.{_EMAIL_PART}$"
# Timestamps the web role parses (datetime.fromisoformat) and stores as timestamptz: RFC 3339
# with an explicit offset, within years and offsets that convert to UTC without overflow.
_TIMESTAMP = (
    "(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?"
    "(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])"
)
TIMESTAMP = f"^{_TIMESTAMP}$"
# The same, or the empty string (read as null: no time).
TIMESTAMP_OR_EMPTY = f"^({_TIMESTAMP})?$"
SESSION_ID = "^[0-9a-f]{32}$"
SHA256 = "^[0-9a-f]{64}$"

# Limits the handlers enforce (see the routes' FIELDS tables).
REPLY_TOKENS = (16, 4096)  # registry.REPLY_TOKENS
ENGINE_ID_CHARS = 128  # engine.routes.MAX_ID_CHARS
MAX_TRANSCRIPT_TEXT = 100_000  # web.routes.internal.MAX_TEXT
MAX_BODY_BYTES = 256 * 1024  # app.MAX_REQUEST_BYTES
# Knowledge base languages: PostgreSQL text search configurations every supported version has.
KB_LANGUAGES = (
    "simple",
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "indonesian",
    "irish",
    "italian",
    "lithuanian",
    "nepali",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "tamil",
    "turkish",
)
FILE_TYPES = ("text/plain", "text/markdown", "text/html", "application/pdf")

TAGS: dict[str, str] = {
    "accounts": "Admin registration, logins and account tokens.",
    "tutors": "Tutors: persona, greeting, language, voice, model. Admins manage; students read.",
    "students": "Students of an organisation (admin only).",
    "knowledge bases": "Knowledge bases and their documents (admin only).",
    "sessions": "Tutoring sessions started through the web role, and their transcripts.",
    "engine": "The engine's session API, for trusted callers holding the service key.",
    "internal": "What engines call on the web role (the HTTP Backplane), with the service key.",
    "operations": "Health, metrics and this document.",
}

ACCOUNT = [{"accountToken": []}]
SERVICE = [{"serviceKey": []}]
PUBLIC: list[dict[str, list[str]]] = []

# What each error status means, unless an operation says more precisely.
ERROR_MEANING: dict[int, str] = {
    400: "The body is not valid JSON (`invalid_json`, `invalid_text`).",
    401: "No account token, or an invalid or expired one.",
    403: "A student token on a route for admins (`admin_only`), or an Origin that is not "
    "allowed (`origin_not_allowed`).",
    404: "Not found.",
    409: "Conflict.",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes (`body_too_large`).",
    415: "The body is not `application/json` (`unsupported_media_type`).",
    422: "The body fails validation (`missing_field`, `invalid_field`, `unknown_field`); "
    "`field` names the field.",
    429: "Over a rate limit (`rate_limited`); see `Retry-After`.",
    503: "A service this request needs is unavailable; see `Retry-After`.",
}


# --- small builders ---------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> dict[str, Schema]:
    return {"application/json": {"schema": schema}}


def _nullable(schema: Schema) -> Schema:
    """``schema`` with null allowed as well (3.1: a type list)."""
    out = dict(schema)
    if "type" in out:
        out["type"] = [out["type"], "null"]
    else:
        out = {"anyOf": [schema, {"type": "null"}]}
    return out


def _object(
    properties: dict[str, Schema],
    required: Iterable[str] = (),
    *,
    closed: bool = False,
    description: str | None = None,
) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if description:
        schema["description"] = description
    needed = list(required)
    if needed:
        schema["required"] = needed
    if closed:
        schema["additionalProperties"] = False
    return schema


def _array(items: Schema, description: str | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if description:
        schema["description"] = description
    return schema


def _text(
    max_len: int,
    description: str,
    *,
    non_blank: bool = False,
    nullable: bool = False,
) -> Schema:
    """A request text field as ``validation.text`` reads it: stripped, at most ``max_len``
    characters, no NUL; ``non_blank`` where it must not be empty after stripping."""
    schema: Schema = {
        "type": ["string", "null"] if nullable else "string",
        "maxLength": max_len,
        "pattern": NON_BLANK if non_blank else NO_NUL,
        "description": description,
    }
    if non_blank:
        schema["minLength"] = 1
    return schema


def _string(description: str | None = None, **keywords: Any) -> Schema:
    schema: Schema = {"type": "string", **keywords}
    if description:
        schema["description"] = description
    return schema


def _uuid(description: str | None = None) -> Schema:
    return _string(description, format="uuid")


def _timestamp(description: str | None = None) -> Schema:
    return _string(description, format="date-time")


def _integer(description: str | None = None, **keywords: Any) -> Schema:
    schema: Schema = {"type": "integer", **keywords}
    if description:
        schema["description"] = description
    return schema


def _response(
    description: str, schema: Schema | None = None, headers: dict[str, Schema] | None = None
) -> Schema:
    response: Schema = {"description": description}
    if schema is not None:
        response["content"] = _json(schema)
    if headers:
        response["headers"] = headers
    return response


def _retry_after(*, always: bool) -> Schema:
    return {
        "description": "Seconds to wait before trying again."
        + ("" if always else " Sent with most of these answers."),
        "required": always,
        "schema": {"type": "integer", "minimum": 0},
    }


WWW_AUTHENTICATE: Schema = {
    "description": "The bearer challenge (`Bearer realm=...`), when no credentials were sent "
    "or a service key is wrong.",
    "schema": {"type": "string"},
}


def _error_headers(status: int) -> dict[str, Schema]:
    """Headers an error answer carries: every 429 says when to retry, most 503s do too."""
    if status == 429:
        return {"Retry-After": _retry_after(always=True)}
    if status == 503:
        return {"Retry-After": _retry_after(always=False)}
    if status == 401:
        return {"WWW-Authenticate": WWW_AUTHENTICATE}
    return {}


def _error_responses(*codes: int | tuple[int, str]) -> dict[str, Schema]:
    """Error answers, each an ``Error`` body: a status, or (status, what it means here).
    ``default`` (any other error status) is always added."""
    responses: dict[str, Schema] = {}
    for code in codes:
        status, meaning = code if isinstance(code, tuple) else (code, ERROR_MEANING[code])
        responses[str(status)] = _response(meaning, _ref("Error"), _error_headers(status))
    responses["default"] = _response(
        "Any other error (404 for an unknown path, 405, 413, 500, ...): the same JSON shape.",
        _ref("Error"),
    )
    return responses


def _op(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Schema],
    *,
    security: list[dict[str, list[str]]],
    description: str | None = None,
    body: Schema | None = None,
    deprecated: bool = False,
) -> Schema:
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": security,
    }
    if description:
        operation["description"] = description
    if deprecated:
        operation["deprecated"] = True
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = responses
    return operation


def _json_body(schema: Schema, description: str | None = None) -> Schema:
    body: Schema = {"required": True, "content": _json(schema)}
    if description:
        body["description"] = description
    return body


def _path_param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


# --- web API errors shared by many operations -------------------------------------------------

_ADMIN_401 = (
    401,
    "No account token, an invalid or expired one, or a revoked one (`token_revoked`: a new "
    "password, a sign-out everywhere, a removed account).",
)
_ADMIN_403 = (403, "The token is a student's (`admin_only`), or the Origin is not allowed.")
_ANY_403 = (403, "The request's Origin is not allowed (`origin_not_allowed`).")
_DB_503 = (503, "The database is unavailable (`database_unavailable`); see Retry-After.")
_SERVICE_401 = (401, "No service key (`missing_api_key`) or a wrong one (`invalid_api_key`).")


def _tutor_404(also: str = "") -> tuple[int, str]:
    return (404, f"No such tutor in this organisation (`tutor_not_found`){also}.")


# --- components -------------------------------------------------------------------------------


def _schemas(models: Sequence[str]) -> dict[str, Schema]:
    """Every schema of the API; ``document`` keeps the ones its paths use."""
    model_choice: Schema = {
        "type": ["string", "null"],
        "enum": [None, "", *models],
        "description": "The model the tutor talks through: one of the served models (`GET "
        "/health` `llm.models`: `llm.model`, then `llm.extra_models`), or null (or empty) "
        "for the default. Any other name answers 422 `unknown_model`, whose message lists "
        "the choices.",
    }
    reply_tokens: Schema = {
        "type": ["integer", "null"],
        "minimum": REPLY_TOKENS[0],
        "maximum": REPLY_TOKENS[1],
        "description": "The longest reply, in model tokens; null: the engine's `llm.max_tokens`.",
    }
    tutor_fields: dict[str, Schema] = {
        "name": _text(200, "Shown to the student. Must not be blank.", non_blank=True),
        "subject": _text(200, 'For your own use. Default `""`.'),
        "system_prompt": _text(
            20_000, "The persona; empty: the engine's `llm.default_system_prompt`."
        ),
        "greeting": _text(2_000, "The first reply of each new session; empty: none."),
        "language": _text(32, "Passed to the engine. Default `en`."),
        "voice": _text(200, "The piper voice, by file name without `.onnx`; empty: the default."),
        "model": model_choice,
        "max_reply_tokens": reply_tokens,
        "kb_id": {
            "type": ["string", "null"],
            "format": "uuid",
            "maxLength": 64,
            "description": "The tutor's default knowledge base, one of this organisation's (else "
            "404 `kb_not_found` with `field`), or null for none.",
        },
    }
    password_new = _string(
        "8 to 256 characters, exactly as typed (nothing is trimmed).", minLength=8, maxLength=256
    )
    password_check = _string("The password, exactly as typed.", maxLength=256)
    # The server's own rule (name@domain.tld, no spaces), not `format: email`: an address the
    # server takes, such as `a@b.com*`, is no email address to a format checker.
    email = _string(
        "An email address (`name@domain.tld`), at most 254 characters; stored and compared in "
        "lower case.",
        maxLength=254,
        pattern=EMAIL,
    )
    student_name = _text(200, "1 to 200 characters after trimming.", non_blank=True)
    # An integer is read as its decimal string, which must be 1 to 128 characters too.
    engine_id: Schema = {
        "oneOf": [
            _string(minLength=1, maxLength=ENGINE_ID_CHARS, pattern=HAS_TEXT),
            _integer(minimum=-(10 ** (ENGINE_ID_CHARS - 1) - 1), maximum=10**ENGINE_ID_CHARS - 1),
        ],
        "description": f"An opaque id: a string (stripped, 1 to {ENGINE_ID_CHARS} characters) "
        "or an integer (read as its decimal string; `2.0` is refused).",
    }
    engine_model: Schema = {
        "type": ["string", "null"],
        "enum": [None, "", *models],
        "description": "A served model (a key of `GET /health` `llm.models`); null or empty: "
        "the engine's default. Another name answers 422 `unknown_model` (`tutor.model`).",
    }
    free_object: Schema = {
        "type": "object",
        "propertyNames": {"pattern": NO_NUL},
        "additionalProperties": _ref("JSONValue"),
    }
    timestamp_in = _string(
        "ISO 8601 (RFC 3339 with an offset; stored as a timestamp with time zone).",
        maxLength=40,
        pattern=TIMESTAMP,
    )

    return {
        "Error": _object(
            {
                "error": _string("A stable machine-readable code, e.g. `missing_field`."),
                "message": _string("What went wrong, for people."),
                "field": _string("The offending field, dotted for nested ones (`tutor.name`)."),
            },
            ["error", "message"],
            description="Every error answer, whatever its status.",
        ),
        "JSONValue": {
            "anyOf": [
                {"type": ["null", "boolean", "number"]},
                _string(pattern=NO_NUL),
                _array(_ref("JSONValue")),
                {
                    "type": "object",
                    "propertyNames": {"pattern": NO_NUL},
                    "additionalProperties": _ref("JSONValue"),
                },
            ],
            "description": "Any JSON value without U+0000 in its strings (PostgreSQL's jsonb "
            "refuses it: 422 `invalid_value`).",
        },
        # accounts
        "Registration": _object(
            {
                "email": {**email, "description": email["description"] + " Must be unused."},
                "password": password_new,
                "name": _text(200, 'Default `""`.'),
                "invite": _text(
                    128,
                    "A code from `tutorsrv invites create`: needed when the server has "
                    "`web.allow_registration = false` (and spent by this registration), "
                    "ignored otherwise.",
                ),
            },
            ["email", "password"],
            closed=True,
        ),
        "AdminLogin": _object(
            {"email": email, "password": password_check}, ["email", "password"], closed=True
        ),
        "StudentLogin": _object(
            {
                "email": email,
                "password": password_check,
                "organisation_id": _text(
                    64,
                    "The admin's id (`organisation_id` of `GET /api/auth/me`), needed when the "
                    "email is enrolled by several organisations (409 `organisation_required`).",
                ),
            },
            ["email", "password"],
            closed=True,
        ),
        "AdminLoginForm": _login_form(email, password_check, student=False),
        "StudentLoginForm": _login_form(email, password_check, student=True),
        "AccountToken": _object(
            {
                "access_token": _string("The account token (a JWT), for `Authorization: Bearer`."),
                "token_type": {"type": "string", "const": "bearer"},
                "expires_in": _integer("Seconds the token lives.", minimum=0),
                "role": {"type": "string", "enum": ["admin", "student"]},
                "user_id": _uuid("The account's id."),
            },
            ["access_token", "token_type", "expires_in", "role", "user_id"],
        ),
        "PasswordChange": _object(
            {"current_password": password_check, "new_password": password_new},
            ["current_password", "new_password"],
            closed=True,
        ),
        "AccountUpdate": _object(
            {
                "name": _text(200, "The admin's name."),
                "email": {**email, "description": email["description"] + " Must be unused."},
                "current_password": {
                    **password_check,
                    "description": "Required with `email`.",
                },
            },
            [],
            closed=True,
            description="Send `name`, `email` or both; `email` with `current_password`.",
        )
        | {
            "anyOf": [{"required": ["name"]}, {"required": ["email"]}],
            "dependentRequired": {"email": ["current_password"]},
        },
        "Account": _object(
            {
                "id": _uuid(),
                "email": _string(),
                "name": _string(),
                "role": {"type": "string", "enum": ["admin", "student"]},
                "organisation_id": _uuid("The admin's id; an admin's own `id`."),
                "created_at": _timestamp(),
            },
            ["id", "email", "name", "role", "organisation_id", "created_at"],
        ),
        # tutors
        "TutorForStudent": _object(
            {
                "id": _uuid(),
                "name": _string(),
                "subject": _string(),
                "greeting": _string(),
                "language": _string(),
                "voice": _string(),
            },
            ["id", "name", "subject", "greeting", "language", "voice"],
            description="What a student may read of a tutor (not the persona nor the model).",
        ),
        "Tutor": _object(
            {
                "id": _uuid(),
                "name": _string(),
                "subject": _string(),
                "system_prompt": _string(),
                "greeting": _string(),
                "language": _string(),
                "voice": _string(),
                "model": {"type": ["string", "null"]},
                "max_reply_tokens": {
                    "type": ["integer", "null"],
                    "minimum": REPLY_TOKENS[0],
                    "maximum": REPLY_TOKENS[1],
                },
                "kb_id": {"type": ["string", "null"], "format": "uuid"},
                "created_at": _timestamp(),
                "updated_at": _timestamp(),
            },
            [
                "id",
                "name",
                "subject",
                "system_prompt",
                "greeting",
                "language",
                "voice",
                "model",
                "max_reply_tokens",
                "kb_id",
                "created_at",
                "updated_at",
            ],
            description="A tutor as its admin sees it.",
        ),
        "TutorAsSeen": {
            "anyOf": [_ref("Tutor"), _ref("TutorForStudent")],
            "description": "A whole tutor for an admin; its public part for a student.",
        },
        "TutorList": _object({"tutors": _array(_ref("TutorAsSeen"), "Oldest first.")}, ["tutors"]),
        "NewTutor": _object(tutor_fields, ["name"], closed=True),
        "TutorReplacement": _object(
            tutor_fields,
            ["name"],
            closed=True,
            description="A whole tutor: every field left out goes back to its default.",
        ),
        "TutorChanges": {
            **_object(tutor_fields, closed=True, description="Only the fields sent change."),
            "minProperties": 1,
        },
        # students
        "Student": _object(
            {
                "id": _uuid(),
                "email": _string(),
                "name": _string(),
                "created_at": _timestamp(),
                "updated_at": _timestamp(),
            },
            ["id", "email", "name", "created_at", "updated_at"],
        ),
        "StudentList": _object(
            {"students": _array(_ref("Student"), "Oldest first.")}, ["students"]
        ),
        "NewStudent": _object(
            {
                "email": {
                    **email,
                    "description": email["description"] + " Unique in the organisation.",
                },
                "name": student_name,
                "password": password_new,
            },
            ["email", "name", "password"],
            closed=True,
        ),
        "StudentChanges": {
            **_object(
                {
                    "email": email,
                    "name": student_name,
                    "password": {**password_new, "description": "Resets the password."},
                },
                closed=True,
                description="Only the fields sent change.",
            ),
            "minProperties": 1,
        },
        # knowledge bases
        "KnowledgeBase": _object(
            {
                "id": _uuid(),
                "name": _string(),
                "description": _string(),
                "language": _string("Its PostgreSQL text search configuration."),
                "created_at": _timestamp(),
                "updated_at": _timestamp(),
                "documents": _integer("The number of its documents (in the list only).", minimum=0),
            },
            ["id", "name", "description", "language", "created_at", "updated_at"],
        ),
        "KnowledgeBaseList": _object(
            {
                "kbs": _array(
                    {"allOf": [_ref("KnowledgeBase"), {"required": ["documents"]}]},
                    "Oldest first, each with `documents`.",
                )
            },
            ["kbs"],
        ),
        "NewKnowledgeBase": _object(
            {
                "name": _text(200, "Must not be blank.", non_blank=True),
                "description": _text(2_000, 'Default `""`.'),
                "language": {
                    "type": "string",
                    "enum": list(KB_LANGUAGES),
                    "description": "A PostgreSQL text search configuration (`SELECT cfgname FROM "
                    "pg_ts_config`; others the server has are accepted too). Default "
                    "`english`. Fixed after creation.",
                },
            },
            ["name"],
            closed=True,
        ),
        "KnowledgeBaseChanges": {
            **_object(
                {
                    "name": _text(200, "Must not be blank.", non_blank=True),
                    "description": _text(2_000, "The new description."),
                },
                closed=True,
                description="Only `name` and `description` change (the language is fixed).",
            ),
            "minProperties": 1,
        },
        "Document": _object(
            {
                "id": _uuid(),
                "kb_id": _uuid(),
                "filename": _string("The uploaded name; unique in its knowledge base."),
                "content_type": {"type": "string", "enum": list(FILE_TYPES)},
                "size_bytes": _integer(minimum=0),
                "sha256": _string(pattern=SHA256),
                "status": {"type": "string", "enum": ["processing", "ready", "failed"]},
                "error": {"type": ["string", "null"], "description": "Why it failed, else null."},
                "chunks": _integer("Its searchable chunks.", minimum=0),
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "created_at": _timestamp(),
                "updated_at": _timestamp(),
                "replaced": {
                    "type": "boolean",
                    "description": "In the upload's answer only: a document of this name was "
                    "there already (same id, new content).",
                },
            },
            [
                "id",
                "kb_id",
                "filename",
                "content_type",
                "size_bytes",
                "sha256",
                "status",
                "error",
                "chunks",
                "progress",
                "created_at",
                "updated_at",
            ],
        ),
        "DocumentList": _object(
            {"documents": _array(_ref("Document"), "Oldest first.")}, ["documents"]
        ),
        "DocumentUpload": _object(
            {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "contentMediaType": "application/octet-stream",
                    "description": "The file, with its name in the part's `Content-Disposition` "
                    "(1 to 255 characters, ending `.txt`, `.md`, `.markdown`, `.html`, "
                    "`.htm` or `.pdf`, else 415 `unsupported_file_type`). Text must be UTF-8 "
                    "or Windows-1252 without NUL; a PDF must open. At most "
                    "`kb.max_upload_bytes`.",
                },
            },
            ["file"],
            description="Other parts are ignored.",
        ),
        # sessions (web)
        "NewSession": _object(
            {
                "student_id": _string(
                    "Admins: required, one of the organisation's students (else 404 "
                    "`student_not_found`). Students: must be left out (422 `unknown_field`).",
                    format="uuid",
                    maxLength=64,
                ),
                "kb_id": {
                    "type": ["string", "null"],
                    "format": "uuid",
                    "maxLength": 64,
                    "description": "This session's knowledge base, one of the organisation's "
                    "(else 404 `kb_not_found` with `field`). Left out: the tutor's default; "
                    "null: none.",
                },
            },
            ["student_id"],
            closed=True,
            description='An admin\'s body; a student sends `{}` or `{"kb_id": ...}`.',
        ),
        "SessionStarted": _object(
            {
                "session_id": _string(pattern=SESSION_ID),
                "engine_url": _string("The WebSocket URL, token included: hand it on as it is."),
                "engine_token": _string("The session token alone (a JWT); never shown again."),
                "status": {"type": "string", "const": "active"},
                "expires_at": _timestamp("The hard end of the session and of its token."),
                "tutor_id": _uuid(),
                "student_id": _uuid(),
            },
            [
                "session_id",
                "engine_url",
                "engine_token",
                "status",
                "expires_at",
                "tutor_id",
                "student_id",
            ],
        ),
        "SessionRecord": _object(
            {
                "id": _string(pattern=SESSION_ID),
                "tutor_id": _uuid(),
                "tutor_name": _string(),
                "student_id": _uuid(),
                "student_name": _string(),
                "kb_id": {"type": ["string", "null"]},
                "status": {
                    "type": "string",
                    "enum": ["active", "ended", "expired"],
                    "description": "`expired` also for any session past `expires_at`.",
                },
                "created_at": _timestamp(),
                "expires_at": _timestamp(),
                "ended_at": {"type": ["string", "null"], "format": "date-time"},
                "turns": _integer("Stored turns.", minimum=0),
            },
            [
                "id",
                "tutor_id",
                "tutor_name",
                "student_id",
                "student_name",
                "kb_id",
                "status",
                "created_at",
                "expires_at",
                "ended_at",
                "turns",
            ],
        ),
        "SessionList": _object(
            {"sessions": _array(_ref("SessionRecord"), "Newest first, at most 500.")},
            ["sessions"],
        ),
        "Source": _object(
            {
                "chunk_id": _integer(),
                "document": _string("The document's file name."),
                "heading": _string(),
                "excerpt": _string("The chunk's first 300 characters."),
                "score": {"type": "number"},
            },
            description="A knowledge-base passage a reply was given.",
        ),
        "UserMessage": _object(
            {
                "role": {"type": "string", "const": "user"},
                "content": _string(),
                "timestamp": _timestamp(),
                "response_id": _string(),
            },
            ["role", "content", "timestamp", "response_id"],
        ),
        "AssistantMessage": _object(
            {
                "role": {"type": "string", "const": "assistant"},
                "content": _string(),
                "timestamp": _timestamp(),
                "response_id": _string(),
                "interrupted": {"type": "boolean"},
                "metrics": {
                    "type": "object",
                    "description": "The engine's `response_done` figures.",
                },
                "sources": _array({"type": "object"}, "The passages it was given (`Source`)."),
            },
            ["role", "content", "timestamp", "response_id", "interrupted", "metrics", "sources"],
        ),
        "Message": {
            "oneOf": [_ref("UserMessage"), _ref("AssistantMessage")],
            "discriminator": {
                "propertyName": "role",
                "mapping": {
                    "user": "#/components/schemas/UserMessage",
                    "assistant": "#/components/schemas/AssistantMessage",
                },
            },
        },
        "Transcript": _object(
            {
                "session_id": _string(pattern=SESSION_ID),
                "messages": _array(_ref("Message"), "Oldest first."),
            },
            ["session_id", "messages"],
        ),
        # internal
        "TurnRecord": _object(
            {
                "session_id": _text(64, "The engine's session id.", non_blank=True),
                "response_id": _text(64, "The response's id.", non_blank=True),
                "reply_text": _text(MAX_TRANSCRIPT_TEXT, 'The reply as produced. Default `""`.'),
                "reply_at": timestamp_in,
                "interrupted": {"type": "boolean", "default": False},
                "student_text": _text(
                    MAX_TRANSCRIPT_TEXT,
                    "What the student said; null for the greeting.",
                    nullable=True,
                ),
                "student_at": {
                    **_nullable(timestamp_in),
                    "pattern": TIMESTAMP_OR_EMPTY,
                    "description": "When the student spoke; required with `student_text`.",
                },
                "metrics": {**free_object, "description": "The response's figures. Default {}."},
                "sources": _array(free_object, "The passages the reply was given. Default []."),
                "revision": _integer(
                    "Higher when the engine corrects a stored turn. Default 0.",
                    minimum=0,
                    maximum=2**31 - 1,
                ),
            },
            ["session_id", "response_id", "reply_at"],
            closed=True,
        )
        | {
            # A student turn without its time is stored, but its transcript cannot be read
            # back (the message needs a timestamp): engines always send both.
            "if": {
                "properties": {"student_text": {"type": "string"}},
                "required": ["student_text"],
            },
            "then": {
                "properties": {"student_at": {"type": "string", "pattern": TIMESTAMP}},
                "required": ["student_at"],
            },
        },
        "TurnStored": _object({"stored": {"type": "boolean"}}, ["stored"]),
        "SessionEnd": _object(
            {
                "reason": {"type": "string", "enum": ["ended", "expired"]},
                "ended_at": timestamp_in,
            },
            ["reason", "ended_at"],
            closed=True,
        ),
        "SessionEndRecorded": _object(
            {"changed": {"type": "boolean", "description": "An active record became ended."}},
            ["changed"],
        ),
        "SearchRequest": _object(
            {
                "query": _text(MAX_TRANSCRIPT_TEXT, "The student's message.", non_blank=True),
                "k": _integer("How many passages, at most. Default 3.", minimum=1, maximum=20),
            },
            ["query"],
            closed=True,
        ),
        "Passage": _object(
            {
                "chunk_id": _integer(),
                "document": _string("The document's file name."),
                "heading": _string(),
                "excerpt": _string("The first 300 characters (with `…` when cut)."),
                "content": _string("The chunk's whole text."),
                "score": {"type": "number"},
            },
            ["chunk_id", "document", "heading", "excerpt", "content", "score"],
        ),
        "SearchResult": _object(
            {"passages": _array(_ref("Passage"), "Best first, at most `k`.")}, ["passages"]
        ),
        # engine
        "EngineTutor": _object(
            {
                "name": _nullable(_string("Default `Tutor` (also when blank).", maxLength=200)),
                "system_prompt": _nullable(_string("Blank: the default prompt.", maxLength=20_000)),
                "greeting": _nullable(
                    _string("The first response; none when empty.", maxLength=2_000)
                ),
                "voice": _nullable(_string("The piper voice; empty: the default.", maxLength=200)),
                "language": _nullable(_string("Default `en`.", maxLength=32)),
                "model": engine_model,
                "max_reply_tokens": {
                    "type": ["integer", "null"],
                    "minimum": REPLY_TOKENS[0],
                    "maximum": REPLY_TOKENS[1],
                },
            },
            closed=True,
            description="The tutor's profile for this session; null fields count as absent.",
        ),
        "EngineSessionRequest": _object(
            {
                "tutor_id": engine_id,
                "student_id": engine_id,
                "kb_id": _nullable(engine_id),
                "tutor": _nullable(_ref("EngineTutor")),
                "tenant_id": {
                    **_nullable(engine_id),
                    "description": "The organisation: with it, the per-student and "
                    "per-organisation session shares apply.",
                },
            },
            ["tutor_id", "student_id"],
            closed=True,
        ),
        "EngineSessionCreated": _object(
            {
                "session_id": _string(pattern=SESSION_ID),
                "engine_url": _string("The WebSocket URL, token included."),
                "engine_token": _string("The session token (a JWT); never shown again."),
                "status": {"type": "string", "const": "active"},
                "connection": {"type": "string", "const": "created"},
                "expires_at": _timestamp("The hard end of the session and of its token."),
            },
            ["session_id", "engine_url", "engine_token", "status", "connection", "expires_at"],
        ),
        "EngineSession": _object(
            {
                "session_id": _string(pattern=SESSION_ID),
                "tutor_id": _string(),
                "student_id": _string(),
                "kb_id": {"type": ["string", "null"]},
                "tutor_name": _string(),
                "status": {
                    "type": "string",
                    "const": "active",
                    "description": "A session the engine holds is live; ended ones are gone.",
                },
                "connection": {
                    "type": "string",
                    "enum": ["created", "connected", "disconnected"],
                    "description": "created: no socket yet; connected: one is live; "
                    "disconnected: one was, none is now.",
                },
                "created_at": _timestamp(),
                "expires_at": _timestamp(),
                "messages": _integer("History entries.", minimum=0),
            },
            [
                "session_id",
                "tutor_id",
                "student_id",
                "kb_id",
                "tutor_name",
                "status",
                "connection",
                "created_at",
                "expires_at",
                "messages",
            ],
        ),
        "HistoryMessage": _object(
            {
                "role": {"type": "string", "enum": ["user", "assistant"]},
                "content": _string(),
                "timestamp": _string(),
                "response_id": _string(),
                "interrupted": {"type": "boolean", "const": True},
            },
            ["role", "content", "timestamp"],
            description="As in the WebSocket `session` frame.",
        ),
        "EngineSessionDetail": {
            "allOf": [
                _ref("EngineSession"),
                _object({"history": _array(_ref("HistoryMessage"))}, ["history"]),
            ]
        },
        "EngineSessionList": _object(
            {
                "sessions": _array(_ref("EngineSession")),
                "count": _integer("Live sessions.", minimum=0),
                "max_sessions": _integer(minimum=0),
            },
            ["sessions", "count", "max_sessions"],
        ),
        # operations
        "Health": _health_schema(),
        "EngineState": _object(
            {
                "engine": _string("The engine's URL, without credentials."),
                "status": {
                    "type": "string",
                    "enum": ["healthy", "full", "unreachable", "unhealthy", "unknown"],
                },
                "sessions": {"type": ["integer", "null"]},
                "max_sessions": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
                "last_checked": {"type": ["string", "null"], "format": "date-time"},
            },
            ["engine", "status", "sessions", "max_sessions", "last_error", "last_checked"],
            description="One engine as the web role last saw it.",
        ),
        "OpenAPIDocument": _object(
            {"openapi": _string(), "info": {"type": "object"}, "paths": {"type": "object"}},
            ["openapi", "info", "paths"],
            description="This document.",
        ),
    }


def _login_form(email: Schema, password: Schema, *, student: bool) -> Schema:
    """The OAuth2 password form of a login: ``username`` (or ``email``) and ``password``."""
    properties: dict[str, Schema] = {
        "username": {**email, "description": "The email address (or send `email`, not both)."},
        "email": email,
        "password": password,
        "grant_type": {"type": "string", "const": "password"},
        "scope": _string("Ignored: this API has no scopes."),
    }
    if student:
        properties["organisation_id"] = _text(64, "As in the JSON body.")
    return {
        **_object(properties, ["password"], closed=True),
        "oneOf": [{"required": ["username"]}, {"required": ["email"]}],
        "description": "Each field at most once.",
    }


def _health_schema() -> Schema:
    ready_model = _object({"ready": {"type": "boolean"}}, ["ready"])
    return _object(
        {
            "status": {
                "type": "string",
                "enum": ["healthy", "degraded"],
                "description": "degraded (answered with 503): a model cannot take a turn, the "
                "database is unavailable, or (web) no engine is healthy or full.",
            },
            "service": {
                "type": "string",
                "enum": ["tutorsrv-engine", "tutorsrv-web", "tutorsrv"],
            },
            "version": _string(),
            "role": {"type": "string", "enum": ["engine", "web", "all"]},
            "sessions": _integer("Engine roles: live sessions.", minimum=0),
            "max_sessions": _integer("Engine roles.", minimum=0),
            "instance": _string(
                "Engine roles: a random id per process start; a new one at the same address "
                "means the engine restarted and holds none of its earlier sessions."
            ),
            "llm": _object(
                {
                    "backend": _string(),
                    "model": _string(),
                    "ready": {"type": "boolean"},
                    "warmup_ttft_ms": {"type": ["number", "null"]},
                    "models": {
                        "type": "object",
                        "additionalProperties": ready_model,
                        "description": "Every model a tutor may name, the default first.",
                    },
                    "build": _string("llama.cpp: what it was built with."),
                    "restarts": _integer("Model processes started again.", minimum=0),
                    "last_failure": {"type": ["string", "null"]},
                },
                ["backend", "model", "ready", "warmup_ttft_ms", "models"],
                description="Engine roles: the default model.",
            ),
            "asr": {
                "anyOf": [
                    {"type": "string", "const": "disabled"},
                    _object({"model": _string(), "ready": {"type": "boolean"}}, ["model", "ready"]),
                ],
                "description": "Engine roles: speech recognition.",
            },
            "tts": {
                "anyOf": [
                    {"type": "string", "const": "disabled"},
                    _object(
                        {"voices": _array(_string()), "ready": {"type": "boolean"}},
                        ["voices", "ready"],
                    ),
                ],
                "description": "Engine roles: speech synthesis.",
            },
            "database": {
                "type": "string",
                "enum": ["ok", "unavailable"],
                "description": "Web roles.",
            },
            "embedded_database": _object(
                {
                    "running": {"type": "boolean"},
                    "restarts": _integer(minimum=0),
                    "last_failure": _nullable(_string()),
                },
                ["running", "restarts", "last_failure"],
                description="Web roles with the embedded PostgreSQL (no database.url): false "
                "while it is being started again after it exited.",
            ),
            "engines": _array(_ref("EngineState"), "The web role: each of `web.engine_urls`."),
        },
        ["status", "service", "version", "role"],
        description="The same shape with 200 (healthy) and 503 (degraded).",
    )


def _parameters() -> dict[str, Schema]:
    def uuid_param(name: str, what: str) -> Schema:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": f"The {what}'s id. A malformed id answers 404, like a missing one.",
            "schema": {"type": "string", "format": "uuid"},
        }

    return {
        "TutorId": uuid_param("tutor_id", "tutor"),
        "StudentId": uuid_param("student_id", "student"),
        "KbId": uuid_param("kb_id", "knowledge base"),
        "DocumentId": uuid_param("document_id", "document"),
        "SessionId": {
            "name": "session_id",
            "in": "path",
            "required": True,
            "description": "A session id: 32 lowercase hex digits (anything else answers 404).",
            "schema": {"type": "string", "pattern": SESSION_ID},
        },
    }


def _security_schemes() -> dict[str, Schema]:
    return {
        "accountToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "An account token from `POST /api/auth/register`, `/api/auth/login` "
            "or `/api/students/login`: `Authorization: Bearer <access_token>`.",
        },
        "serviceKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "The engine's service key (`engine.api_key`), shared by web roles "
            "and engines: `Authorization: Bearer <key>`.",
        },
    }


# --- paths ------------------------------------------------------------------------------------


def _operations_paths() -> dict[str, Schema]:
    """What every role serves."""
    return {
        "/health": {
            "get": _op(
                "get_health",
                "What this process runs, and whether its parts answer",
                "operations",
                {
                    "200": _response("Healthy.", _ref("Health")),
                    "503": _response(
                        "Degraded: the same body, `status: degraded`.", _ref("Health")
                    ),
                    **_error_responses(),
                },
                security=PUBLIC,
            )
        },
        "/metrics": {
            "get": _op(
                "get_metrics",
                "Prometheus metrics",
                "operations",
                {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_error_responses(),
                },
                security=PUBLIC,
            )
        },
        "/api/openapi.json": {
            "get": _op(
                "get_openapi_document",
                "This OpenAPI document",
                "operations",
                {
                    "200": _response("The routes this process serves.", _ref("OpenAPIDocument")),
                    **_error_responses(_ANY_403),
                },
                security=PUBLIC,
            )
        },
    }


def _login_body(json_schema: str, form_schema: str) -> Schema:
    return {
        "required": True,
        "content": {
            **_json(_ref(json_schema)),
            "application/x-www-form-urlencoded": {"schema": _ref(form_schema)},
        },
    }


def _account_paths() -> dict[str, Schema]:
    token = _ref("AccountToken")
    login_errors = _error_responses(
        400,
        (401, "Wrong email or password (`invalid_credentials`), the same answer for both."),
        _ANY_403,
        (415, "The body is neither JSON nor `application/x-www-form-urlencoded`."),
        422,
        (
            429,
            "Too many login attempts (`rate_limited`): from this address (every attempt), or "
            "failed ones at this account from browsers without its device cookie, or from "
            "this browser.",
        ),
        _DB_503,
    )
    return {
        "/api/auth/register": {
            "post": _op(
                "register_admin",
                "Register an admin (and with it an organisation)",
                "accounts",
                {
                    "201": _response("Registered: a token for the new admin.", token),
                    **_error_responses(
                        400,
                        (
                            403,
                            "Registration needs an invite and none was sent "
                            "(`registration_closed`), the invite is unknown, used or expired "
                            "(`invalid_invite`), or the Origin is not allowed.",
                        ),
                        (409, "An admin with this email exists (`email_taken`)."),
                        415,
                        422,
                        (429, "Too many registrations from this address (`rate_limited`)."),
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("Registration")),
                security=PUBLIC,
            )
        },
        "/api/auth/login": {
            "post": _op(
                "login_admin",
                "Log an admin in",
                "accounts",
                {"200": _response("A token.", token), **login_errors},
                description="JSON, or the OAuth2 password form (`username`, `password`, "
                "optionally `grant_type=password` and `scope`). A successful login sets an "
                "HttpOnly cookie `tutorsrv_device_…` for this path: a browser that brings it "
                "has its own failed-login budget for the account, so a stranger's wrong "
                "passwords cannot lock it out.",
                body=_login_body("AdminLogin", "AdminLoginForm"),
                security=PUBLIC,
            )
        },
        "/api/students/login": {
            "post": _op(
                "login_student",
                "Log a student in",
                "accounts",
                {
                    "200": _response("A token whose role is `student`.", token),
                    **login_errors,
                    "409": _response(
                        "The email is enrolled by several organisations: send "
                        "`organisation_id` (`organisation_required`).",
                        _ref("Error"),
                    ),
                },
                description="JSON, or the OAuth2 password form. Emails are unique only within "
                "an organisation. Sets a device cookie as the admin login does.",
                body=_login_body("StudentLogin", "StudentLoginForm"),
                security=PUBLIC,
            )
        },
        "/api/auth/me": {
            "get": _op(
                "get_me",
                "Who the token belongs to",
                "accounts",
                {
                    "200": _response("The account.", _ref("Account")),
                    **_error_responses(
                        (
                            401,
                            "No token, an invalid or expired one, or a revoked one "
                            "(`token_revoked`: a new password, a sign-out everywhere, or an "
                            "account that no longer exists).",
                        ),
                        _ANY_403,
                        _DB_503,
                    ),
                },
                security=ACCOUNT,
            ),
            "patch": _op(
                "update_me",
                "Change the admin's own name or email",
                "accounts",
                {
                    "200": _response("The account, changed.", _ref("Account")),
                    **_error_responses(
                        400,
                        _ADMIN_401,
                        (
                            403,
                            "A student's token (`admin_only`), a wrong `current_password` "
                            "(`wrong_password`), or the Origin is not allowed.",
                        ),
                        (409, "Another account has this email (`email_taken`)."),
                        415,
                        (422, "Nothing to change, or `current_password` missing with `email`."),
                        (429, "Too many password attempts (`rate_limited`), as for logins."),
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("AccountUpdate")),
                security=ACCOUNT,
            ),
        },
        "/api/auth/password": {
            "post": _op(
                "change_password",
                "Change the caller's own password (admin or student)",
                "accounts",
                {
                    "200": _response(
                        "Changed: every earlier token of the account is revoked; a new one.",
                        token,
                    ),
                    **_error_responses(
                        400,
                        _ADMIN_401,
                        (
                            403,
                            "`current_password` is wrong (`wrong_password`), or the Origin "
                            "is not allowed.",
                        ),
                        415,
                        422,
                        (429, "Too many password attempts (`rate_limited`), as for logins."),
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("PasswordChange")),
                security=ACCOUNT,
            )
        },
        "/api/auth/sign-out": {
            "post": _op(
                "sign_out",
                "Sign out everywhere",
                "accounts",
                {
                    "204": _response("Every token of the account, this one too, is revoked."),
                    **_error_responses(_ADMIN_401, _ANY_403, _DB_503),
                },
                security=ACCOUNT,
            )
        },
    }


def _tutor_paths() -> dict[str, Schema]:
    tutor = _response("The tutor.", _ref("Tutor"))
    write_errors = _error_responses(
        400,
        _ADMIN_401,
        _ADMIN_403,
        _tutor_404(", or a `kb_id` that is not one of its knowledge bases (`kb_not_found`)"),
        415,
        (422, "Validation failed, or `model` is not served (`unknown_model`)."),
        _DB_503,
    )
    return {
        "/api/tutors": {
            "get": _op(
                "list_tutors",
                "List the organisation's tutors",
                "tutors",
                {
                    "200": _response(
                        "Whole tutors for an admin; without the persona for a student.",
                        _ref("TutorList"),
                    ),
                    **_error_responses(_ADMIN_401, _ANY_403, _DB_503),
                },
                security=ACCOUNT,
            ),
            "post": _op(
                "create_tutor",
                "Create a tutor",
                "tutors",
                {
                    "201": _response("The new tutor.", _ref("Tutor")),
                    **_error_responses(
                        400,
                        _ADMIN_401,
                        _ADMIN_403,
                        (404, "`kb_id` is not one of the organisation's (`kb_not_found`)."),
                        415,
                        (422, "Validation failed, or `model` is not served (`unknown_model`)."),
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("NewTutor")),
                security=ACCOUNT,
            ),
        },
        "/api/tutors/{tutor_id}": {
            "parameters": [_path_param("TutorId")],
            "get": _op(
                "get_tutor",
                "Read a tutor",
                "tutors",
                {
                    "200": _response(
                        "The whole tutor for an admin; without the persona for a student.",
                        _ref("TutorAsSeen"),
                    ),
                    **_error_responses(_ADMIN_401, _ANY_403, _tutor_404(), _DB_503),
                },
                security=ACCOUNT,
            ),
            "put": _op(
                "replace_tutor",
                "Replace a tutor",
                "tutors",
                {"200": tutor, **write_errors},
                description="`name` is required; every field left out goes back to its default "
                "(`model`, `max_reply_tokens` and `kb_id` to null).",
                body=_json_body(_ref("TutorReplacement")),
                security=ACCOUNT,
            ),
            "patch": _op(
                "update_tutor",
                "Change some fields of a tutor",
                "tutors",
                {"200": tutor, **write_errors},
                description="At least one field (else 422 `missing_field`).",
                body=_json_body(_ref("TutorChanges")),
                security=ACCOUNT,
            ),
            "delete": _op(
                "delete_tutor",
                "Delete a tutor, its sessions and their transcripts",
                "tutors",
                {
                    "204": {"description": "Deleted; its active sessions were ended first."},
                    **_error_responses(
                        _ADMIN_401,
                        _ADMIN_403,
                        _tutor_404(),
                        (
                            503,
                            "An engine holding one of its live sessions is unreachable "
                            "(`engine_unavailable`; nothing was deleted), or the database is.",
                        ),
                    ),
                },
                security=ACCOUNT,
            ),
        },
    }


def _student_paths() -> dict[str, Schema]:
    student = _response("The student.", _ref("Student"))
    not_found = (404, "No such student in this organisation (`student_not_found`).")
    return {
        "/api/students": {
            "get": _op(
                "list_students",
                "List the organisation's students",
                "students",
                {
                    "200": _response("The students.", _ref("StudentList")),
                    **_error_responses(_ADMIN_401, _ADMIN_403, _DB_503),
                },
                security=ACCOUNT,
            ),
            "post": _op(
                "create_student",
                "Enrol a student",
                "students",
                {
                    "201": _response("The new student.", _ref("Student")),
                    **_error_responses(
                        400,
                        _ADMIN_401,
                        _ADMIN_403,
                        (409, "A student with this email is enrolled here (`email_taken`)."),
                        415,
                        422,
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("NewStudent")),
                security=ACCOUNT,
            ),
        },
        "/api/students/{student_id}": {
            "parameters": [_path_param("StudentId")],
            "get": _op(
                "get_student",
                "Read a student",
                "students",
                {"200": student, **_error_responses(_ADMIN_401, _ADMIN_403, not_found, _DB_503)},
                security=ACCOUNT,
            ),
            "patch": _op(
                "update_student",
                "Rename a student, change its email or reset its password",
                "students",
                {
                    "200": student,
                    **_error_responses(
                        400,
                        _ADMIN_401,
                        _ADMIN_403,
                        not_found,
                        (409, "Another student here has this email (`email_taken`)."),
                        415,
                        (422, "Validation failed, or nothing to change (`missing_field`)."),
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("StudentChanges")),
                security=ACCOUNT,
            ),
            "delete": _op(
                "delete_student",
                "Remove a student, its sessions and their transcripts",
                "students",
                {
                    "204": {"description": "Removed; its active sessions were ended first."},
                    **_error_responses(
                        _ADMIN_401,
                        _ADMIN_403,
                        not_found,
                        (
                            503,
                            "An engine holding one of its live sessions is unreachable "
                            "(`engine_unavailable`; nothing was deleted), or the database is.",
                        ),
                    ),
                },
                security=ACCOUNT,
            ),
        },
    }


def _kb_paths() -> dict[str, Schema]:
    kb = _response("The knowledge base.", _ref("KnowledgeBase"))
    kb_404 = (404, "No such knowledge base in this organisation (`kb_not_found`).")
    doc_404 = (404, "No such knowledge base (`kb_not_found`) or document (`document_not_found`).")
    return {
        "/api/kbs": {
            "get": _op(
                "list_kbs",
                "List the organisation's knowledge bases",
                "knowledge bases",
                {
                    "200": _response("The knowledge bases.", _ref("KnowledgeBaseList")),
                    **_error_responses(_ADMIN_401, _ADMIN_403, _DB_503),
                },
                security=ACCOUNT,
            ),
            "post": _op(
                "create_kb",
                "Create a knowledge base",
                "knowledge bases",
                {
                    "201": _response("The new knowledge base.", _ref("KnowledgeBase")),
                    **_error_responses(
                        400,
                        _ADMIN_401,
                        _ADMIN_403,
                        415,
                        (
                            422,
                            "Validation failed, or `language` is not a text search "
                            "configuration of the server (`invalid_field`).",
                        ),
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("NewKnowledgeBase")),
                security=ACCOUNT,
            ),
        },
        "/api/kbs/{kb_id}": {
            "parameters": [_path_param("KbId")],
            "get": _op(
                "get_kb",
                "Read a knowledge base",
                "knowledge bases",
                {"200": kb, **_error_responses(_ADMIN_401, _ADMIN_403, kb_404, _DB_503)},
                security=ACCOUNT,
            ),
            "patch": _op(
                "update_kb",
                "Rename a knowledge base or change its description",
                "knowledge bases",
                {
                    "200": kb,
                    **_error_responses(
                        400,
                        _ADMIN_401,
                        _ADMIN_403,
                        kb_404,
                        415,
                        (
                            422,
                            "Validation failed (`language` is `unknown_field`: it is fixed), "
                            "or nothing to change (`missing_field`).",
                        ),
                        _DB_503,
                    ),
                },
                body=_json_body(_ref("KnowledgeBaseChanges")),
                security=ACCOUNT,
            ),
            "delete": _op(
                "delete_kb",
                "Delete a knowledge base with its documents",
                "knowledge bases",
                {
                    "204": {"description": "Deleted. Tutors that had it as default get null."},
                    **_error_responses(_ADMIN_401, _ADMIN_403, kb_404, _DB_503),
                },
                security=ACCOUNT,
            ),
        },
        "/api/kbs/{kb_id}/documents": {
            "parameters": [_path_param("KbId")],
            "get": _op(
                "list_documents",
                "List a knowledge base's documents",
                "knowledge bases",
                {
                    "200": _response("The documents.", _ref("DocumentList")),
                    **_error_responses(_ADMIN_401, _ADMIN_403, kb_404, _DB_503),
                },
                security=ACCOUNT,
            ),
            "post": _op(
                "upload_document",
                "Upload a document (read in the background)",
                "knowledge bases",
                {
                    "202": _response(
                        "Stored, and being read: GET it to follow `status` and `progress`. A "
                        "file of the same name replaces the document (same id).",
                        {"allOf": [_ref("Document"), {"required": ["replaced"]}]},
                    ),
                    **_error_responses(
                        (400, "The multipart body is malformed (`invalid_multipart`)."),
                        _ADMIN_401,
                        _ADMIN_403,
                        kb_404,
                        (413, "The file is over `kb.max_upload_bytes` (`file_too_large`)."),
                        (
                            415,
                            "The body is not multipart (`unsupported_media_type`), or the file "
                            "name's extension is not accepted (`unsupported_file_type`).",
                        ),
                        (
                            422,
                            "No `file` part (`missing_field`), a file without a name "
                            "(`invalid_field`), an empty file (`empty_file`) or one that cannot "
                            "be read as its type (`unreadable_file`).",
                        ),
                        (
                            429,
                            "This organisation's earlier uploads are still being read "
                            "(`too_many_uploads`); see Retry-After.",
                        ),
                        _DB_503,
                    ),
                },
                description="One file, in the multipart part `file`. The 256 KiB limit of JSON "
                "bodies does not apply; `kb.max_upload_bytes` does.",
                body={
                    "required": True,
                    "content": {"multipart/form-data": {"schema": _ref("DocumentUpload")}},
                },
                security=ACCOUNT,
            ),
        },
        "/api/kbs/{kb_id}/documents/{document_id}": {
            "parameters": [_path_param("KbId"), _path_param("DocumentId")],
            "get": _op(
                "get_document",
                "Read a document's state",
                "knowledge bases",
                {
                    "200": _response("The document.", _ref("Document")),
                    **_error_responses(_ADMIN_401, _ADMIN_403, doc_404, _DB_503),
                },
                security=ACCOUNT,
            ),
            "delete": _op(
                "delete_document",
                "Delete a document and its chunks",
                "knowledge bases",
                {
                    "204": {"description": "Deleted."},
                    **_error_responses(_ADMIN_401, _ADMIN_403, doc_404, _DB_503),
                },
                security=ACCOUNT,
            ),
        },
    }


def _session_paths() -> dict[str, Schema]:
    session_404 = (
        404,
        "No such session, or one the caller may not see (`session_not_found`).",
    )

    def delete(operation_id: str, *, deprecated: bool) -> Schema:
        return _op(
            operation_id,
            "End a session" + (" (the old web server's path)" if deprecated else ""),
            "sessions",
            {
                "204": {
                    "description": "Ended (or it had ended already). The transcript is kept.",
                },
                **_error_responses(
                    _ADMIN_401,
                    _ANY_403,
                    session_404,
                    (
                        503,
                        "The session's engine is unreachable (`engine_unavailable`): it stays "
                        "active; or the database is unavailable.",
                    ),
                ),
            },
            description=(
                "Kept for old clients: use `DELETE /api/sessions/{session_id}`."
                if deprecated
                else "An active session is ended on its engine (a connected socket is closed "
                "with 4410), then its record becomes `ended`."
            ),
            deprecated=deprecated,
            security=ACCOUNT,
        )

    return {
        "/api/tutors/{tutor_id}/sessions": {
            "parameters": [_path_param("TutorId")],
            "post": _op(
                "create_session",
                "Start a session with a tutor",
                "sessions",
                {
                    "201": _response(
                        "Started: the WebSocket URL to hand to the browser.",
                        _ref("SessionStarted"),
                    ),
                    **_error_responses(
                        (
                            400,
                            "The body is not valid JSON, or `engine_url` cannot be built from "
                            "the request's Host (`bad_host`).",
                        ),
                        _ADMIN_401,
                        _ANY_403,
                        (
                            404,
                            "No such tutor (`tutor_not_found`), student (`student_not_found`) "
                            "or knowledge base (`kb_not_found`) in this organisation.",
                        ),
                        415,
                        422,
                        (
                            429,
                            "Too many session starts (`rate_limited`), or the student's or "
                            "organisation's share of sessions is used (`too_many_sessions`); see "
                            "Retry-After.",
                        ),
                        (
                            503,
                            "No engine can take the session (`engine_unavailable`), or the "
                            "database is unavailable; see Retry-After.",
                        ),
                    ),
                },
                description="Admins start sessions for their students; a student for itself.",
                body=_json_body(_ref("NewSession")),
                security=ACCOUNT,
            ),
        },
        "/api/sessions": {
            "get": _op(
                "list_sessions",
                "List sessions (an admin's organisation's, or a student's own)",
                "sessions",
                {
                    "200": _response("The session records.", _ref("SessionList")),
                    **_error_responses(_ADMIN_401, _ANY_403, _DB_503),
                },
                security=ACCOUNT,
            )
        },
        "/api/sessions/{session_id}": {
            "parameters": [_path_param("SessionId")],
            "get": _op(
                "get_session",
                "Read a session record",
                "sessions",
                {
                    "200": _response("The record.", _ref("SessionRecord")),
                    **_error_responses(_ADMIN_401, _ANY_403, session_404, _DB_503),
                },
                security=ACCOUNT,
            ),
            "delete": delete("delete_session", deprecated=False),
        },
        "/api/sessions/{session_id}/messages": {
            "parameters": [_path_param("SessionId")],
            "get": _op(
                "get_session_messages",
                "Read a session's transcript",
                "sessions",
                {
                    "200": _response("The transcript, oldest first.", _ref("Transcript")),
                    **_error_responses(_ADMIN_401, _ANY_403, session_404, _DB_503),
                },
                security=ACCOUNT,
            ),
        },
        "/api/tutors/sessions/{session_id}": {
            "parameters": [_path_param("SessionId")],
            "delete": delete("delete_session_legacy", deprecated=True),
        },
    }


def _internal_paths() -> dict[str, Schema]:
    body_errors = (400, _SERVICE_401, 415)
    return {
        "/internal/v1/turns": {
            "post": _op(
                "store_turn",
                "Store a finished turn",
                "internal",
                {
                    "201": _response(
                        "Stored, or a lower revision replaced.",
                        {
                            "allOf": [
                                _ref("TurnStored"),
                                {"properties": {"stored": {"const": True}}},
                            ]
                        },
                    ),
                    "200": _response(
                        "Nothing stored: this revision (or a newer one) is stored already, or "
                        "the session is not one the web role created.",
                        {
                            "allOf": [
                                _ref("TurnStored"),
                                {"properties": {"stored": {"const": False}}},
                            ]
                        },
                    ),
                    **_error_responses(
                        *body_errors,
                        (422, "Validation failed, or a timestamp is not ISO 8601."),
                        _DB_503,
                    ),
                },
                description="Idempotent on (session_id, response_id): a retry stores it once.",
                body=_json_body(_ref("TurnRecord")),
                security=SERVICE,
            )
        },
        "/internal/v1/sessions/{session_id}/end": {
            "parameters": [
                {
                    "name": "session_id",
                    "in": "path",
                    "required": True,
                    "description": "The engine's session id (any other id changes nothing).",
                    "schema": {"type": "string", "minLength": 1, "pattern": NO_NUL},
                }
            ],
            "post": _op(
                "record_session_end",
                "Record that an engine ended a session",
                "internal",
                {
                    "200": _response("Whether the record changed.", _ref("SessionEndRecorded")),
                    **_error_responses(*body_errors, 422, _DB_503),
                },
                body=_json_body(_ref("SessionEnd")),
                security=SERVICE,
            ),
        },
        "/internal/v1/kbs/{kb_id}/search": {
            "parameters": [
                {
                    "name": "kb_id",
                    "in": "path",
                    "required": True,
                    "description": "The knowledge base; an unknown or malformed one finds "
                    "nothing (no organisation check: the engine holds the key).",
                    "schema": {"type": "string"},
                }
            ],
            "post": _op(
                "search_kb",
                "Search a knowledge base for a turn",
                "internal",
                {
                    "200": _response("The best passages.", _ref("SearchResult")),
                    **_error_responses(*body_errors, 422, _DB_503),
                },
                body=_json_body(_ref("SearchRequest")),
                security=SERVICE,
            ),
        },
    }


def _engine_paths() -> dict[str, Schema]:
    session_404 = (404, "No such live session (`session_not_found`).")
    return {
        "/v1/sessions": {
            "post": _op(
                "engine_create_session",
                "Create a session on this engine",
                "engine",
                {
                    "201": _response(
                        "Created: the WebSocket URL to hand to the browser.",
                        _ref("EngineSessionCreated"),
                    ),
                    **_error_responses(
                        (
                            400,
                            "The body is not valid JSON, or `engine_url` cannot be built from "
                            "the request's Host (`bad_host`).",
                        ),
                        _SERVICE_401,
                        415,
                        (
                            422,
                            "Validation failed, or `tutor.model` is not served (`unknown_model`).",
                        ),
                        (
                            429,
                            "The student's or organisation's share of sessions is used "
                            "(`too_many_sessions`); see Retry-After.",
                        ),
                        (
                            503,
                            "The engine is full (`at_capacity`) or shutting down "
                            "(`shutting_down`); see Retry-After.",
                        ),
                    ),
                },
                body=_json_body(_ref("EngineSessionRequest")),
                security=SERVICE,
            ),
            "get": _op(
                "engine_list_sessions",
                "List this engine's live sessions (never their tokens)",
                "engine",
                {
                    "200": _response("The live sessions.", _ref("EngineSessionList")),
                    **_error_responses(_SERVICE_401),
                },
                security=SERVICE,
            ),
        },
        "/v1/sessions/{session_id}": {
            "parameters": [
                {
                    "name": "session_id",
                    "in": "path",
                    "required": True,
                    "description": "The session's id (32 lowercase hex digits).",
                    "schema": {"type": "string", "pattern": SESSION_ID},
                }
            ],
            "get": _op(
                "engine_get_session",
                "Read a live session with its history",
                "engine",
                {
                    "200": _response("The session.", _ref("EngineSessionDetail")),
                    **_error_responses(_SERVICE_401, session_404),
                },
                security=SERVICE,
            ),
            "delete": _op(
                "engine_delete_session",
                "End a session now",
                "engine",
                {
                    "204": {
                        "description": "Ended: a connected socket is closed with 4410; the "
                        "session is gone.",
                    },
                    **_error_responses(_SERVICE_401, session_404),
                },
                security=SERVICE,
            ),
        },
    }


# --- the document -----------------------------------------------------------------------------

_DESCRIPTION = """\
The HTTP API of tutorsrv, for the routes this process serves: the web role's (`/api/...` for
people and their apps, with an account token; `/internal/v1/...` for engines, with the service
key), the engine role's (`/v1/...`, with the service key), or both (`--role all`). `GET
/health`, `GET /metrics` and this document (`GET /api/openapi.json`) are served by every
role, without auth.

Every error is JSON: `{"error": code, "message": text, "field"?: name}` (`Error`). A malformed
id, a missing one and another organisation's all answer 404 alike. JSON bodies are limited to
256 KiB (413 `body_too_large`). `GET` routes also answer `HEAD`.

Not described here: the session WebSocket (`/ws/ws/{session_id}?token=...`, and the older
`/ws/{session_id}`), whose messages are documented in docs/protocol.md; the HTML pages (`/`,
`/admin`, `/tutors/{tutor_id}/chat`, `/test`) and their files under `/static/`. The prose
reference is docs/api.md."""


def document(
    *, web: bool, engine: bool, version: str, models: Sequence[str] = ()
) -> dict[str, Any]:
    """The OpenAPI document of the routes one process serves: web=True for the web role's
    routes, engine=True for the engine role's; `all` is both.

    ``models``: the model names tutors may choose (``llm.model``, then ``llm.extra_models``).
    Request schemas accept only these (and null or empty, for the default), since any other
    name is refused with 422; without them, only the default can be chosen."""
    paths = _operations_paths()
    if web:
        paths |= _account_paths()
        paths |= _tutor_paths()
        paths |= _student_paths()
        paths |= _kb_paths()
        paths |= _session_paths()
        paths |= _internal_paths()
    if engine:
        paths |= _engine_paths()

    components: dict[str, Any] = {
        "schemas": _schemas(list(dict.fromkeys(models))),
        "parameters": _parameters(),
        "securitySchemes": _security_schemes(),
    }
    _prune(components, paths)
    used_tags = {tag for item in paths.values() for op in _operations(item) for tag in op["tags"]}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "tutorsrv",
            "version": version,
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": name, "description": text} for name, text in TAGS.items() if name in used_tags
        ],
        "paths": paths,
        "components": components,
    }


_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _operations(path_item: Schema) -> Iterator[Schema]:
    for method in _METHODS:
        if method in path_item:
            yield path_item[method]


def _refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` target under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _prune(components: dict[str, Any], paths: dict[str, Schema]) -> None:
    """Keep only the components the paths use (directly or through other components), so a
    role's document names nothing it does not serve."""
    used: set[tuple[str, str]] = set()
    pending = list(_refs(paths))
    while pending:
        section, name = pending.pop().removeprefix("#/components/").split("/", 1)
        if (section, name) in used:
            continue
        used.add((section, name))
        pending.extend(_refs(components[section][name]))
    schemes = {
        name
        for item in paths.values()
        for op in _operations(item)
        for requirement in op.get("security", [])
        for name in requirement
    }
    for section in ("schemas", "parameters"):
        components[section] = {
            name: value for name, value in components[section].items() if (section, name) in used
        }
    components["securitySchemes"] = {
        name: value for name, value in components["securitySchemes"].items() if name in schemes
    }
    for section in [name for name, value in components.items() if not value]:
        del components[section]
