"""The transcript spool: what a process wrote and never saw stored comes back at the next
start, once; what was stored does not; a torn or hostile file costs nothing but its bad lines."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tutorsrv.backplane import Backplane, Event, SessionEnded, TurnRecord
from tutorsrv.spool import Spool, SpoolFull


def turn(n: int, **fields: Any) -> TurnRecord:
    return TurnRecord(
        session_id="s1",
        response_id=f"r{n}",
        reply_text=f"reply {n}",
        reply_at="2026-12-02T10:00:00Z",
        student_text=f"question {n}",
        student_at="2026-12-02T10:00:00Z",
        **fields,
    )


def spool(folder: Path, max_bytes: int = 1 << 20) -> Spool:
    return Spool(folder, "all", max_bytes)


def test_what_was_written_and_not_stored_comes_back_in_order(tmp_path: Path) -> None:
    first = spool(tmp_path)
    assert first.open() == []
    first.write([(1, "turn", turn(1).to_json()), (2, "turn", turn(2).to_json())])
    first.write([(3, "end", SessionEnded("s1", "ended", "2026-12-02T10:01:00Z").to_json())])
    first.close()  # as if the process died: nothing was acknowledged

    again = spool(tmp_path)
    left = again.open()
    assert [kind for kind, _ in left] == ["turn", "turn", "end"]
    assert [e.get("response_id") for _, e in left] == ["r1", "r2", None]
    assert left[0][1] == turn(1).to_json()


def test_stored_events_do_not_come_back_and_the_file_empties(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.open()
    s.write([(1, "turn", turn(1).to_json()), (2, "turn", turn(2).to_json())])
    s.write([], acked=1)
    assert s.path is not None and s.path.stat().st_size > 0
    s.write([], acked=2)
    assert s.path.stat().st_size == 0  # nothing outstanding: nothing kept
    s.write([(3, "turn", turn(3).to_json())], acked=2)
    s.close()
    assert [e["response_id"] for _, e in spool(tmp_path).open()] == ["r3"]


def test_an_unfinished_reply_comes_back_as_the_students_words_with_an_empty_reply(
    tmp_path: Path,
) -> None:
    s = spool(tmp_path)
    s.open()
    unfinished = turn(1, interrupted=True, metrics={"unfinished": True})
    unfinished.reply_text = ""
    s.write([(1, "pending", unfinished.to_json())])
    finished = turn(2)
    s.write([(2, "pending", {**finished.to_json(), "reply_text": ""})])
    s.write([(3, "turn", finished.to_json())], closed=(2,))
    s.write([], acked=3)  # r2 stored; r1 still being written when the process died
    s.close()

    left = spool(tmp_path).open()
    assert left == [("turn", unfinished.to_json())]


def test_a_pending_reply_that_was_stored_is_not_brought_back(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.open()
    s.write([(1, "pending", turn(1).to_json())])
    s.write([(2, "turn", turn(1).to_json())], closed=(1,))
    s.write([], acked=2)
    assert s.path is not None and s.path.stat().st_size == 0
    s.close()
    assert spool(tmp_path).open() == []


def test_a_torn_last_line_and_garbage_are_skipped_and_counted(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.open()
    s.write([(1, "turn", turn(1).to_json()), (2, "turn", turn(2).to_json())])
    assert s.path is not None
    path = s.path
    s.close()
    with path.open("ab") as f:
        f.write(b'{"seq": 7, "kind": "turn", "ev\n')  # not JSON
        f.write(b'{"seq": 8, "kind": "shell", "event": {}}\n')  # not a kind we write
        f.write(b"[1, 2]\n")
        f.write(b'{"seq": 9, "kind": "turn", "event": {"session_id": "s1", "respo')  # torn
    again = spool(tmp_path)
    assert [e["response_id"] for _, e in again.open()] == ["r1", "r2"]
    assert again.corrupt_lines == 4


def test_each_live_process_has_its_own_file_and_a_dead_ones_is_taken_over(
    tmp_path: Path,
) -> None:
    alive, dead = spool(tmp_path), spool(tmp_path)
    alive.open()
    dead.open()
    assert alive.path != dead.path  # the first slot is locked: the second takes the next
    alive.write([(1, "turn", turn(1).to_json())])
    dead.write([(1, "turn", turn(2).to_json())])
    dead.close()

    newcomer = spool(tmp_path)
    # The live process's turn stays with it; the dead one's comes to the newcomer, once.
    assert [e["response_id"] for _, e in newcomer.open()] == ["r2"]
    newcomer.close()
    assert [e["response_id"] for _, e in spool(tmp_path).open()] == ["r2"]
    alive.close()


def test_the_spool_is_private(tmp_path: Path) -> None:
    s = spool(tmp_path / "spool")
    s.open()
    assert s.path is not None
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
    s.close()


def test_the_spool_is_bounded_and_a_rewrite_keeps_only_what_is_outstanding(
    tmp_path: Path,
) -> None:
    big = "x" * 3000
    s = spool(tmp_path, max_bytes=20_000)
    s.open()
    for seq in range(1, 6):
        s.write([(seq, "turn", {**turn(seq).to_json(), "reply_text": big})], acked=seq - 1)
    # Five records of ~3 KB fit; acknowledging all but the last keeps one outstanding.
    for seq in range(6, 12):
        s.write([(seq, "turn", {**turn(seq).to_json(), "reply_text": big})], acked=seq - 1)
    assert s.path is not None and s.path.stat().st_size <= 20_000
    with pytest.raises(SpoolFull):
        for seq in range(12, 30):  # nothing acknowledged: the bound is reached
            s.write([(seq, "turn", {**turn(seq).to_json(), "reply_text": big})], acked=10)
    s.close()
    left = spool(tmp_path, max_bytes=20_000).open()
    ids = [e["response_id"] for _, e in left]
    assert ids[0] == "r11" and ids == sorted(set(ids), key=lambda r: int(r[1:]))
    assert len(ids) >= 5


async def test_backplane_announces_durability_and_delivers_what_a_crash_left(
    tmp_path: Path,
) -> None:
    stored: list[Event] = []
    outage = asyncio.Event()

    async def broken(event: Event) -> None:
        outage.set()
        raise ConnectionError("database down")

    first = Backplane(broken, spool=spool(tmp_path))
    await first.open()
    worker = asyncio.create_task(first.run())
    pending, written = first.begin(turn(2))
    assert await first.submit(turn(1)) is True  # on disk, though the store is down
    assert await written is True
    await outage.wait()
    assert first.outage
    worker.cancel()  # the process dies: no flush, no clean stop
    await asyncio.gather(worker, return_exceptions=True)
    await first.close()
    assert pending > 0

    async def store(event: Event) -> None:
        stored.append(event)

    second = Backplane(store, spool=spool(tmp_path))
    await second.open()
    assert second.recovered == 2
    worker = asyncio.create_task(second.run())
    assert await second.flush(10)
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await second.close()
    assert [(e.response_id, e.reply_text) for e in stored if isinstance(e, TurnRecord)] == [
        ("r1", "reply 1"),
        ("r2", "reply 2"),  # begin() kept what it was given
    ]
    # Everything is stored: a third start finds nothing.
    third = Spool(tmp_path, "all", 1 << 20)
    assert third.open() == []


def test_spool_lines_are_json_with_the_event_as_given(tmp_path: Path) -> None:
    s = spool(tmp_path)
    s.open()
    s.write([(1, "turn", turn(1, metrics={"ttft_ms": 12.5}).to_json())])
    assert s.path is not None
    lines = s.path.read_bytes().splitlines()
    assert json.loads(lines[0]) == {
        "seq": 1,
        "kind": "turn",
        "event": turn(1, metrics={"ttft_ms": 12.5}).to_json(),
    }
    assert os.path.getsize(s.path) == len(lines[0]) + 1
    s.close()
