"""Any OpenAI-compatible HTTP API (pay per token)."""
from __future__ import annotations

from typing import ClassVar

from routing_policies import API

from .base import UpstreamReply, register
from .http_pool import HttpPool


@register
class OpenAIBackend:
    type_name: ClassVar[str] = "openai"
    kind = API

    def __init__(self, cfg):
        self.name = cfg.name
        self.cfg = cfg
        self._pool = HttpPool(cfg.max_connections, cfg.timeout_s)
        self._chat_url = f"{cfg.base_url}/chat/completions"
        self._emb_url = f"{cfg.base_url}/embeddings"
        self._responses_url = f"{cfg.base_url}/responses"
        self._completions_url = f"{cfg.base_url}/completions"
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            self._headers["Authorization"] = f"Bearer {cfg.api_key}"

    async def start(self) -> None:
        await self._pool.start()

    async def close(self) -> None:
        await self._pool.close()

    async def chat(self, body: bytes, stream: bool) -> UpstreamReply:
        return await self._pool.post(self._chat_url, body, self._headers, stream)

    async def responses(self, body: bytes, stream: bool) -> UpstreamReply:
        return await self._pool.post(self._responses_url, body, self._headers, stream)

    async def completions(self, body: bytes, stream: bool) -> UpstreamReply:
        return await self._pool.post(self._completions_url, body, self._headers, stream)

    async def embeddings(self, body: bytes) -> UpstreamReply:
        return await self._pool.post(self._emb_url, body, self._headers, False)
