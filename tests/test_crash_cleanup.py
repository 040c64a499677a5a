"""A server that dies without its clean-up (a native crash, SIGKILL) says why in its log and
never leaves the embedded PostgreSQL running; the next start adopts what a crash left."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest

from .processes import ServerProcess

pytestmark = pytest.mark.timeout(300)


def postmaster(data_dir: Path) -> psutil.Process | None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        process = psutil.Process(pid)
        return process if process.name() == "postgres" else None
    except (OSError, ValueError, psutil.Error):
        return None


def guard_of(server: ServerProcess) -> psutil.Process:
    assert server.proc is not None
    children = psutil.Process(server.proc.pid).children()
    return next(c for c in children if "tutorsrv.web.pg_guard" in " ".join(c.cmdline()))


def embedded(tmp_path: Path) -> ServerProcess:
    # The scripted backend: this is about the process and the database, not the model.
    return ServerProcess("all", {"TUTORSRV_LLM_BACKEND": "scripted"}, tmp_path)


async def test_a_crashed_server_logs_why_and_takes_its_database_down(tmp_path: Path) -> None:
    data_dir = tmp_path / ".pgdata"
    server = await embedded(tmp_path).start()
    pg = postmaster(data_dir)
    assert pg is not None and pg.is_running()
    assert server.proc is not None

    server.proc.send_signal(signal.SIGSEGV)  # as native model code crashing would
    assert server.proc.wait(timeout=30) == -signal.SIGSEGV
    # faulthandler: the log says what happened, with the Python stacks.
    assert "Fatal Python error: Segmentation fault" in server.output()
    pg.wait(timeout=30)  # psutil.TimeoutExpired (a failure) if PostgreSQL outlived it
    assert "without stopping the embedded PostgreSQL" in server.output()  # the guard did it

    # A new start on the same data is clean: it answers, and its own stop stops PostgreSQL.
    again = await embedded(tmp_path).start()
    pg = postmaster(data_dir)
    assert pg is not None
    assert again.stop() == 0
    pg.wait(timeout=30)
    assert json.loads((data_dir / ".handle_pids.json").read_text()) == []


async def test_a_database_left_running_by_a_crash_is_adopted_and_stopped(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ".pgdata"
    first = await embedded(tmp_path).start()
    pg = postmaster(data_dir)
    assert pg is not None
    # The worst case: the guard is gone too (SIGKILL of the whole group but PostgreSQL).
    guard_of(first).kill()
    first.kill()
    assert pg.is_running()
    assert first.proc is not None
    assert first.proc.pid in json.loads((data_dir / ".handle_pids.json").read_text())

    second = await embedded(tmp_path).start()
    assert postmaster(data_dir) == pg  # joined the running server, no second one
    assert "adopting it" in second.output()
    assert second.stop() == 0
    pg.wait(timeout=30)
    assert json.loads((data_dir / ".handle_pids.json").read_text()) == []
