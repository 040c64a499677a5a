"""KnowledgeSearch: how an engine finds course passages for a turn.

In ``all`` it queries the database directly; an engine in a split deployment asks the web
role's ``/internal/v1/kbs/{kb_id}/search`` with the service key (the same road as the
Backplane's transcripts).
"""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp


class KnowledgeSearch(Protocol):
    async def search(self, kb_id: str, query: str, k: int) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


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
