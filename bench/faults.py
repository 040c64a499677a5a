"""Fault scenarios against real processes: is any turn a student saw finished ever lost?

Each scenario starts real ``tutorsrv run`` processes (the scripted model, so that replies are
quick and the same every run; the embedded PostgreSQL in a temporary folder, as a fresh
install has it), holds a conversation of ``--turns`` text turns, and does its damage:

- ``kill -9 all``: SIGKILL of ``--role all`` at random points (just after a question, mid-
  reply, the instant ``response_done`` arrives), restarted each time;
- ``postmaster kill -9``: SIGKILL of the embedded PostgreSQL's postmaster mid-conversation;
- ``SIGTERM mid-reply``: a clean stop while a reply streams, restarted each time;
- ``web role down``: split deployment, SIGKILL of the web role mid-conversation, started
  again a few turns later (the engine keeps talking);
- ``kill -9 engine``: split deployment, SIGKILL of the engine at random points.

Then it reads every session's stored transcript through the API and prints, per scenario:
questions sent, replies announced (``response_done`` seen), announced replies stored, lost
(announced, not stored), stored twice, and questions of cut-off replies kept. Target: 0 lost.

Run it (about 2-3 minutes on 2 cores)::

    .venv/bin/python bench/faults.py
    .venv/bin/python bench/faults.py --turns 100 --scenarios "kill -9 all"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from common import cpu_model, die_with_parent, free_port  # noqa: E402

SUBPROTOCOL = "tutorsrv.v1"
PASSWORD = "correct horse battery staple"
SCRIPTED = {
    "TUTORSRV_LLM_BACKEND": "scripted",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_COUNT": "20",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_DELAY_MS": "5",
    "TUTORSRV_ASR_ENABLED": "false",
    "TUTORSRV_TTS_ENABLED": "false",
    "TUTORSRV_ENGINE_MAX_SESSIONS_PER_STUDENT": "0",
    "TUTORSRV_SERVER_SESSION_RATE_PER_MINUTE": "0",
}


class Process:
    """One ``tutorsrv run`` on loopback, restartable in the same folder."""

    def __init__(self, role: str, folder: Path, env: dict[str, str]) -> None:
        self.role, self.folder = role, folder
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TUTORSRV_")}
        self.env.pop("DATABASE_URL", None)
        self.env.update({**SCRIPTED, **env, "PYTHONPATH": str(ROOT)})
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        # Spawning is quick; the wait for /health below is the slow part, and it awaits.
        with open(self.folder / f"{self.role}.log", "ab") as log:  # noqa: ASYNC230
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable,
                    "-m",
                    "tutorsrv",
                    "run",
                    "--role",
                    self.role,
                    "--port",
                    str(self.port),
                ],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.role} exited; see {self.folder}")
                try:
                    async with http.get(self.base + "/health") as r:
                        if r.status in (200, 503):
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.role} did not start")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Tally:
    sent: int = 0
    announced: dict[str, str] = field(default_factory=dict)  # response id -> question
    cut: list[str] = field(default_factory=list)  # questions whose reply a fault cut off
    sessions: list[str] = field(default_factory=list)


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, **kw) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def _tenant(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    status, body = await _call(
        http,
        "POST",
        base + "/api/auth/register",
        json={"email": "a@faults.example", "password": PASSWORD},
    )
    assert status == 201, body
    token = body["access_token"]
    _, tutor = await _call(
        http, "POST", base + "/api/tutors", token, json={"name": "Ada", "greeting": "Hi."}
    )
    _, student = await _call(
        http,
        "POST",
        base + "/api/students",
        token,
        json={"email": "s@faults.example", "name": "Sam", "password": PASSWORD},
    )
    return {"token": token, "tutor": tutor["id"], "student": student["id"]}


async def _session(http: aiohttp.ClientSession, base: str, t: dict[str, Any], tally: Tally) -> str:
    deadline = time.monotonic() + 60
    while True:  # a web role just restarted may not have an engine yet
        status, body = await _call(
            http,
            "POST",
            f"{base}/api/tutors/{t['tutor']}/sessions",
            t["token"],
            json={"student_id": t["student"]},
        )
        if status == 201:
            tally.sessions.append(body["session_id"])
            return str(body["engine_url"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"no session: {status} {body}")
        await asyncio.sleep(0.5)


async def _converse(
    http: aiohttp.ClientSession, engine_url: str, tally: Tally, turns: int, fault: Any
) -> bool:
    """Up to ``turns`` questions on one socket. ``fault(n, stage)`` may do damage and
    returns True when it ended this server (the conversation moves to a new session)."""
    async with http.ws_connect(engine_url, protocols=[SUBPROTOCOL]) as ws:
        while (await ws.receive_json(timeout=30))["type"] != "response_done":
            pass  # the session message, the greeting
        while tally.sent < turns:
            question = f"question {tally.sent}"
            tally.sent += 1
            await ws.send_json({"type": "text", "content": question})
            if await fault(tally.sent, "sent"):
                return True
            tokens = 0
            while True:
                msg = await ws.receive(timeout=60)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    tally.cut.append(question)
                    return True  # the server went away
                message = msg.json()
                if message["type"] == "text_stream":
                    tokens += 1
                    if tokens == 5 and await fault(tally.sent, "mid-reply"):
                        tally.cut.append(question)
                        return True
                elif message["type"] == "response_done":
                    tally.announced[message["response_id"]] = question
                    if await fault(tally.sent, "done"):
                        return True
                    break
                elif message["type"] == "interrupted":
                    tally.cut.append(question)
                    break
    return False


async def _stored(
    http: aiohttp.ClientSession, base: str, t: dict[str, Any], tally: Tally
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for session_id in tally.sessions:
        status, body = await _call(
            http, "GET", f"{base}/api/sessions/{session_id}/messages", t["token"]
        )
        assert status == 200, body
        messages += body["messages"]
    return messages


async def _settle(
    http: aiohttp.ClientSession, base: str, t: dict[str, Any], tally: Tally, within: float = 60
) -> list[dict[str, Any]]:
    """The transcripts once every announced turn is stored, or as they are after ``within``."""
    deadline = time.monotonic() + within
    while True:
        stored = await _stored(http, base, t, tally)
        ids = {m["response_id"] for m in stored if m["role"] == "assistant"}
        if set(tally.announced) <= ids or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(0.5)


def _row(name: str, tally: Tally, stored: list[dict[str, Any]]) -> list[str]:
    replies = [m["response_id"] for m in stored if m["role"] == "assistant"]
    questions = [m["content"] for m in stored if m["role"] == "user"]
    kept = sum(1 for q in tally.cut if q in questions)
    return [
        name,
        str(tally.sent),
        str(len(tally.announced)),
        str(len(set(tally.announced) & set(replies))),
        str(len(set(tally.announced) - set(replies))),
        str(len(replies) - len(set(replies))),
        f"{kept}/{len(tally.cut)}",
    ]


async def kill_all(folder: Path, turns: int, rng: random.Random) -> list[str]:
    server = Process("all", folder, {})
    kills = {
        n: rng.choice(["sent", "mid-reply", "done"])
        for n in rng.sample(range(3, turns - 2), max(1, turns // 10))
    }

    async def fault(n: int, stage: str) -> bool:
        if kills.get(n) == stage:
            server.kill()
            await server.start()
            return True
        return False

    return await _one_server("kill -9 all", server, turns, fault)


async def sigterm_mid_reply(folder: Path, turns: int, rng: random.Random) -> list[str]:
    server = Process("all", folder, {"TUTORSRV_SERVER_SHUTDOWN_GRACE_SECONDS": "0.2"})
    stops = set(rng.sample(range(3, turns - 2), max(1, turns // 10)))

    async def fault(n: int, stage: str) -> bool:
        if stage == "mid-reply" and n in stops:
            server.stop()
            await server.start()
            return True
        return False

    return await _one_server("SIGTERM mid-reply", server, turns, fault)


async def kill_postmaster(folder: Path, turns: int, rng: random.Random) -> list[str]:
    server = Process("all", folder, {})
    at = set(rng.sample(range(3, turns - 2), 2))

    async def fault(n: int, stage: str) -> bool:
        if stage == "sent" and n in at:
            pid = int((folder / ".pgdata" / "postmaster.pid").read_text().split()[0])
            psutil.Process(pid).kill()
        return False  # the conversation goes on through it

    return await _one_server("postmaster kill -9", server, turns, fault)


async def _one_server(name: str, server: Process, turns: int, fault: Any) -> list[str]:
    tally = Tally()
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            t = await _tenant(http, server.base)
            while tally.sent < turns:
                url = await _session(http, server.base, t, tally)
                await _converse(http, url, tally, turns, fault)
            stored = await _settle(http, server.base, t, tally)
    finally:
        server.stop()
    return _row(name, tally, stored)


async def _split(name: str, folder: Path, turns: int, victim: str, rng: random.Random) -> list[str]:
    key = secrets.token_hex(16)
    engine = Process("engine", folder, {"TUTORSRV_ENGINE_API_KEY": key})
    web = Process(
        "web",
        folder,
        {
            "TUTORSRV_ENGINE_API_KEY": key,
            "TUTORSRV_WEB_JWT_SECRET": secrets.token_hex(32),
            "TUTORSRV_WEB_ENGINE_URLS": engine.base,
        },
    )
    engine.env["TUTORSRV_ENGINE_BACKPLANE_URL"] = web.base
    tally = Tally()
    points = set(rng.sample(range(3, turns - 5), max(1, turns // 10)))
    kinds = {n: rng.choice(["sent", "mid-reply", "done"]) for n in points}
    restart_at: dict[int, bool] = {}

    async def fault(n: int, stage: str) -> bool:
        if victim == "web":
            if stage == "done" and n in points and web.proc and web.proc.poll() is None:
                web.kill()  # the engine's socket is direct: the talk goes on
                restart_at[n + 3] = True
            elif stage == "done" and restart_at.pop(n, False):
                await web.start()
            return False
        if kinds.get(n) == stage:
            engine.kill()
            await engine.start()
            return True
        return False

    await engine.start()
    await web.start()
    try:
        async with aiohttp.ClientSession() as http:
            t = await _tenant(http, web.base)
            while tally.sent < turns:
                url = await _session(http, web.base, t, tally)
                await _converse(http, url, tally, turns, fault)
            if web.proc is None or web.proc.poll() is not None:
                await web.start()
            stored = await _settle(http, web.base, t, tally)
    finally:
        engine.stop()
        web.stop()
    return _row(name, tally, stored)


async def web_down(folder: Path, turns: int, rng: random.Random) -> list[str]:
    return await _split("web role down", folder, turns, "web", rng)


async def kill_engine(folder: Path, turns: int, rng: random.Random) -> list[str]:
    return await _split("kill -9 engine", folder, turns, "engine", rng)


SCENARIOS = {
    "kill -9 all": kill_all,
    "postmaster kill -9": kill_postmaster,
    "SIGTERM mid-reply": sigterm_mid_reply,
    "web role down": web_down,
    "kill -9 engine": kill_engine,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    rows = []
    for name in [s.strip() for s in args.scenarios.split(",")]:
        with tempfile.TemporaryDirectory(prefix="tutorsrv-faults-") as folder:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(await SCENARIOS[name](Path(folder), args.turns, random.Random(args.seed)))
    load = os.getloadavg()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; load average before the last "
        f"scenario ended {load[0]:.2f}; scripted model, embedded PostgreSQL, seed {args.seed}"
    )
    header = ["scenario", "sent", "announced", "stored", "lost", "twice", "cut kept"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    asyncio.run(main())
