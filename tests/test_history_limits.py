"""A session's history is bounded (engine.max_history_messages / max_history_chars): one
student cannot grow what the model re-reads, or what every reconnect receives, without end."""

from __future__ import annotations

from tutorsrv.appkeys import REGISTRY
from tutorsrv.engine.protocol import SUBPROTOCOL
from tutorsrv.registry import Message, Session, TutorProfile

from .conftest import MakeClient, new_session, receive_json, receive_until, ws_path


def session(max_messages: int, max_chars: int) -> Session:
    return Session(
        "s", "t", "st", None, TutorProfile(), 0.0, 1e12, 0.0,
        max_history_messages=max_messages, max_history_chars=max_chars,
    )  # fmt: skip


def test_the_oldest_whole_exchanges_go_first_and_the_greeting_stays_until_then() -> None:
    s = session(max_messages=5, max_chars=10_000)
    s.remember(Message("assistant", "Hello! I am Ada.", "t0"))  # the greeting
    for i in range(2):
        s.remember(Message("user", f"question {i}", "t"))
        s.remember(Message("assistant", f"answer {i}", "t"))
    assert s.history[0].content == "Hello! I am Ada." and len(s.history) == 5
    s.remember(Message("user", "question 2", "t"))
    # Over 5: the greeting went, and so did everything up to the next student turn.
    assert [m.content for m in s.history] == [
        "question 0", "answer 0", "question 1", "answer 1", "question 2",
    ]  # fmt: skip
    s.remember(Message("assistant", "answer 2", "t"))
    assert [m.content for m in s.history] == ["question 1", "answer 1", "question 2", "answer 2"]
    assert s.forgotten == 3  # the greeting, then one exchange


def test_characters_count_what_the_model_was_given() -> None:
    s = session(max_messages=100, max_chars=1000)
    with_passages = Message("user", "short", "t", prompt="p" * 600)
    s.remember(with_passages)
    s.remember(Message("assistant", "a" * 100, "t"))
    s.remember(Message("user", "q" * 500, "t"))
    assert s.history[0].content == "q" * 500  # 600 + 100 + 500 > 1000: the first exchange went
    # The newest message stays even when it alone is over the limit.
    s.remember(Message("user", "z" * 5000, "t"))
    assert [m.content for m in s.history] == ["z" * 5000]


async def test_a_flood_of_long_turns_keeps_the_history_and_the_session_frame_bounded(
    make_client: MakeClient,
) -> None:
    client = await make_client(
        engine={"max_history_messages": 10, "max_history_chars": 20_000, "max_text_chars": 4000}
    )
    info = await new_session(client)
    ws = await client.ws_connect(ws_path(info), protocols=[SUBPROTOCOL])
    await receive_json(ws)
    for i in range(30):
        await ws.send_json({"type": "text", "content": f"{i} " + "x" * 3990})
        await receive_until(ws, "response_done")
    await ws.close()
    history = client.server.app[REGISTRY].get(info["session_id"]).history
    assert len(history) <= 10 and sum(len(m.content) for m in history) <= 20_000
    assert history[0].role == "user" and history[-1].role == "assistant"
    assert history[-2].content.startswith("29 ")  # the newest exchange is the one kept
    ws = await client.ws_connect(ws_path(info), protocols=[SUBPROTOCOL])
    hello = await receive_json(ws)
    assert len(hello["history"]) == len(history)
    await ws.close()
