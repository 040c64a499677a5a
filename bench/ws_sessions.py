"""Engine WebSocket load: memory per idle session and first-token latency under concurrency.

What it measures
----------------
It starts ``tutorsrv run --role engine`` as a subprocess on 127.0.0.1 (a free port, a random
service key, the ``scripted`` LLM backend with zero delay and a fixed number of tokens per
reply), waits for ``/health``, and then for each size N (1, 100, 1000 by default):

1. measures the server's RSS (psutil) with no sessions;
2. creates N sessions with ``POST /v1/sessions`` and opens N WebSockets concurrently, each
   reading its ``session`` message first;
3. measures RSS again with the N sessions connected and idle -> RSS per idle session;
4. has all N clients send one ``{"type":"text"}`` turn at once and read until
   ``response_done``, recording per client the time from its send to its first
   ``text_stream`` (p50/p95), the tokens delivered over the wall time of the whole burst
   (tokens/s), and every error (timeouts, ``error``/``interrupted`` frames, early closes,
   missing tokens);
5. closes the sockets, deletes the sessions, checks that the engine is back to 0 sessions and
   records the RSS left over.

The scripted backend isolates the server's own cost (sessions, tokens, JSON framing, the
event loop): there is no model time in these numbers. Client and server run on the same
machine and share its CPU cores, so the client's work is inside the latency and throughput
figures; the printed header says so.

Run it::

    .venv/bin/python bench/ws_sessions.py
    .venv/bin/python bench/ws_sessions.py --sizes 1,100,1000,2000 --tokens 50

The server is always stopped at the end (terminate, then kill), and every step is bounded by
a timeout, so the script cannot hang.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil
from common import (
    Server,
    cpu_model,
    fmt,
    free_port,
    launch_engine,
    percentile,
    stop_server,
    wait_healthy,
)

from tutorsrv.engine.protocol import SUBPROTOCOL

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Machine and server process
# --------------------------------------------------------------------------------------------


def machine_header() -> list[str]:
    cpu = cpu_model()
    mem = psutil.virtual_memory().total / 2**30
    return [
        f"- CPU: {cpu}",
        f"- cores: {os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        f"- RAM: {mem:.1f} GiB",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- OS: {platform.platform()}",
        f"- aiohttp {aiohttp.__version__}, psutil {psutil.__version__}",
    ]


def start_server(args: argparse.Namespace, workdir: Path) -> Server:
    settings = {
        "TUTORSRV_ENGINE_MAX_SESSIONS": str(max(args.sizes) + 100),
        "TUTORSRV_LLM_BACKEND": "scripted",
        "TUTORSRV_LLM_SCRIPTED_TOKEN_COUNT": str(args.tokens),
        "TUTORSRV_LLM_SCRIPTED_TOKEN_DELAY_MS": "0",
        # Text sessions: the speech models would only add their load time and audio frames.
        "TUTORSRV_ASR_ENABLED": "false",
        "TUTORSRV_TTS_ENABLED": "false",
    }
    return launch_engine(
        workdir, free_port(), secrets.token_hex(24), settings, args.server_log_level
    )


# --------------------------------------------------------------------------------------------
# One size
# --------------------------------------------------------------------------------------------


@dataclass
class Client:
    session_id: str
    url: str
    ws: aiohttp.ClientWebSocketResponse | None = None
    first_token_ms: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class Result:
    n: int
    p50_ms: float | None
    p95_ms: float | None
    tokens_per_s: float
    rss_per_idle_kib: float
    rss_loaded_mib: float
    errors: int
    rss_before_mib: float
    rss_idle_mib: float
    rss_after_cleanup_mib: float
    sessions_left: int
    create_s: float
    connect_s: float
    turn_wall_s: float
    tokens: int
    error_kinds: dict[str, int]
    server_ttft_p50_ms: float | None


async def bounded_gather(
    limit: int, factories: list[Callable[[], Awaitable[T]]]
) -> list[T | BaseException]:
    sem = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await factory()

    return list(
        await asyncio.gather(*(one(f) for f in factories), return_exceptions=True)  # type: ignore[arg-type]
    )


def kind_of(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    return type(exc).__name__ + (f": {exc}" if str(exc) else "")


async def settle_rss(server: Server, seconds: float = 1.0) -> int:
    """RSS after the server has had a moment to go quiet (the last of a burst is processed)."""
    await asyncio.sleep(seconds)
    return server.rss()


async def run_size(
    http: aiohttp.ClientSession, server: Server, n: int, args: argparse.Namespace
) -> Result:
    errors: dict[str, int] = {}

    def count(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    rss_before = await settle_rss(server)

    # 1. Sessions over HTTP.
    async def create(i: int) -> Client:
        body = {"tutor_id": "bench-tutor", "student_id": f"student-{i}"}
        async with http.post(
            server.base + "/v1/sessions",
            json=body,
            headers=server.headers,
            timeout=aiohttp.ClientTimeout(total=args.step_timeout),
        ) as r:
            data = await r.json()
            if r.status != 201:
                raise RuntimeError(f"POST /v1/sessions -> {r.status} {data.get('error')}")
            return Client(session_id=data["session_id"], url=data["engine_url"])

    t0 = time.perf_counter()
    created = await bounded_gather(args.concurrency, [lambda i=i: create(i) for i in range(n)])
    create_s = time.perf_counter() - t0
    clients: list[Client] = []
    for item in created:
        if isinstance(item, BaseException):
            count("create: " + kind_of(item))
        else:
            clients.append(item)

    try:
        # 2. N sockets, each first reads its `session` message.
        async def connect(client: Client) -> None:
            ws = await http.ws_connect(
                client.url,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
                max_msg_size=0,
                heartbeat=None,
                protocols=[SUBPROTOCOL],
            )
            client.ws = ws
            msg = await ws.receive_json(timeout=args.step_timeout)
            if msg.get("type") != "session" or msg.get("session_id") != client.session_id:
                raise RuntimeError(f"expected a session message, got {msg.get('type')!r}")

        t0 = time.perf_counter()
        connected = await bounded_gather(
            args.concurrency, [lambda c=c: connect(c) for c in clients]
        )
        connect_s = time.perf_counter() - t0
        for client, item in zip(clients, connected, strict=True):
            if isinstance(item, BaseException):
                client.error = "connect: " + kind_of(item)
                count(client.error)
        live = [c for c in clients if c.error is None and c.ws is not None]

        rss_idle = await settle_rss(server, 2.0)

        # 3. One turn from every client at once.
        server_ttft: list[float] = []
        start = asyncio.Event()

        async def turn(client: Client) -> None:
            ws = client.ws
            assert ws is not None
            await start.wait()
            sent = time.perf_counter()
            await ws.send_json({"type": "text", "content": "What is 3/4 + 1/8?"})
            response_id: str | None = None
            while True:
                msg = await ws.receive(timeout=args.step_timeout)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"socket ended before response_done ({msg.type.name})")
                data = msg.json()
                kind = data.get("type")
                if kind == "text_stream":
                    if client.first_token_ms is None:
                        client.first_token_ms = (time.perf_counter() - sent) * 1000.0
                        response_id = data.get("response_id")
                    client.tokens += 1
                elif kind == "response_done":
                    if data.get("response_id") != response_id:
                        raise RuntimeError("response_done for another response")
                    ttft = (data.get("metrics") or {}).get("ttft_ms")
                    if isinstance(ttft, int | float):
                        server_ttft.append(float(ttft))
                    break
                elif kind in ("error", "interrupted"):
                    raise RuntimeError(f"{kind}: {data.get('code') or data.get('reason')}")
            if client.tokens != args.tokens:
                raise RuntimeError(f"expected {args.tokens} tokens, got {client.tokens}")

        tasks = [asyncio.create_task(turn(c)) for c in live]
        await asyncio.sleep(0.05)  # every task is parked on `start`
        t0 = time.perf_counter()
        start.set()
        try:
            async with asyncio.timeout(args.step_timeout * 2):
                results = await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        turn_wall = time.perf_counter() - t0
        for client, item in zip(live, results, strict=True):
            if isinstance(item, BaseException):
                client.error = "turn: " + kind_of(item)
                count(client.error)

        rss_loaded = await settle_rss(server, 0.5)
    finally:
        # 4. Close sockets, delete sessions (always, so the next size starts clean).
        async def close(client: Client) -> None:
            if client.ws is not None and not client.ws.closed:
                await asyncio.wait_for(client.ws.close(), timeout=10)

        closed = await bounded_gather(args.concurrency, [lambda c=c: close(c) for c in clients])
        for item in closed:
            if isinstance(item, BaseException):
                count("close: " + kind_of(item))

        async def delete(client: Client) -> None:
            async with http.delete(
                f"{server.base}/v1/sessions/{client.session_id}",
                headers=server.headers,
                timeout=aiohttp.ClientTimeout(total=args.step_timeout),
            ) as r:
                if r.status != 204:
                    raise RuntimeError(f"DELETE -> {r.status}")

        deleted = await bounded_gather(args.concurrency, [lambda c=c: delete(c) for c in clients])
        for item in deleted:
            if isinstance(item, BaseException):
                count("delete: " + kind_of(item))

    health = await wait_healthy(http, server, args.step_timeout)
    rss_after = await settle_rss(server)

    latencies = [c.first_token_ms for c in live if c.first_token_ms is not None]
    tokens = sum(c.tokens for c in live)
    return Result(
        n=n,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        tokens_per_s=tokens / turn_wall if turn_wall > 0 else 0.0,
        rss_per_idle_kib=(rss_idle - rss_before) / max(1, len(live)) / 1024,
        rss_loaded_mib=rss_loaded / 2**20,
        errors=sum(errors.values()),
        rss_before_mib=rss_before / 2**20,
        rss_idle_mib=rss_idle / 2**20,
        rss_after_cleanup_mib=rss_after / 2**20,
        sessions_left=int(health.get("sessions", -1)),
        create_s=create_s,
        connect_s=connect_s,
        turn_wall_s=turn_wall,
        tokens=tokens,
        error_kinds=errors,
        server_ttft_p50_ms=statistics.median(server_ttft) if server_ttft else None,
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_results(results: list[Result]) -> None:
    print(
        "| N | p50 first token ms | p95 first token ms | tokens/s delivered "
        "| RSS per idle session KiB | server RSS MiB | errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.n} | {fmt(r.p50_ms)} | {fmt(r.p95_ms)} | {fmt(r.tokens_per_s, 0)} "
            f"| {fmt(r.rss_per_idle_kib)} | {fmt(r.rss_loaded_mib)} | {r.errors} |"
        )
    print()
    print("Details:")
    print()
    print(
        "| N | create s | connect s | burst wall s | tokens | server ttft p50 ms "
        "| RSS before / idle / after turn / after cleanup MiB | sessions left |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        print(
            f"| {r.n} | {r.create_s:.2f} | {r.connect_s:.2f} | {r.turn_wall_s:.2f} "
            f"| {r.tokens} | {fmt(r.server_ttft_p50_ms)} "
            f"| {r.rss_before_mib:.1f} / {r.rss_idle_mib:.1f} / {r.rss_loaded_mib:.1f} "
            f"/ {r.rss_after_cleanup_mib:.1f} | {r.sessions_left} |"
        )
    for r in results:
        for kind, n in sorted(r.error_kinds.items()):
            print(f"- N={r.n}: {n} x {kind}")


def summarize_log(path: Path, limit: int = 8) -> None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    bad = [
        line
        for line in lines
        if "level=error" in line
        or "level=warning" in line
        or "level=critical" in line
        or "Traceback" in line
    ]
    print()
    print(f"Server log: {len(lines)} lines, {len(bad)} warnings/errors.")
    for line in bad[:limit]:
        print("    " + (line if len(line) <= 400 else line[:400] + " …"))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


async def bench(server: Server, args: argparse.Namespace) -> list[Result]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        health = await wait_healthy(http, server, args.start_timeout)
        print(
            f"Server: pid {server.proc.pid}, {server.base}, backend {health['llm']['backend']}, "
            f"max_sessions {health['max_sessions']}, RSS at start {server.rss() / 2**20:.1f} MiB"
        )
        print()
        results: list[Result] = []
        for n in args.sizes:
            if not server.alive():
                raise RuntimeError(f"the server died (exit {server.proc.returncode})")
            print(f"... N={n}", file=sys.stderr, flush=True)
            async with asyncio.timeout(args.size_timeout):
                results.append(await run_size(http, server, n, args))
        return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--sizes",
        default="1,100,1000",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        help="comma-separated session counts (default 1,100,1000)",
    )
    p.add_argument("--tokens", type=int, default=50, help="tokens per scripted reply")
    p.add_argument("--concurrency", type=int, default=100, help="parallel HTTP requests / connects")
    p.add_argument("--server-log-level", default="info", choices=["debug", "info", "warning"])
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--step-timeout", type=float, default=60.0, help="per request / per read")
    p.add_argument("--size-timeout", type=float, default=300.0, help="whole size, all steps")
    args = p.parse_args(argv)
    if not args.sizes or min(args.sizes) < 1 or args.tokens < 1:
        p.error("--sizes and --tokens must be positive")
    # Ascending: memory freed by a bigger size is reused by a smaller one, which would then
    # show (almost) no growth per session.
    args.sizes = sorted(set(args.sizes))
    return args


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the ``finally`` that stops the server still runs."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Progress goes to stderr; keep the two streams in order when both are redirected.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    print("# tutorsrv engine: WebSocket sessions benchmark")
    print()
    print("Machine:")
    print()
    for line in machine_header():
        print(line)
    print()
    print(
        f"Client and server run on this same machine and share its {os.cpu_count()} cores: "
        "the client's own CPU work (JSON, framing, one event loop for all N sockets) is "
        "included in the latencies and throughput below."
    )
    print(
        f"Backend: scripted, {args.tokens} tokens per reply, zero delay (no model time; this "
        f"measures the server itself). Server log level: {args.server_log_level}."
    )
    print(
        "first token ms: per client, send of the text turn -> first text_stream, all N "
        "clients sending at once. tokens/s: text_stream frames received by all clients / "
        "wall time of the burst. RSS per idle session: (RSS with N connected idle sessions - "
        "RSS before) / N, sizes in ascending order. server RSS: after the burst, N sessions "
        "still connected."
    )
    print()
    server: Server | None = None
    status: int | None = None
    code = 1
    with tempfile.TemporaryDirectory(prefix="tutorsrv-bench-") as tmp, sigterm_as_exit():
        try:
            server = start_server(args, Path(tmp))
            results = asyncio.run(bench(server, args))
            print_results(results)
            code = 0 if all(r.errors == 0 and r.sessions_left == 0 for r in results) else 1
        except (Exception, KeyboardInterrupt) as e:
            print(f"benchmark failed: {kind_of(e)}", file=sys.stderr)
        finally:
            status = stop_server(server)
            if server is not None:
                summarize_log(server.log_path)
                print(f"Server stopped (exit status {status}).")
    return code


if __name__ == "__main__":
    sys.exit(main())
