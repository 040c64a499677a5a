"""JSON from clients (HTTP bodies, WebSocket messages), parsed so that no input can raise
anything but ``UntrustedJSON`` with a code and a message fit to send back.

``json.loads`` alone lets three kinds of valid-looking input through to the code behind it:
nesting deep enough to raise ``RecursionError``, integers past Python's 4,300-digit limit
(``ValueError``), and ``\\ud800``-style escapes of lone UTF-16 surrogates, which give a
``str`` that cannot be encoded as UTF-8. A lone surrogate stored in a conversation's history
broke every later frame of that session, reconnects included; in the API it reached the
database driver. Those are refused here, before anything keeps them.
"""

from __future__ import annotations

import json
from typing import Any


class UntrustedJSON(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def loads(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except RecursionError:
        raise UntrustedJSON("invalid_json", "the JSON is nested too deeply") from None
    except ValueError:  # JSONDecodeError, and integers longer than 4,300 digits
        raise UntrustedJSON("invalid_json", "not valid JSON") from None
    # Only \u escapes can produce a surrogate: the raw text itself came from UTF-8.
    if "\\u" in raw:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise UntrustedJSON(
                "invalid_text",
                "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text",
            ) from None
        except RecursionError:
            raise UntrustedJSON("invalid_json", "the JSON is nested too deeply") from None
    return value
