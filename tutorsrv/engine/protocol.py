"""Engine WebSocket protocol v1 (DESIGN.md §3; reference in docs/protocol.md).

Parsing and validating what the client sends lives here, so the handler only ever sees a
well-formed message or a ``ProtocolError`` that already knows its code and wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import untrusted_json

PROTOCOL_VERSION = 1
# The WebSocket subprotocol of the full protocol, binary audio frames included. A client that
# does not offer it (one written for the old server's JSON-only socket) gets JSON frames only.
SUBPROTOCOL = "tutorsrv.v1"

# Close codes.
CLOSE_SHUTDOWN = 1001
CLOSE_TOO_BIG = 1009
CLOSE_BAD_TOKEN = 4401
CLOSE_WRONG_SESSION = 4403
CLOSE_UNKNOWN_SESSION = 4404
CLOSE_EXPIRED = 4408
CLOSE_REPLACED = 4409
CLOSE_ENDED = 4410

# Message types the client may send. Voice input on an engine without ASR is answered with
# ``audio_unavailable``, so clients learn why, not "unknown".
CLIENT_TYPES = {"text", "interrupt", "ping", "config", "played", "audio", "audio_end"}
AUDIO_INPUT_TYPES = {"audio", "audio_end"}
CONFIG_SWITCHES = {"audio_output": bool}


class ProtocolError(Exception):
    """A client message that cannot be acted on; answered with an ``error`` frame."""

    def __init__(self, code: str, content: str) -> None:
        super().__init__(content)
        self.code = code
        self.content = content


@dataclass
class ClientMessage:
    type: str
    data: dict[str, Any]


def parse_client_message(raw: str, *, max_text_chars: int) -> ClientMessage:
    try:
        data = untrusted_json.loads(raw)
    except untrusted_json.UntrustedJSON as e:
        raise ProtocolError(e.code, f"the message: {e.message}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", "a message must be a JSON object with a 'type'")
    kind = data.get("type")
    if kind is None:
        raise ProtocolError("missing_field", "the message has no 'type'")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_field", "'type' must be a string")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")

    if kind == "text":
        content = _require(data, "content", str)
        if not content.strip():
            raise ProtocolError("invalid_field", "'content' must not be empty")
        if "\x00" in content:
            raise ProtocolError("invalid_field", "'content' must not contain NUL characters")
        if len(content) > max_text_chars:
            raise ProtocolError(
                "text_too_long",
                f"'content' has {len(content)} characters; the limit is {max_text_chars}",
            )
    elif kind == "audio":
        data_field = _require(data, "data", str)
        if not data_field:
            raise ProtocolError("invalid_field", "'data' must be base64 audio")
    elif kind == "played":
        _require(data, "response_id", str)
        audio_ms = _require(data, "audio_ms", int | float)
        if isinstance(audio_ms, bool) or audio_ms < 0:
            raise ProtocolError("invalid_field", "'audio_ms' must be a number of milliseconds")
    elif kind == "config":
        switches = {k: v for k, v in data.items() if k != "type"}
        if not switches:
            raise ProtocolError("missing_field", "'config' needs at least one setting")
        for key, value in switches.items():
            expected = CONFIG_SWITCHES.get(key)
            if expected is None:
                raise ProtocolError("invalid_field", f"unknown config setting {key[:40]!r}")
            if not isinstance(value, expected):
                raise ProtocolError("invalid_field", f"'{key}' must be {expected.__name__}")
    return ClientMessage(kind, data)


def _require(data: dict[str, Any], key: str, kind: Any) -> Any:
    if key not in data:
        raise ProtocolError("missing_field", f"the message needs '{key}'")
    value = data[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        name = getattr(kind, "__name__", None) or "number"
        raise ProtocolError("invalid_field", f"'{key}' must be a {name}")
    return value


def error(code: str, content: str, *, fatal: bool = False) -> dict[str, Any]:
    return {"type": "error", "code": code, "content": content, "fatal": fatal}


def notice(code: str, content: str) -> dict[str, Any]:
    """Something the client may show but need not act on (the end of a reported problem)."""
    return {"type": "notice", "code": code, "content": content}
