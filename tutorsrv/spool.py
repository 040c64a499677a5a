"""The transcript spool: finished turns on local disk until the store has them.

The engine writes every finished turn (and every session end) here, fsync'd, before it tells
the student ``response_done``; the Backplane then delivers from memory and marks what was
stored. A process killed in any way loses nothing it announced: the next start on the same
state folder finds the spool and delivers what is in it.

When a turn begins, the student's message is written too (a "pending" record). If the
process dies before the reply is finished, the next start stores that message with an empty,
interrupted reply: the student's words are kept, and the transcript shows the reply was cut.

The file is JSON lines, one record each: ``{"seq": N, "kind": "turn"|"end"|"pending", "event":
{...}}``, and ``{"ack": N}`` when every turn and end up to N is stored (delivery is in order).
A torn last line (a kill mid-write) is ignored. The file is bounded (``engine.spool_max_bytes``);
it is emptied whenever nothing is outstanding and rewritten with only the outstanding records
when it grows past a threshold. Each process holds its own file under an exclusive lock; a
start also takes over the files of processes of the same role that died.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Rewrite the file once it is this big and less than half of it is still outstanding.
COMPACT_BYTES = 1 << 20
# A record bigger than this is not a turn this server wrote: skipped when reading.
MAX_RECORD_BYTES = 4 << 20
# Spool files per role and state folder: one per live process.
MAX_SLOTS = 64


class SpoolFull(Exception):
    """Writing would pass spool_max_bytes even with only outstanding records kept."""


Record = tuple[int, str, dict[str, Any]]  # (seq, kind, event)


class Spool:
    """One process's spool file. Blocking I/O: call from one worker thread at a time."""

    def __init__(self, folder: Path, role: str, max_bytes: int) -> None:
        self.folder = folder
        self.role = role
        self.max_bytes = max_bytes
        self.path: Path | None = None
        self.corrupt_lines = 0
        self._fd = -1
        self._size = 0
        # Outstanding records by seq (the lines a rewrite keeps), and which are pending.
        self._live: dict[int, bytes] = {}
        self._live_bytes = 0
        self._pending: set[int] = set()

    def open(self) -> list[tuple[str, dict[str, Any]]]:
        """Take a slot; return what this slot and any dead process's slots hold that was
        never stored, in order, now written to this slot as seqs 1, 2, ... A reply that was
        never finished comes back as its pending turn (an empty, interrupted reply)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        orphans: list[int] = []
        for slot in range(MAX_SLOTS):
            path = self.folder / f"{self.role}-{slot}.jsonl"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process's spool
                continue
            if self._fd < 0:
                self._fd, self.path = fd, path
            else:
                orphans.append(fd)
        if self._fd < 0:
            raise OSError(f"all {MAX_SLOTS} transcript spool slots in {self.folder} are in use")
        left: list[tuple[str, dict[str, Any]]] = []
        for fd in [self._fd, *orphans]:
            left += self._outstanding(fd)
        # What was left goes into this process's file, fsync'd, before any file is emptied
        # of it: a crash in between delivers some of it twice (the store ignores repeats),
        # and none of it never.
        data = b"".join(
            _line({"seq": seq, "kind": kind, "event": event})
            for seq, (kind, event) in enumerate(left, start=1)
        )
        self._replace(data)
        for seq, line in enumerate(data.splitlines(keepends=True), start=1):
            self._live[seq] = line
            self._live_bytes += len(line)
        for fd in orphans:
            os.ftruncate(fd, 0)
            os.fsync(fd)
            os.close(fd)
        return left

    def write(self, records: list[Record], *, acked: int = 0, closed: tuple[int, ...] = ()) -> None:
        """Append records and fsync. ``acked``: every turn and end up to this seq is stored.
        ``closed``: seqs of pending records whose reply is among ``records`` or stored."""
        lines = [
            (seq, kind, _line({"seq": seq, "kind": kind, "event": event}))
            for seq, kind, event in records
        ]
        for seq, kind, line in lines:
            self._live[seq] = line
            self._live_bytes += len(line)
            if kind == "pending":
                self._pending.add(seq)
        for seq in closed:
            self._forget(seq)
        for seq in [s for s in self._live if s <= acked and s not in self._pending]:
            self._forget(seq)
        if not self._live:
            if self._size:  # nothing outstanding: the whole file can go
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                self._size = 0
            return
        data = b"".join(line for _, _, line in lines)
        grown = self._size + len(data)
        if grown > self.max_bytes or (grown > COMPACT_BYTES and self._live_bytes < grown // 2):
            if self._live_bytes > self.max_bytes:
                for seq, _, _ in lines:
                    self._forget(seq)
                raise SpoolFull(
                    f"transcript spool {self.path} would pass {self.max_bytes} bytes "
                    "(engine.spool_max_bytes)"
                )
            self._rewrite()
            return
        if not data:
            # Only an ack: worth writing (fewer repeats after a crash), not worth an fsync.
            if acked:
                data = _line({"ack": acked})
                _write_all(self._fd, data)
                self._size += len(data)
            return
        if acked:
            data += _line({"ack": acked})
        _write_all(self._fd, data)
        os.fsync(self._fd)
        self._size += len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _forget(self, seq: int) -> None:
        line = self._live.pop(seq, None)
        if line is not None:
            self._live_bytes -= len(line)
        self._pending.discard(seq)

    def _rewrite(self) -> None:
        """Keep only the outstanding records (in seq order)."""
        self._replace(b"".join(self._live[seq] for seq in sorted(self._live)))

    def _replace(self, data: bytes) -> None:
        """Make ``data`` the whole file, atomically: a crash leaves the old or the new one."""
        assert self.path is not None
        temporary = self.path.with_name(self.path.name + ".new")
        fd = os.open(
            temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            _write_all(fd, data)
            os.fsync(fd)
            # The lock is on the open file, not the name: take it on the new file before it
            # replaces the old one, so no other process can claim the slot in between.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temporary, self.path)
            _fsync_folder(self.folder)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._size = len(data)

    def _outstanding(self, fd: int) -> list[tuple[str, dict[str, Any]]]:
        """What one spool file holds that was never stored: turns and ends after the last
        ack, then the pending turns that no turn in the file finished. Unreadable lines (a
        torn last line after a kill mid-write) are skipped and counted."""
        os.lseek(fd, 0, os.SEEK_SET)
        acked = 0
        deliverable: list[Record] = []
        pending: dict[str, dict[str, Any]] = {}
        finished: set[str] = set()
        with os.fdopen(os.dup(fd), "rb") as f:
            while raw := f.readline(MAX_RECORD_BYTES + 1):
                if not raw.endswith(b"\n"):
                    self.corrupt_lines += 1
                    while raw and not raw.endswith(b"\n"):  # the rest of an over-long line
                        raw = f.readline(MAX_RECORD_BYTES + 1)
                    continue
                try:
                    record = json.loads(raw)
                    if "ack" in record:
                        acked = max(acked, int(record["ack"]))
                        continue
                    seq, kind, event = int(record["seq"]), str(record["kind"]), record["event"]
                    if not isinstance(event, dict) or kind not in ("turn", "end", "pending"):
                        raise TypeError(kind)
                except (ValueError, TypeError, KeyError):
                    self.corrupt_lines += 1
                    continue
                if kind == "pending":
                    pending[str(event.get("response_id"))] = event
                    continue
                if kind == "turn":
                    finished.add(str(event.get("response_id")))
                deliverable.append((seq, kind, event))
        left = [(kind, event) for seq, kind, event in deliverable if seq > acked]
        left += [("turn", event) for rid, event in pending.items() if rid not in finished]
        return left


def _line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
