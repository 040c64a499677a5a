"""Nothing a student saw finished is lost: a real ``tutorsrv run --role all`` is killed with
SIGKILL at random points of a conversation (mid-reply, just after ``response_done``, just
after a question was sent) and restarted; the stored transcript then holds every turn whose
``response_done`` arrived, each once, and the words of questions cut off by a kill."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tutorsrv.engine.protocol import SUBPROTOCOL

from .processes import ServerProcess
from .test_split_deployment import open_session, transcript
from .web_helpers import call, set_up_tenant

pytestmark = pytest.mark.timeout(300)

TURNS = 100
KILLS = 5
# Each reply is 20 tokens, 4 ms apart: a kill "mid-reply" lands inside one.
SCRIPTED = {
    "TUTORSRV_LLM_BACKEND": "scripted",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_COUNT": "20",
    "TUTORSRV_LLM_SCRIPTED_TOKEN_DELAY_MS": "4",
    # The conversation goes on in new sessions after each kill; room for all of them.
    "TUTORSRV_ENGINE_MAX_SESSIONS_PER_STUDENT": "0",
}


async def _greeted(ws: aiohttp.ClientWebSocketResponse) -> None:
    assert (await ws.receive_json(timeout=10))["type"] == "session"
    while (await ws.receive_json(timeout=10))["type"] != "response_done":
        pass


async def _turn(
    ws: aiohttp.ClientWebSocketResponse, question: str, kill_at: str | None, server: ServerProcess
) -> str | None:
    """One question; returns the response id if its response_done arrived. ``kill_at``:
    where in the turn the server is killed (None: not in this turn)."""
    await ws.send_json({"type": "text", "content": question})
    if kill_at == "sent":
        server.kill()
        return None
    tokens = 0
    while True:
        message = await ws.receive_json(timeout=10)
        if message["type"] == "text_stream":
            tokens += 1
            if kill_at == "mid-reply" and tokens == 7:
                server.kill()
                return None
        if message["type"] == "response_done":
            if kill_at == "done":
                server.kill()  # the instant the student sees it finished
            return message["response_id"]


async def test_sigkill_at_random_points_loses_no_announced_turn(
    tmp_path: Path, database_url: str
) -> None:
    seed = int(os.environ.get("TEST_SEED", "18"))
    rng = random.Random(seed)
    kill_turns = sorted(rng.sample(range(5, TURNS - 5), KILLS))
    kill_kinds = {n: rng.choice(["sent", "mid-reply", "done"]) for n in kill_turns}
    server = ServerProcess("all", {"DATABASE_URL": database_url, **SCRIPTED}, tmp_path)
    announced: dict[str, str] = {}  # response id -> question
    asked: list[str] = []
    sessions: list[str] = []
    try:
        await server.start()
        async with aiohttp.ClientSession() as http:
            tenant = await set_up_tenant(http, server.base)
            turn = 0
            while turn < TURNS:
                status, session = await open_session(http, server.base, tenant)
                assert status == 201, session
                sessions.append(session["session_id"])
                killed = False
                async with http.ws_connect(session["engine_url"], protocols=[SUBPROTOCOL]) as ws:
                    await _greeted(ws)
                    while turn < TURNS and not killed:
                        question = f"question {turn}"
                        asked.append(question)
                        kill_at = kill_kinds.get(turn)
                        response_id = await _turn(ws, question, kill_at, server)
                        if response_id is not None:
                            announced[response_id] = question
                        turn += 1
                        killed = kill_at is not None
                if killed:
                    await server.start()  # same state folder: the same spool
            assert server.stop() == 0

        await server.start()  # the last run's clean stop, then a check that nothing is left
        async with aiohttp.ClientSession() as http:
            stored: list[dict[str, Any]] = []
            for session_id in sessions:
                stored += await transcript(http, server.base, tenant, session_id, 1)
            status, _ = await call(http, "GET", server.base + "/health")
            assert status == 200
    finally:
        server.kill()

    replies = [m for m in stored if m["role"] == "assistant"]
    questions = [m["content"] for m in stored if m["role"] == "user"]
    reply_ids = [m["response_id"] for m in replies]
    context = f"seed {seed}, kills {kill_kinds}"
    assert len(reply_ids) == len(set(reply_ids)), f"a turn stored twice ({context})"
    assert len(questions) == len(set(questions)), f"a question stored twice ({context})"
    missing = set(announced) - set(reply_ids)
    assert not missing, f"announced turns lost: {missing} ({context})"
    by_id = {m["response_id"]: m for m in replies}
    for response_id, question in announced.items():
        assert by_id[response_id]["content"], f"{response_id} stored empty ({context})"
        asked_with = [m for m in stored if m["role"] == "user"]
        assert any(
            m["response_id"] == response_id and m["content"] == question for m in asked_with
        ), f"{response_id}: its question is not stored with it ({context})"
    # A question cut off mid-reply by a kill is kept, with an empty, interrupted reply.
    for turn, kind in kill_kinds.items():
        if kind == "mid-reply":
            question = f"question {turn}"
            assert question in questions, f"{question} (killed mid-reply) lost ({context})"
            cut = next(
                m
                for m in stored
                if m["role"] == "assistant"
                and any(
                    q["response_id"] == m["response_id"] and q["content"] == question
                    for q in stored
                    if q["role"] == "user"
                )
            )
            assert cut["interrupted"] and cut["content"] == ""
            assert cut["metrics"] == {"unfinished": True}
    # Everything the students asked and were answered is there: nothing else is missing.
    answered = set(announced.values())
    assert answered <= set(questions)
    assert len(announced) >= TURNS - KILLS
