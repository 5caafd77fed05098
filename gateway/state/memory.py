"""In-process state for a single gateway process (no Redis configured)."""
from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import ClassVar

from .volume import VolumeBuckets, bucket_of
from .base import register


@register
class MemoryStore:
    kind: ClassVar[str] = "memory"

    def __init__(self, state_cfg=None):
        self._volume = VolumeBuckets()
        self._spend: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        self._accrued_until: dict[str, float] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def healthy(self) -> bool:
        return True

    def record(self, backend: str, model: str, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        self._volume.watched(now)
        self._volume.add(bucket_of(now), (backend, model), 1, prompt_tokens, completion_tokens)

    def add_spend(self, backend: str, model: str, usd: Decimal) -> None:
        self._spend[(backend, model)] += usd

    def volume(self) -> VolumeBuckets:
        return self._volume

    async def sync(self, now: float) -> None:
        self._volume.watched(now)
        self._volume.prune(now)

    async def claim_accrual(self, key: str, now: float) -> float:
        last = self._accrued_until.get(key)
        # `last or now` would take a marker of 0.0 for "never claimed"
        self._accrued_until[key] = now if last is None else max(now, last)
        return max(0.0, now - last) if last is not None else 0.0

    async def spend_totals(self):
        return dict(self._spend)
