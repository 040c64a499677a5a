"""The embedded PostgreSQL never outlives the server that started it.

``pg_ctl`` starts the postmaster as a daemon, so it is not our child and nothing stops it if
the server dies without running its clean-up (a native crash, SIGKILL, the OOM killer). Two
pieces close that gap:

- at start (``EmbeddedPostgres.start``) the pids of processes that died are dropped from the
  data folder's list of users, and a postmaster they left running is adopted (joined, then
  stopped by this run's clean stop);
- a guard process (``python -m tutorsrv.web.pg_guard DATA_DIR SERVER_PID``), started next to
  the server with a pipe on its input that only the server holds. When the server goes, in
  any way, the pipe closes; the guard then stops PostgreSQL unless another live process
  still uses it. After a clean stop it finds PostgreSQL already stopped and just exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


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


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data_dir, server_pid = Path(argv[0]), int(argv[1])
    sys.stdin.buffer.read()  # returns when the server closes the pipe or dies
    from .embedded_pg import release_for

    if release_for(data_dir, server_pid):
        print(
            f"tutorsrv pg_guard: server {server_pid} ended without stopping the embedded "
            f"PostgreSQL in {data_dir}; stopped it",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
