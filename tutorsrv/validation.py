"""Reading and checking JSON request bodies, with errors that name the field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from . import untrusted_json
from .http_errors import APIError

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise APIError(415, "unsupported_media_type", "send the body as application/json")
    try:
        body = untrusted_json.loads(await request.text())
    except (UnicodeDecodeError, LookupError):  # not UTF-8, or an unknown charset
        raise APIError(400, "invalid_json", "the request body is not UTF-8") from None
    except untrusted_json.UntrustedJSON as e:
        raise APIError(400, e.code, f"the request body: {e.message}") from None
    if not isinstance(body, dict):
        raise APIError(400, "invalid_json", "the request body must be a JSON object")
    return body


FORM = "application/x-www-form-urlencoded"


async def login_body(request: web.Request) -> dict[str, Any]:
    """A login's body: JSON, or the OAuth2 password form the old admin frontend posted
    (``username``, ``password``, optionally ``grant_type=password`` and ``scope``), read
    as the JSON fields ``email`` and ``password``."""
    if request.content_type != FORM:
        return await json_body(request)
    try:
        form = await request.post()
    except (UnicodeDecodeError, LookupError, ValueError):
        raise APIError(400, "invalid_form", "the form is not valid UTF-8 form data") from None
    body: dict[str, Any] = {}
    for key in form:
        values = form.getall(key)
        if len(values) > 1:
            raise APIError(422, "invalid_field", f"'{key}' is given more than once", field=key)
        if not isinstance(values[0], str):
            raise APIError(422, "invalid_field", f"'{key}' must be text", field=key)
        body[key] = values[0]
    if body.pop("grant_type", "password") != "password":
        raise APIError(422, "invalid_field", "'grant_type' must be 'password'", field="grant_type")
    body.pop("scope", None)  # OAuth2 scopes: this API has none
    if "username" in body:
        if "email" in body:
            raise APIError(
                422, "invalid_field", "send 'username' or 'email', not both", field="username"
            )
        body["email"] = body.pop("username")
    return body


def only_fields(body: dict[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        field = prefix + unknown[0]
        raise APIError(422, "unknown_field", f"unknown field '{field}'", field=field)


def text(
    body: dict[str, Any],
    key: str,
    *,
    required: bool = False,
    max_len: int = 200,
    min_len: int = 0,
    nullable: bool = False,
    field: str | None = None,
) -> str | None:
    """A string field, stripped; None when absent (or null, where ``nullable``)."""
    name = field or key
    if key not in body or (body[key] is None and nullable):
        if required:
            raise APIError(422, "missing_field", f"'{name}' is required", field=name)
        return None
    value = body[key]
    if not isinstance(value, str):
        raise APIError(422, "invalid_field", f"'{name}' must be a string", field=name)
    value = value.strip()
    if "\x00" in value:
        # PostgreSQL text cannot hold U+0000; say so instead of failing on insert.
        raise APIError(
            422, "invalid_field", f"'{name}' must not contain NUL characters", field=name
        )
    if required and not value:
        raise APIError(422, "invalid_field", f"'{name}' must not be empty", field=name)
    if len(value) > max_len:
        raise APIError(
            422, "invalid_field", f"'{name}' is longer than {max_len} characters", field=name
        )
    if len(value) < min_len:
        raise APIError(
            422, "invalid_field", f"'{name}' needs at least {min_len} characters", field=name
        )
    return value


def whole_number(value: Any) -> int | None:
    """``value`` as an int if it is a JSON integer, else None. ``2.0`` counts: JSON (and JSON
    Schema) make no difference between it and ``2``, and some clients write every number as
    a float. ``true`` does not, although Python's bool is an int."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def integer(
    body: dict[str, Any], key: str, *, low: int, high: int, nullable: bool = False
) -> int | None:
    """An integer field within [low, high]; None when absent (or null, where ``nullable``)."""
    if key not in body or (body[key] is None and nullable):
        return None
    value = whole_number(body[key])
    if value is None:
        raise APIError(422, "invalid_field", f"'{key}' must be an integer", field=key)
    if not low <= value <= high:
        raise APIError(422, "invalid_field", f"'{key}' must be from {low} to {high}", field=key)
    return value


def email(body: dict[str, Any], key: str = "email", *, required: bool = True) -> str | None:
    value = text(body, key, required=required, max_len=254)
    if value is not None and not _EMAIL.match(value):
        raise APIError(422, "invalid_field", f"'{key}' is not an email address", field=key)
    return value.lower() if value is not None else None


def password(
    body: dict[str, Any], key: str = "password", *, required: bool = True, new: bool = True
) -> str | None:
    """A password, exactly as typed (spaces are characters like any other). ``new``: one
    being set, which must be 8 to 256 characters; otherwise one being checked at login."""
    value = body.get(key)
    if value is None:
        if required:
            raise APIError(422, "missing_field", f"'{key}' is required", field=key)
        return None
    if not isinstance(value, str):
        raise APIError(422, "invalid_field", f"'{key}' must be a string", field=key)
    if not new:
        if len(value) > 256:
            raise APIError(422, "invalid_field", f"'{key}' is too long", field=key)
        return value
    if not 8 <= len(value) <= 256:
        raise APIError(422, "invalid_field", f"'{key}' must be 8 to 256 characters", field=key)
    return value
