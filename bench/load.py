"""Engine load: N concurrent students taking text turns, then a session leak check.

What it measures
----------------
It starts ``tutorsrv run --role engine`` as a subprocess on 127.0.0.1 (the same way as
``bench/ws_sessions.py``: a free port, a random service key, the ``scripted`` backend with zero
delay and a fixed number of tokens per reply) and then:

1. for each N (100, 500, 1000 by default): N students each create a session
   (``POST /v1/sessions``), connect its WebSocket, and take ``--turns`` text turns one after
   another, with a random think time of up to ``--think`` seconds before each. Reported:
   sessions held (``/health`` while all N are connected), p50/p99 first-token latency (send of
   the turn -> first ``text_stream``, client side), errors (failed requests, ``error`` or
   ``interrupted`` frames, early closes, missing tokens, timeouts), the server's CPU seconds
   over the phase (user + system, psutil) and its RSS at the end of the phase; then every
   socket is closed and every session deleted;
2. leak check: ``--leak-sessions`` (1000) full session lives (create, connect, one turn,
   close, ``DELETE``), ``--concurrency`` at a time, after a warm-up of 100. Before and after:
   RSS, the registry size (``/health`` sessions and ``GET /v1/sessions`` count), and the
   server's open file descriptors and TCP connections (psutil). The number of asyncio tasks
   inside the server is not visible from outside without adding an endpoint, which this
   benchmark does not do; open fds and connections stand in for sockets and their tasks.

The scripted backend isolates the server's own cost: there is no model time in these
numbers. Client and server share the machine's cores, so the client's own work is inside the
latencies.

Run it::

    .venv/bin/python bench/load.py
    .venv/bin/python bench/load.py --sizes 100,500 --turns 5 --leak-sessions 500

Every step is bounded by a timeout, and the server is stopped by its PID (terminate, then
kill) in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tutorsrv.engine.protocol import SUBPROTOCOL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, fmt, percentile, stop_server, wait_healthy
from ws_sessions import (
    bounded_gather,
    kind_of,
    machine_header,
    settle_rss,
    sigterm_as_exit,
    start_server,
)

# --------------------------------------------------------------------------------------------
# One student
# --------------------------------------------------------------------------------------------


@dataclass
class Student:
    index: int
    session_id: str | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    first_token_ms: list[float] = field(default_factory=list)
    error: str | None = None


async def create_session(http: aiohttp.ClientSession, server: Server, student: Student) -> str:
    body = {"tutor_id": "load-tutor", "student_id": f"student-{student.index}"}
    async with http.post(server.base + "/v1/sessions", json=body, headers=server.headers) as r:
        data = await r.json()
        if r.status != 201:
            raise RuntimeError(f"POST /v1/sessions -> {r.status} {data.get('error')}")
        student.session_id = data["session_id"]
        return str(data["engine_url"])


async def connect(
    http: aiohttp.ClientSession, url: str, student: Student, wait: float
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(
        url,
        timeout=aiohttp.ClientWSTimeout(ws_close=5),
        max_msg_size=0,
        heartbeat=None,
        protocols=[SUBPROTOCOL],
    )
    student.ws = ws
    msg = await ws.receive_json(timeout=wait)
    if msg.get("type") != "session":
        raise RuntimeError(f"expected a session message, got {msg.get('type')!r}")
    return ws


async def take_turn(ws: aiohttp.ClientWebSocketResponse, tokens: int, wait: float) -> float | None:
    """One text turn; returns the first-token latency in ms."""
    sent = time.perf_counter()
    await ws.send_json({"type": "text", "content": "What is 3/4 + 1/8?"})
    first: float | None = None
    received = 0
    while True:
        msg = await ws.receive(timeout=wait)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"socket ended before response_done ({msg.type.name})")
        data = msg.json()
        kind = data.get("type")
        if kind == "text_stream":
            if first is None:
                first = (time.perf_counter() - sent) * 1000.0
            received += 1
        elif kind == "response_done":
            break
        elif kind in ("error", "interrupted"):
            raise RuntimeError(f"{kind}: {data.get('code') or data.get('reason')}")
    if received != tokens:
        raise RuntimeError(f"expected {tokens} tokens, got {received}")
    return first


async def end_student(http: aiohttp.ClientSession, server: Server, student: Student) -> None:
    if student.ws is not None and not student.ws.closed:
        await asyncio.wait_for(student.ws.close(), timeout=10)
    if student.session_id is not None:
        async with http.delete(
            f"{server.base}/v1/sessions/{student.session_id}", headers=server.headers
        ) as r:
            if r.status != 204:
                raise RuntimeError(f"DELETE -> {r.status}")


# --------------------------------------------------------------------------------------------
# Load at one size
# --------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    n: int
    held: int
    turns: int
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]
    cpu_s: float
    wall_s: float
    rss_mib: float
    sessions_left: int


def server_cpu(server: Server) -> float:
    times = server.ps.cpu_times()
    return float(times.user + times.system)


async def run_load(
    http: aiohttp.ClientSession, server: Server, n: int, args: argparse.Namespace
) -> LoadResult:
    errors: dict[str, int] = {}

    def count(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    students = [Student(i) for i in range(n)]
    all_connected = asyncio.Event()
    connected = 0
    held = 0
    rng = random.Random(n)
    cpu0, t0 = server_cpu(server), time.perf_counter()
    gate = asyncio.Semaphore(args.concurrency)  # sessions are opened this many at a time

    async def student_life(student: Student) -> None:
        nonlocal connected
        try:
            async with gate:
                url = await create_session(http, server, student)
                ws = await connect(http, url, student, args.step_timeout)
        finally:
            connected += 1
            if connected == n:
                all_connected.set()
        await all_connected.wait()  # every student is in before the first turn
        for _ in range(args.turns):
            await asyncio.sleep(rng.uniform(0, args.think))
            first = await take_turn(ws, args.tokens, args.step_timeout)
            if first is not None:
                student.first_token_ms.append(first)

    tasks = [asyncio.create_task(student_life(s)) for s in students]

    async def watch_held() -> None:
        nonlocal held
        await all_connected.wait()
        health = await wait_healthy(http, server, args.step_timeout)
        held = int(health.get("sessions", -1))

    watcher = asyncio.create_task(watch_held())
    try:
        async with asyncio.timeout(args.size_timeout):
            results = await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        count("size timeout")
    wall = time.perf_counter() - t0
    cpu = server_cpu(server) - cpu0
    rss = server.rss()
    all_connected.set()
    try:
        await asyncio.wait_for(watcher, args.step_timeout)
    except Exception as e:
        count("health: " + kind_of(e))
    for student, item in zip(students, results, strict=True):
        if isinstance(item, BaseException):
            student.error = kind_of(item)
            count(student.error)

    ended = await bounded_gather(
        args.concurrency, [lambda s=s: end_student(http, server, s) for s in students]
    )
    for item in ended:
        if isinstance(item, BaseException):
            count("cleanup: " + kind_of(item))
    health = await wait_healthy(http, server, args.step_timeout)
    latencies = [ms for s in students for ms in s.first_token_ms]
    return LoadResult(
        n=n,
        held=held,
        turns=len(latencies),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        errors=errors,
        cpu_s=cpu,
        wall_s=wall,
        rss_mib=rss / 2**20,
        sessions_left=int(health.get("sessions", -1)),
    )


# --------------------------------------------------------------------------------------------
# Leak check
# --------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    rss_mib: float
    sessions: int
    listed: int
    fds: int
    connections: int


@dataclass
class LeakResult:
    cycles: int
    errors: dict[str, int]
    wall_s: float
    before: Snapshot
    after: Snapshot


async def snapshot(http: aiohttp.ClientSession, server: Server) -> Snapshot:
    rss = await settle_rss(server, 2.0)
    health = await wait_healthy(http, server, 30)
    async with http.get(server.base + "/v1/sessions", headers=server.headers) as r:
        listed = int((await r.json())["count"])
    try:
        connections = len(server.ps.net_connections(kind="tcp"))
    except Exception:
        connections = -1
    return Snapshot(rss / 2**20, int(health["sessions"]), listed, server.ps.num_fds(), connections)


async def session_life(
    http: aiohttp.ClientSession, server: Server, index: int, args: argparse.Namespace
) -> None:
    student = Student(index)
    try:
        url = await create_session(http, server, student)
        ws = await connect(http, url, student, args.step_timeout)
        await take_turn(ws, args.tokens, args.step_timeout)
    finally:
        await end_student(http, server, student)


async def run_leak_check(
    http: aiohttp.ClientSession, server: Server, args: argparse.Namespace
) -> LeakResult:
    # Warm-up: first-use allocations (caches, pools, arenas) are not a leak.
    await bounded_gather(
        args.concurrency, [lambda i=i: session_life(http, server, -i - 1, args) for i in range(100)]
    )
    before = await snapshot(http, server)
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    async with asyncio.timeout(args.size_timeout):
        results = await bounded_gather(
            args.concurrency,
            [lambda i=i: session_life(http, server, i, args) for i in range(args.leak_sessions)],
        )
    wall = time.perf_counter() - t0
    for item in results:
        if isinstance(item, BaseException):
            kind = kind_of(item)
            errors[kind] = errors.get(kind, 0) + 1
    after = await snapshot(http, server)
    return LeakResult(args.leak_sessions, errors, wall, before, after)


# --------------------------------------------------------------------------------------------
# Report and main
# --------------------------------------------------------------------------------------------


def print_load(results: list[LoadResult]) -> None:
    print(
        "| N students | sessions held | turns | p50 first token ms | p99 first token ms "
        "| errors | server CPU s | wall s | server RSS MiB | sessions left |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.n} | {r.held} | {r.turns} | {fmt(r.p50_ms)} | {fmt(r.p99_ms)} "
            f"| {sum(r.errors.values())} | {r.cpu_s:.1f} | {r.wall_s:.1f} | {r.rss_mib:.1f} "
            f"| {r.sessions_left} |"
        )
    for r in results:
        for kind, n in sorted(r.errors.items()):
            print(f"- N={r.n}: {n} x {kind}")


def print_leak(r: LeakResult) -> None:
    print()
    print(
        f"Leak check: {r.cycles} sessions opened, one turn each, closed and deleted "
        f"in {r.wall_s:.1f} s; {sum(r.errors.values())} errors."
    )
    print()
    print("| | RSS MiB | /health sessions | GET /v1/sessions count | open fds | TCP connections |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in (("before", r.before), ("after", r.after)):
        print(
            f"| {name} | {s.rss_mib:.1f} | {s.sessions} | {s.listed} | {s.fds} | {s.connections} |"
        )
    print(
        f"| change | {r.after.rss_mib - r.before.rss_mib:+.1f} "
        f"| {r.after.sessions - r.before.sessions:+d} | {r.after.listed - r.before.listed:+d} "
        f"| {r.after.fds - r.before.fds:+d} | {r.after.connections - r.before.connections:+d} |"
    )
    print(
        "Server task count: not observable without a new endpoint (none added); open fds and "
        "TCP connections back at baseline stand in for per-socket tasks."
    )
    for kind, n in sorted(r.errors.items()):
        print(f"- leak check: {n} x {kind}")


async def bench(server: Server, args: argparse.Namespace) -> tuple[list[LoadResult], LeakResult]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=args.step_timeout)
    ) as http:
        health = await wait_healthy(http, server, args.start_timeout)
        print(
            f"Server: pid {server.proc.pid}, {server.base}, backend {health['llm']['backend']}, "
            f"max_sessions {health['max_sessions']}, RSS at start {server.rss() / 2**20:.1f} MiB"
        )
        print()
        results: list[LoadResult] = []
        for n in args.sizes:
            if not server.alive():
                raise RuntimeError(f"the server died (exit {server.proc.returncode})")
            print(f"... N={n}", file=sys.stderr, flush=True)
            results.append(await run_load(http, server, n, args))
        print("... leak check", file=sys.stderr, flush=True)
        leak = await run_leak_check(http, server, args)
        return results, leak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--sizes",
        default="100,500,1000",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="comma-separated numbers of concurrent students (default 100,500,1000)",
    )
    p.add_argument("--turns", type=int, default=3, help="text turns per student")
    p.add_argument("--think", type=float, default=1.0, help="max think time before a turn, s")
    p.add_argument("--tokens", type=int, default=20, help="tokens per scripted reply")
    p.add_argument("--leak-sessions", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=100, help="parallel session opens")
    p.add_argument("--server-log-level", default="warning", choices=["debug", "info", "warning"])
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--step-timeout", type=float, default=60.0, help="per request / per read")
    p.add_argument("--size-timeout", type=float, default=300.0, help="one size, all students")
    args = p.parse_args(argv)
    if not args.sizes or min(args.sizes) < 1 or args.tokens < 1 or args.turns < 1:
        p.error("--sizes, --tokens and --turns must be positive")
    args.sizes = sorted(set(args.sizes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    print("# tutorsrv engine: load and leak check")
    print()
    for line in machine_header():
        print(line)
    print()
    print(
        f"Client and server share this machine's {os.cpu_count()} cores. Backend: scripted, "
        f"{args.tokens} tokens per reply, zero delay. {args.turns} turns per student, think "
        f"time 0-{args.think:g} s before each; sessions opened {args.concurrency} at a time. "
        f"Server log level: {args.server_log_level}."
    )
    print()
    server: Server | None = None
    code = 1
    with tempfile.TemporaryDirectory(prefix="tutorsrv-load-") as tmp, sigterm_as_exit():
        try:
            server = start_server(args, Path(tmp))
            results, leak = asyncio.run(bench(server, args))
            print_load(results)
            print_leak(leak)
            clean = all(not r.errors and r.sessions_left == 0 for r in results)
            code = 0 if clean and not leak.errors and leak.after.sessions == 0 else 1
        except (Exception, KeyboardInterrupt) as e:
            print(f"benchmark failed: {kind_of(e)}", file=sys.stderr)
        finally:
            status = stop_server(server)
            print(f"Server stopped (exit status {status}).")
    return code


if __name__ == "__main__":
    sys.exit(main())
