"""JSON as this server writes it: compact, with no spaces after ``,`` and ``:``.

Every HTTP answer and WebSocket frame goes through here. Compact JSON is smaller on the wire,
and it is what scripts written against the old servers expect (some search the raw text for
``"session_id":"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

_SEPARATORS = (",", ":")


def dumps(value: Any) -> str:
    """For HTTP bodies: ASCII only (non-ASCII as ``\\u`` escapes), so no text a client sent,
    in whatever encoding it arrived, can make an answer unencodable."""
    return json.dumps(value, separators=_SEPARATORS)


def dumps_text(value: Any) -> str:
    """For WebSocket frames: UTF-8 as it is (a Chinese reply stays a third of the size).
    Everything in a frame has passed ``untrusted_json`` or comes from the model's vocabulary,
    so it holds no lone surrogates."""
    return json.dumps(value, ensure_ascii=False, separators=_SEPARATORS)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=dumps)
