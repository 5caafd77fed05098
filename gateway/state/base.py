"""Shared live state: traffic volume, endpoint-time accrual and the spend ledger.

``record`` and ``add_spend`` are synchronous and local (the request path never
waits on Redis); a background ``sync`` every ``flush_interval_s`` pushes the
deltas and pulls everyone's totals in one pipelined round trip. What could not
be pushed (Redis down) stays in the local buffer and goes with the next sync.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Callable, ClassVar, Mapping, Protocol

from .volume import VolumeBuckets


class StateStore(Protocol):
    kind: ClassVar[str]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def record(self, backend: str, model: str, prompt_tokens: int, completion_tokens: int, now: float) -> None: ...

    def add_spend(self, backend: str, model: str, usd: Decimal) -> None: ...

    def volume(self) -> VolumeBuckets:
        """Everyone's traffic as of the last sync (plus this process's since)."""

    async def sync(self, now: float) -> None: ...

    async def claim_accrual(self, key: str, now: float) -> float:
        """Seconds since anyone last accrued ``key`` (each second is handed out once)."""

    async def spend_totals(self) -> Mapping[tuple[str, str], Decimal]: ...

    @property
    def healthy(self) -> bool: ...


_REGISTRY: dict[str, Callable[..., StateStore]] = {}


def register(cls):
    _REGISTRY[cls.kind] = cls
    return cls


def build_store(state_cfg) -> StateStore:
    kind = "redis" if state_cfg.redis_url else "memory"
    if kind == "redis":
        from . import redis_store  # noqa: F401  (imports redis only when configured)
    return _REGISTRY[kind](state_cfg)
