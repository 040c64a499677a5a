"""OpenAI-compatible backend: streaming chat completions from any server that speaks the
API (`vllm serve`, a vLLM cluster behind a router, llama.cpp's server, hosted services).

This is how the engine scales past one machine: the model is served by a serving system
built for it, and the engine only streams. Cancelling the stream closes the HTTP response,
which vLLM and llama.cpp's server take as an abort of the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .base import ChatMessage, GenerationStats, LLMLoadError, LLMUnavailable, estimate_tokens

log = logging.getLogger(__name__)

# Answers worth another try before any token was sent: the server was busy or restarting.
RETRY_STATUSES = {429, 500, 502, 503, 504}


class UpstreamError(LLMUnavailable):
    """The model server refused or broke the request; the message says how (no secrets)."""


class OpenAIBackend:
    name = "openai"
    ready = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        max_tokens: int = 256,
        temperature: float = 0.6,
        top_p: float = 0.9,
        timeout: float = 30.0,
        retries: int = 2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.retries = retries
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Every wait is bounded: connecting, the first token and any pause between tokens; a
        # long reply that keeps streaming may take as long as it takes.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        self._http: aiohttp.ClientSession | None = None
        self.active = 0

    async def load(self) -> None:
        """Check that the server answers and knows the model, so a wrong URL or name stops
        start-up instead of failing every turn."""
        self._http = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        try:
            async with self._http.get(f"{self.base_url}/v1/models") as resp:
                if resp.status != 200:
                    await self._http.close()
                    raise LLMLoadError(
                        f"llm.base_url: {self.base_url}/v1/models answered {resp.status} "
                        "(give the server's base URL, without /v1)"
                    )
                served = [m.get("id") for m in (await resp.json()).get("data", [])]
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            await self._http.close()
            raise LLMLoadError(
                f"llm.base_url: cannot reach the model server at {self.base_url} "
                f"({type(e).__name__})"
            ) from None
        if served and self.model not in served:
            # Some servers (llama.cpp's) answer to any name; others list exactly what they
            # serve. A listed mismatch is a configuration mistake worth stopping for.
            await self._http.close()
            raise LLMLoadError(
                f"llm.model: {self.model!r} is not served at {self.base_url} (it serves {served})"
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def prefill(self, conversation: str, messages: list[ChatMessage]) -> None:
        """Nothing to read ahead here (a server's prefix cache, e.g. vLLM's, does it by itself)."""

    def forget(self, conversation: str) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def stream(
        self,
        messages: list[ChatMessage],
        stats: GenerationStats,
        *,
        conversation: str | None = None,
        max_tokens: int | None = None,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        if self._http is None:
            raise RuntimeError("the openai backend is not loaded")
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stream_options": {"include_usage": True},
        }
        self.active += 1
        try:
            resp = await self._open(body)
            try:
                async for event in _events(resp):
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            stats.completion_tokens += 1
                            yield text
                        if choice.get("finish_reason"):
                            stats.finish_reason = choice["finish_reason"]
                    usage = event.get("usage")
                    if usage:
                        stats.prompt_tokens = usage.get("prompt_tokens", stats.prompt_tokens)
                        details = usage.get("prompt_tokens_details") or {}
                        stats.cached_prompt_tokens = details.get("cached_tokens") or 0
                        # The server's count, where it gives one, over one per piece: a
                        # piece may hold several tokens, or none (vLLM).
                        counted = usage.get("completion_tokens")
                        if isinstance(counted, int) and counted >= 0:
                            stats.completion_tokens = counted
            finally:
                # Closing (not releasing) drops the connection: the server aborts the request.
                resp.close()
        finally:
            self.active -= 1

    async def _open(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST the request; retry connection failures and busy answers, but only here,
        before a single token has reached the student."""
        assert self._http is not None
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http.post(f"{self.base_url}/v1/chat/completions", json=body)
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                problem = f"cannot reach the model server ({type(e).__name__})"
            else:
                if resp.status == 200:
                    return resp
                problem = f"the model server answered {resp.status}"
                text = (await resp.text())[:200]
                resp.release()
                if resp.status not in RETRY_STATUSES:
                    raise UpstreamError(f"{problem}: {text}")
            if attempt < self.retries:
                log.warning("%s; retrying (%d/%d)", problem, attempt + 1, self.retries)
                await asyncio.sleep(delay)
                delay *= 2
        raise UpstreamError(problem)


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events of a streamed completion, as parsed JSON, until ``[DONE]``.

    A stream that stops without ``[DONE]`` (the server died or dropped the connection) is
    an error, never a short reply taken as complete."""
    try:
        async for raw in resp.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                yield json.loads(data)
            except json.JSONDecodeError:
                raise UpstreamError("the model server sent a malformed event") from None
    except aiohttp.ClientPayloadError:
        pass
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        raise UpstreamError(f"the model server stopped answering ({type(e).__name__})") from None
    raise UpstreamError("the model server closed the stream before the reply was complete")
