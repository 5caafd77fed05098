"""The last hour of the figures the status page charts, one point every ``SAMPLE_S`` seconds.

Sampled from the gateway's own tick on its clock (so a demo's sped-up clock fills an hour
in a minute); kept in memory per process: a restarted gateway's chart starts empty, its
spend lines start from the shared ledger's totals.
"""
from __future__ import annotations

from collections import deque
from decimal import Decimal

from ..spend.accounting import API_ONLY

SAMPLE_S = 10.0  # seconds of gateway clock between two points
HOUR_S = 3600.0


class StatusHistory:
    def __init__(self, app, sample_s: float = SAMPLE_S, keep_s: float = HOUR_S):
        self.app = app
        self.sample_s = sample_s
        self.points: deque[dict] = deque(maxlen=int(keep_s // sample_s) + 1)
        self._next_at: float | None = None

    async def sample(self, now: float) -> None:
        """Append one point if one is due (cheap otherwise)."""
        if self._next_at is not None and now < self._next_at:
            return
        self._next_at = now + self.sample_s
        app = self.app
        endpoints = {}
        for name, status in app.endpoints.items():
            plan = app.planner.plans.get(name)
            decision = plan.decision if plan else None
            endpoints[name] = {
                "in_service": status.instances_in_service,
                "recommended": None if decision is None else decision.instances,
                "expected_rph": None if decision is None else round(decision.expected_requests_per_hour, 1),
                "break_even_rph": None if decision is None or decision.break_even_requests_per_hour is None
                else round(decision.break_even_requests_per_hour, 1),
            }
        spend: dict[str, Decimal] = {}
        for (backend, _model), usd in (await app.store.spend_totals()).items():
            key = "api_only" if backend == API_ONLY else backend
            spend[key] = spend.get(key, Decimal(0)) + usd
        self.points.append({"t": round(now, 1), "endpoints": endpoints,
                            "spend_usd": {k: float(v) for k, v in sorted(spend.items())}})

    def as_list(self, now: float) -> list[dict]:
        """Points of the last hour, oldest first."""
        return [p for p in self.points if p["t"] >= now - HOUR_S]
