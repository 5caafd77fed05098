"""Accrues what self-hosted endpoints cost: instances × hourly price over wall-clock time.

Every process ticks, but each second is claimed from the shared store exactly
once (``StateStore.claim_accrual``), so N workers or replicas count the
endpoint's time once, not N times. An endpoint nobody has confirmed (and the config
does not assume) is not charged: its seconds are not even claimed, so that another
replica that has confirmed the endpoint still counts all of them. The instances charged are the
ones AWS bills (``billed_instances``): with an inference component, also those still starting.
"""
from __future__ import annotations

from decimal import Decimal

_HOUR = Decimal(3600)


class EndpointClock:
    def __init__(self, config, store, metrics, endpoints):
        self.config = config
        self.store = store
        self.endpoints = endpoints
        self._spend = {name: metrics.spend.labels(name, "") for name in endpoints}
        self.accrued_usd: dict[str, Decimal] = {name: Decimal(0) for name in endpoints}

    async def tick(self, now: float) -> None:
        for name, status in self.endpoints.items():
            if not status.charged:
                continue
            seconds = await self.store.claim_accrual(f"endpoint:{name}", now)
            if seconds <= 0:
                continue
            cfg = self.config.backends[name]
            usd = Decimal(repr(seconds)) * cfg.hourly_price_usd * status.billed_instances / _HOUR
            if usd:
                self.accrued_usd[name] += usd
                self._spend[name].inc(float(usd))
                self.store.add_spend(name, "", usd)
