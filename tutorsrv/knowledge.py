"""KnowledgeSearch: how an engine finds course passages for a turn.

In ``all`` it queries the database directly; an engine in a split deployment asks the web
role's ``/internal/v1/kbs/{kb_id}/search`` with the service key (the same road as the
Backplane's transcripts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import aiohttp


class KnowledgeSearch(Protocol):
    async def search(self, kb_id: str, query: str, k: int) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


def fit_passages(
    passages: list[dict[str, Any]], budget: int, count_tokens: Callable[[str], int]
) -> list[dict[str, Any]]:
    """The best-ranked passages whose text fits ``budget`` model tokens together
    (``kb.passage_tokens``): every passage token is prompt the model must read before the
    first word of the reply. The first passage, if too long alone, is cut at a word."""
    kept: list[dict[str, Any]] = []
    left = budget
    for passage in passages:
        cost = count_tokens(passage["content"])
        if cost <= left:
            kept.append(passage)
            left -= cost
            continue
        if not kept and (content := _cut_to(passage["content"], left, count_tokens)):
            kept.append({**passage, "content": content})
        break
    return kept


def _cut_to(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The longest run of ``text``'s first words that, marked as cut, fits ``budget``."""
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:  # binary search: O(log n) tokenizations
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid]) + " …") <= budget:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo]) + " …" if lo else ""


class HttpKnowledgeSearch:
    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        self.base = base_url.rstrip("/") + "/internal/v1/kbs"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def search(self, kb_id: str, query: str, k: int) -> list[dict[str, Any]]:
        url = f"{self.base}/{kb_id}/search"
        async with self._http.post(url, json={"query": query, "k": k}, headers=self._headers) as r:
            if r.status != 200:
                raise RuntimeError(f"web role answered {r.status}")
            return (await r.json())["passages"]

    async def close(self) -> None:
        await self._http.close()
