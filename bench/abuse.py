"""Hostile input against a live server, while an innocent client measures what it gets.

What it does
------------
Starts ``tutorsrv run --role all`` (embedded PostgreSQL in a temporary folder, the real
embedded model, speech recognition on, speech synthesis off) and sets up two organisations:
the **victim** (an admin, a tutor, a student) and the **attacker** (the same, plus a knowledge
base). Then, for a baseline and for each attack, the victim repeats one probe:

- ``login``: ``POST /api/auth/login`` of the victim admin (an argon2 check);
- ``start``: ``POST /api/tutors/{id}/sessions`` for the victim student;
- ``first token``: a text turn on that session's WebSocket, to its first ``text_stream``.

and the script reports p50 of each (and the ratio to the baseline), the peak RSS of the server
with all its children (model process, parse workers, PostgreSQL), and how the attacker's
requests were answered. The attacks (from issue 17's list; each runs for ``--seconds``):

1. ``regex``: a Markdown upload whose line is ``# a`` + 20,000 spaces + ``x``;
2. ``audio bomb``: 20 minutes of FLAC silence without a declared length (~220 KB), sent as
   ``audio`` messages in a loop;
3. ``tag soup``: HTML uploads of ``<a `` repeated (30 KB; html.parser is quadratic on it);
4. ``history flood``: an attacker student sends 4 KB text turns as fast as it is answered;
5. ``registrations``: 200 admin registrations at once from one address;
6. ``idle sockets``: 1,100 TCP connections that never send a request;
7. ``slot grab``: the attacker student starts sessions and never connects;
8. ``lockout``: a stranger sends wrong passwords for the victim admin's email, 20 a second,
   each from a different spoofed address (the server trusts 127.0.0.1 as its proxy here, so
   ``X-Forwarded-For`` is believed, as behind a real proxy). The victim logs in from the
   browser it used before (its device cookie); once a second the owner also tries from a
   new browser, which the lockout does hold back (reported as ``new browser``).

Run it (about 3-4 minutes on 2 cores)::

    .venv/bin/python bench/abuse.py
    .venv/bin/python bench/abuse.py --seconds 15 --attacks regex,tag_soup
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from common import (  # noqa: E402
    Server,
    cpu_model,
    fmt,
    free_port,
    launch_engine,
    stop_server,
    wait_healthy,
)

from tests.speech import silent_flac  # noqa: E402  (the bomb the voice tests send)
from tutorsrv.engine.protocol import SUBPROTOCOL  # noqa: E402

PASSWORD = "correct horse battery"


def tree_rss_mib(server: Server) -> float:
    total = 0
    for proc in [server.ps, *server.ps.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    pg_root = None
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(server.log_path.parent) in " ".join(
            proc.info["cmdline"] or []
        ):
            pg_root = proc
            break
    if pg_root is not None:  # started through pg_ctl: not our child
        for proc in [pg_root, *pg_root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
    return total / 2**20


# Where the victim's requests say they come from (the server trusts 127.0.0.1 as a proxy).
VICTIM_ADDRESS = {"X-Forwarded-For": "198.51.100.7"}


class Org:
    """One organisation: admin token, a tutor, a student."""

    def __init__(self, base: str) -> None:
        self.base = base
        # The victim's browser: its cookies (the login's device cookie) last across phases.
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.victim: Org = self
        self.email = f"admin-{secrets.token_hex(4)}@school.example"
        self.headers: dict[str, str] = {}
        self.tutor = self.student = self.kb = ""
        self.student_email = f"student-{secrets.token_hex(4)}@school.example"

    async def set_up(self, http: aiohttp.ClientSession) -> Org:
        r = await http.post(
            self.base + "/api/auth/register",
            json={"email": self.email, "password": PASSWORD, "name": "A"},
        )
        self.headers = {"Authorization": "Bearer " + (await r.json())["access_token"]}
        t = await http.post(
            self.base + "/api/tutors",
            json={"name": "Ada", "system_prompt": "You are a maths tutor. Answer briefly."},
            headers=self.headers,
        )
        self.tutor = (await t.json())["id"]
        s = await http.post(
            self.base + "/api/students",
            json={"email": self.student_email, "name": "S", "password": PASSWORD},
            headers=self.headers,
        )
        self.student = (await s.json())["id"]
        k = await http.post(self.base + "/api/kbs", json={"name": "Notes"}, headers=self.headers)
        self.kb = (await k.json())["id"]
        return self

    async def session(self, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        r = await http.post(
            f"{self.base}/api/tutors/{self.tutor}/sessions",
            json={"student_id": self.student},
            headers=self.headers,
        )
        return r.status, await r.json()


async def probe(http: aiohttp.ClientSession, victim: Org) -> dict[str, float | None]:
    out: dict[str, float | None] = {"login": None, "start": None, "first_token": None}
    t = time.monotonic()
    r = await http.post(
        victim.base + "/api/auth/login",
        json={"email": victim.email, "password": PASSWORD},
        headers=VICTIM_ADDRESS,
    )
    if r.status == 200:
        out["login"] = time.monotonic() - t
    t = time.monotonic()
    status, session = await victim.session(http)
    if status != 201:
        return out
    out["start"] = time.monotonic() - t
    async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
        await ws.receive_json(timeout=60)
        t = time.monotonic()
        await ws.send_json({"type": "text", "content": "What is 2 plus 2?"})
        while True:
            msg = await ws.receive(timeout=120)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            kind = msg.json()["type"]
            if kind == "text_stream" and out["first_token"] is None:
                out["first_token"] = time.monotonic() - t
            if kind in ("response_done", "interrupted"):
                break
    await http.delete(f"{victim.base}/api/sessions/{session['session_id']}", headers=victim.headers)
    return out


Attack = Callable[[aiohttp.ClientSession, Org, Counter[str], asyncio.Event], Awaitable[None]]


async def upload_loop(
    http: aiohttp.ClientSession,
    org: Org,
    answers: Counter[str],
    stop: asyncio.Event,
    name: str,
    data: bytes,
) -> None:
    n = 0
    while not stop.is_set():
        form = aiohttp.FormData()
        form.add_field("file", data, filename=f"{n}-{name}")
        r = await http.post(
            f"{org.base}/api/kbs/{org.kb}/documents", data=form, headers=org.headers
        )
        answers[str(r.status)] += 1
        n += 1
        await asyncio.sleep(0.2)


async def regex(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    await upload_loop(http, org, answers, stop, "notes.md", b"# a" + b" " * 20_000 + b"x\n")


async def tag_soup(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    await upload_loop(http, org, answers, stop, "page.html", b"<a " * 10_000)


async def audio_bomb(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    bomb = base64.b64encode(silent_flac(1200, 16000, declare_length=False)).decode()
    status, session = await org.session(http)
    if status != 201:
        answers[f"session {status}"] += 1
        return
    async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
        while not stop.is_set():
            await ws.send_json({"type": "audio", "data": bomb})
            msg = await ws.receive(timeout=30)
            if msg.type != aiohttp.WSMsgType.TEXT:
                answers[f"closed {msg.type.name}"] += 1
                return
            event = msg.json()
            answers[event.get("code") or event["type"]] += 1
            await asyncio.sleep(0.1)


async def history_flood(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    status, session = await org.session(http)
    if status != 201:
        answers[f"session {status}"] += 1
        return
    async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
        n = 0
        while not stop.is_set():
            await ws.send_json({"type": "text", "content": f"{n} " + "x" * 3990})
            n += 1
            while True:
                msg = await ws.receive(timeout=120)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    answers[f"closed {msg.type.name}"] += 1
                    return
                event = msg.json()
                if event["type"] == "error":
                    answers[event["code"]] += 1
                if event["type"] in ("response_done", "interrupted"):
                    answers["turns"] += event["type"] == "response_done"
                    break


async def registrations(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    async def one(n: int) -> None:
        r = await http.post(
            org.base + "/api/auth/register",
            json={"email": f"flood{n}-{secrets.token_hex(3)}@x.example", "password": PASSWORD},
        )
        answers[str(r.status)] += 1

    await asyncio.gather(*(one(n) for n in range(200)))
    await stop.wait()


async def idle_sockets(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    port = int(org.base.rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        for _ in range(1100):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            except OSError as e:
                answers[type(e).__name__] += 1
                s.close()
                continue
            held.append(s)
        answers["opened"] = len(held)
        await stop.wait()
        closed = 0
        for s in held:
            try:
                if s.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        answers["closed by server"] = closed
    finally:
        for s in held:
            s.close()


async def lockout(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    victim = org.victim
    n = 0
    last_new_browser = 0.0
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as stranger:
        while not stop.is_set():
            n += 1
            r = await stranger.post(
                victim.base + "/api/auth/login",
                json={"email": victim.email, "password": f"guess {n}"},
                headers={"X-Forwarded-For": f"203.0.{n // 250 % 250}.{n % 250 + 1}"},
            )
            answers[str(r.status)] += 1
            if time.monotonic() - last_new_browser > 1:
                last_new_browser = time.monotonic()
                r = await stranger.post(
                    victim.base + "/api/auth/login",
                    json={"email": victim.email, "password": PASSWORD},
                    headers=VICTIM_ADDRESS,
                )
                answers[f"new browser {r.status}"] += 1
            await asyncio.sleep(0.05)


async def slot_grab(
    http: aiohttp.ClientSession, org: Org, answers: Counter[str], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        status, _ = await org.session(http)
        answers[str(status)] += 1
        await asyncio.sleep(0.05)


ATTACKS: dict[str, Attack] = {
    "regex": regex,
    "audio_bomb": audio_bomb,
    "tag_soup": tag_soup,
    "history_flood": history_flood,
    "registrations": registrations,
    "idle_sockets": idle_sockets,
    "slot_grab": slot_grab,
    "lockout": lockout,
}


async def phase(
    server: Server, victim: Org, attacker: Org, attack: Attack | None, seconds: float
) -> dict[str, Any]:
    # A fresh client per phase: the attack's connections are its own.
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector) as attacking,
        aiohttp.ClientSession(cookie_jar=victim.jar) as http,
    ):
        answers: Counter[str] = Counter()
        stop = asyncio.Event()
        task = asyncio.create_task(attack(attacking, attacker, answers, stop)) if attack else None
        await asyncio.sleep(0.5 if attack else 0)
        samples: list[dict[str, float | None]] = []
        peak = tree_rss_mib(server)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            samples.append(await probe(http, victim))
            peak = max(peak, tree_rss_mib(server))
        stop.set()
        if task is not None:
            try:
                async with asyncio.timeout(60):
                    await task
            except (TimeoutError, aiohttp.ClientError) as e:
                answers[f"attack ended: {type(e).__name__}"] += 1
                task.cancel()

    def p50(key: str) -> float | None:
        values = [s[key] for s in samples if s[key] is not None]
        return statistics.median(values) * 1000 if values else None

    failed = sum(1 for s in samples if None in s.values())
    return {
        "login": p50("login"),
        "start": p50("start"),
        "first_token": p50("first_token"),
        "probes": len(samples),
        "failed": failed,
        "rss": peak,
        "answers": dict(answers),
    }


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "n/a"
    return f"{fmt(value)} ({value / base:.1f}x)"


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tutorsrv-abuse-"))
    port = free_port()
    server = launch_engine(
        workdir,
        port,
        secrets.token_urlsafe(24),
        {
            "TUTORSRV_TTS_ENABLED": "false",
            "TUTORSRV_LLM_MAX_TOKENS": "24",
            "TUTORSRV_LLM_TEMPERATURE": "0",
            "TUTORSRV_LLM_MODEL": args.model,
            "TUTORSRV_ENGINE_MAX_SESSIONS": "10",
            # Victim and attacker share 127.0.0.1 here, and the victim probes far more often
            # than a person: the session budgets are lifted so that they measure the server,
            # not the rate limits. Login budgets stay (only failures count per account, and
            # the victim says it comes from an address of its own); so do registrations'.
            "TUTORSRV_SERVER_TRUSTED_PROXIES": "127.0.0.1",
            "TUTORSRV_SERVER_SESSION_RATE_PER_MINUTE": "100000",
            "TUTORSRV_SERVER_SESSION_RATE_PER_IP_PER_MINUTE": "100000",
        },
        role="all",
    )
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, server, 300)
            victim = await Org(server.base).set_up(http)
            attacker = await Org(server.base).set_up(http)
            attacker.victim = victim
        print(
            f"# machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        print(f"# load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"# {args.seconds:g} s per phase; victim probes: login, session start, first token")
        print(f"# language model: {args.model or 'the default (qwen2.5-1.5b)'}")
        print()
        base = await phase(server, victim, attacker, None, args.seconds)
        print(
            "| attack | victim login p50 ms | session start p50 ms | first token p50 ms "
            "| probes (failed) | peak RSS MiB | attacker got |"
        )
        print("|---|---:|---:|---:|---:|---:|---|")
        print(
            f"| none (baseline) | {fmt(base['login'])} | {fmt(base['start'])} "
            f"| {fmt(base['first_token'])} | {base['probes']} ({base['failed']}) "
            f"| {base['rss']:.0f} | |",
            flush=True,
        )
        for name in args.attacks.split(","):
            r = await phase(server, victim, attacker, ATTACKS[name], args.seconds)
            got = ", ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items()))
            print(
                f"| {name} | {ratio(r['login'], base['login'])} "
                f"| {ratio(r['start'], base['start'])} "
                f"| {ratio(r['first_token'], base['first_token'])} "
                f"| {r['probes']} ({r['failed']}) | {r['rss']:.0f} "
                f"(+{r['rss'] - base['rss']:.0f}) | {got} |",
                flush=True,
            )
        print(f"\n# load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"# server alive at the end: {server.alive()}")
    finally:
        stop_server(server)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=12.0, help="length of each phase")
    p.add_argument("--model", default="", help="llm.model (default: the default model)")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
