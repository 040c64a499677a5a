"""The start-up warm-up: a model that loads but cannot generate stops start-up (exit 3 via
LLMLoadError) instead of failing a student's first turn; /health reports its TTFT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from tutorsrv.engine.llm.base import ChatMessage, GenerationStats, LLMLoadError
from tutorsrv.engine.llm.scripted import ScriptedBackend
from tutorsrv.engine.llm.warmup import warm_up


class BrokenBackend:
    """Stands in for the ways a loaded model fails its first generation."""

    name = "broken"
    model = "broken-model"
    ready = True

    def __init__(self, how: str) -> None:
        self.how = how
        self.closed = False

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(
        self, messages: list[ChatMessage], stats: GenerationStats
    ) -> AsyncIterator[str]:
        try:
            if self.how == "raises":
                raise RuntimeError("kernel exploded")
            if self.how == "hangs":
                await asyncio.sleep(3600)
            if self.how == "silent":
                return
            yield "never"
        finally:
            self.closed = True


async def test_a_working_model_passes_with_its_time_to_first_token() -> None:
    seconds = await warm_up(ScriptedBackend("Hello there."), 5)
    assert 0 <= seconds < 5


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("raises", "warm-up generation failed: kernel exploded"),
        ("hangs", "no token within llm.warmup_timeout_seconds = 0.2"),
        ("silent", "produced no text"),
    ],
)
async def test_a_model_that_cannot_generate_fails_start_up(how: str, says: str) -> None:
    backend = BrokenBackend(how)
    with pytest.raises(LLMLoadError, match="broken-model") as failure:
        await warm_up(backend, 0.2)
    assert says in str(failure.value)
    assert backend.closed  # the stream is closed, not left running


async def test_health_reports_the_warm_up(client: TestClient) -> None:
    body = await (await client.get("/health")).json()
    assert body["llm"]["ready"] is True
    assert isinstance(body["llm"]["warmup_ttft_ms"], float)
