"""The backend interface: one small class per upstream type, chosen by config ``type``.

A backend takes an OpenAI chat/completions/embeddings request body (already rewritten for
the upstream; API backends also take Responses bodies, which ``gateway.apis`` translates to
chat for endpoints) and returns the upstream's answer in OpenAI's wire format: the
body bytes for a plain call, or an async iterator of SSE bytes for a stream.
Everything about money and tokens happens outside, in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable, ClassVar, Protocol


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or timed out (no response status)."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


@dataclass(slots=True)
class UpstreamReply:
    """``body`` is set for a plain call; ``chunks`` for a 2xx stream (raw SSE bytes)."""

    status: int
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    close: Callable[[], None] | None = None  # abort a stream the client left


class Backend(Protocol):
    name: str
    kind: str  # routing_policies.API or routing_policies.ENDPOINT
    type_name: ClassVar[str]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def chat(self, body: bytes, stream: bool) -> UpstreamReply: ...

    async def completions(self, body: bytes, stream: bool) -> UpstreamReply: ...

    async def embeddings(self, body: bytes) -> UpstreamReply: ...


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register(cls):
    _REGISTRY[cls.type_name] = cls
    return cls


def build_backend(cfg) -> Backend:
    return _REGISTRY[cfg.type](cfg)
