"""The model process's queue: forgets at once, turns fair between organisations, prefills
when idle, and a long prompt that makes way for another organisation's turn."""

from __future__ import annotations

import asyncio
import time

import pytest

from tutorsrv.engine.llm.base import GenerationStats
from tutorsrv.engine.llm.llamacpp import PROMPT_SLICE
from tutorsrv.engine.llm.model_process import LlamaCppProcessBackend
from tutorsrv.engine.llm.scheduling import Jobs


def generate(conversation: str, tenant: str | None = None, n: int = 0) -> dict:
    return {"op": "generate", "id": n, "conversation": conversation, "tenant": tenant}


def order(jobs: Jobs, count: int) -> list[str]:
    taken = []
    for _ in range(count):
        command = jobs.get()
        taken.append(f"{command['op']}:{command['conversation']}")
        jobs.finished()
    return taken


def test_turns_go_to_the_organisation_served_least_recently() -> None:
    jobs = Jobs()
    for i in range(3):
        jobs.put(generate(f"a{i}", tenant="school-a"))
    jobs.put(generate("b0", tenant="school-b"))
    jobs.put(generate("c0"))  # no tenant: a session counts as its own
    # school-a came first, then the two never served, then school-a's others.
    assert order(jobs, 5) == [
        "generate:a0",
        "generate:b0",
        "generate:c0",
        "generate:a1",
        "generate:a2",
    ]


def test_an_ended_session_leaves_nothing_behind_in_the_queue() -> None:
    jobs = Jobs()
    jobs.put(generate("lone"))  # no tenant: the session is its own key
    order(jobs, 1)
    assert "session:lone" in jobs._served
    jobs.put({"op": "forget", "conversation": "lone"})
    order(jobs, 1)
    assert jobs._served == {}


def test_forgets_first_and_prefills_only_when_idle() -> None:
    jobs = Jobs()
    jobs.put({"op": "prefill", "conversation": "p"})
    jobs.put(generate("x"))
    jobs.put({"op": "forget", "conversation": "gone"})
    assert order(jobs, 3) == ["forget:gone", "generate:x", "prefill:p"]


def test_a_sessions_own_prefill_runs_just_before_its_first_turn() -> None:
    jobs = Jobs()
    jobs.put({"op": "prefill", "conversation": "other"})
    jobs.put({"op": "prefill", "conversation": "s"})
    jobs.put(generate("s"))
    taken = [jobs.get()["conversation"]]
    jobs.prefill_done()
    taken += order(jobs, 2)
    assert taken == ["s", "generate:s", "prefill:other"]
    # A forget drops the session's pending prefill: nothing is read for an ended session.
    jobs.put({"op": "prefill", "conversation": "late"})
    jobs.put({"op": "forget", "conversation": "late"})
    assert order(jobs, 1) == ["forget:late"]
    assert not jobs._prefills


def test_another_organisations_turn_asks_the_running_one_to_yield() -> None:
    jobs = Jobs()
    jobs.put(generate("a0", tenant="school-a"))
    assert jobs.get()["conversation"] == "a0"
    jobs.put(generate("a1", tenant="school-a"))
    assert not jobs.should_yield()  # the same school's next turn waits its turn
    jobs.put(generate("b0", tenant="school-b"))
    assert jobs.should_yield()
    jobs.finished()


def test_a_turn_stops_another_sessions_prefill() -> None:
    jobs = Jobs()
    jobs.put({"op": "prefill", "conversation": "p"})
    jobs.get()
    stop = jobs.prefill_stop
    jobs.put(generate("p"))  # the session's own turn: its prefill goes on
    assert not stop.is_set()
    jobs.put(generate("q"))
    assert stop.is_set()


LONG = "Please read this. " + "word " * 1700


@pytest.mark.real_model
async def test_a_long_prompt_makes_way_for_another_organisations_turn() -> None:
    """School A's turn with a 1,700-token prompt starts first; school B's short turn comes
    right after. B's reply starts before A's: A yields after a prompt slice, then resumes
    from what it read and completes."""
    backend = LlamaCppProcessBackend(
        {"model": "smollm2-135m", "max_tokens": 8, "temperature": 0.0, "seed": 1}, model="m"
    )
    await backend.load()
    first_piece: dict[str, float] = {}
    stats = {"a": GenerationStats(), "b": GenerationStats()}

    async def turn(name: str, content: str) -> None:
        messages = [{"role": "user", "content": content}]
        async for _ in backend.stream(
            messages, stats[name], conversation=name, tenant=f"school-{name}"
        ):
            first_piece.setdefault(name, time.monotonic())

    try:
        a = asyncio.create_task(turn("a", LONG))
        await asyncio.sleep(0)  # A's request goes out first
        b = asyncio.create_task(turn("b", "Say hello."))
        await asyncio.wait_for(asyncio.gather(a, b), 120)
    finally:
        await backend.close()
    assert first_piece["b"] < first_piece["a"]
    assert stats["a"].finish_reason in ("stop", "length")
    # What A read before it yielded was kept: on resuming it did not read it again.
    assert stats["a"].cached_prompt_tokens >= PROMPT_SLICE
