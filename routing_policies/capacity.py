"""Endpoint economics as pure functions: break-even volume and the cheapest instance count.

Units throughout: money in USD, volume in *capacity tokens* (completion tokens plus
``prompt_token_weight`` × prompt tokens, see ``EndpointSpec.capacity_tokens``), rates
per hour unless a name says otherwise.

The cost model, for ``n`` instances serving a volume of ``V`` capacity tokens/hour::

    cost(n) = n × hourly_price + api_usd_per_capacity_token × overflow(V, n)

``overflow`` is the expected part of ``V`` that does not fit: traffic arrives in
bursts, and an endpoint full for a few seconds sends the excess to the API even when
the hourly average fits. Bursts are modelled as a compound Poisson load over
``burst_window_s`` seconds (the window the router measures load on), approximated by a
normal law whose variance comes from the request rate, the spread of request sizes and a
``peakedness`` factor. Peakedness (variance ÷ Poisson variance) stands for what the
Poisson picture misses: real arrivals come in clumps, and the router's *sliding* load
window refuses whenever any 10-s stretch is full, not only aligned ones. Replaying the
Azure 2023 token mixes at 40–100 % utilisation with 1–4 instances, a Poisson-only model
(peakedness 1) under-counts the refusals 2–5× and 2.5 matches them; as a *decision* input
1.5 gave the lowest spend relative to the hindsight optimum over the replayed traces
(docs/replay-results.md), so 1.5 is the default.

Usage::

    mix = TrafficMix.from_totals(requests=900, prompt_tokens=1.0e6, completion_tokens=2.0e5,
                                 seconds=300, spec=spec, prices=prices)
    n, costs = cheapest_instances(spec, mix, mix.capacity_tokens_per_hour)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .base import EndpointSpec, TokenPrices

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True, slots=True)
class TrafficMix:
    """Per-request means of a traffic sample, and what they cost on either side.

    ``api_usd_per_request`` is what the API charges for a mean request;
    ``capacity_tokens_per_request`` is how much endpoint capacity it uses.
    """

    requests_per_hour: float
    prompt_tokens_per_request: float
    completion_tokens_per_request: float
    api_usd_per_request: float
    capacity_tokens_per_request: float

    @classmethod
    def from_totals(cls, requests: float, prompt_tokens: float, completion_tokens: float,
                    seconds: float, spec: EndpointSpec, prices: TokenPrices) -> "TrafficMix":
        n = max(requests, 1e-12)
        p, c = prompt_tokens / n, completion_tokens / n
        return cls(
            requests_per_hour=requests * 3600.0 / seconds if seconds > 0 else 0.0,
            prompt_tokens_per_request=p,
            completion_tokens_per_request=c,
            api_usd_per_request=prices.request_cost(p, c),
            capacity_tokens_per_request=spec.capacity_tokens(p, c),
        )

    @property
    def capacity_tokens_per_hour(self) -> float:
        return self.requests_per_hour * self.capacity_tokens_per_request

    @property
    def api_usd_per_capacity_token(self) -> float:
        """What moving one capacity token of this mix to the API costs, USD."""
        if self.capacity_tokens_per_request <= 0:
            return 0.0  # an empty mix: nothing to move
        return self.api_usd_per_request / self.capacity_tokens_per_request


def instance_capacity_per_hour(spec: EndpointSpec) -> float:
    """Capacity tokens one instance serves per hour at 100 % utilisation."""
    return spec.max_tokens_per_second * 3600.0


def endpoint_usd_per_capacity_token_at_full(spec: EndpointSpec) -> float:
    """The endpoint's cheapest possible unit cost: one instance, fully used, USD."""
    return spec.hourly_price_usd / instance_capacity_per_hour(spec)


def endpoint_ever_pays_off(spec: EndpointSpec, mix: TrafficMix) -> bool:
    """True when a full instance costs less than the API would for the same traffic.

    When False no volume makes the endpoint cheaper: every instance-hour loses money.
    """
    return mix.api_usd_per_capacity_token * instance_capacity_per_hour(spec) > spec.hourly_price_usd


def break_even_requests_per_hour(spec: EndpointSpec, mix: TrafficMix) -> float | None:
    """Requests/hour at which one instance's hourly price equals the API bill of that traffic.

    None when that volume is beyond one instance's capacity: the endpoint never pays off.
    This is the fluid figure (no burst losses): the volume to quote to a person.
    """
    if mix.api_usd_per_request <= 0 or not endpoint_ever_pays_off(spec, mix):
        return None
    return spec.hourly_price_usd / mix.api_usd_per_request


def expected_overflow_per_hour(volume_per_hour: float, capacity_per_hour: float,
                               capacity_tokens_per_request: float, burst_window_s: float,
                               size_cv: float, peakedness: float = 1.0) -> float:
    """Expected capacity tokens/hour that find the endpoint full (normal approximation).

    The load in one ``burst_window_s`` window has mean ``m`` and variance
    ``m × size × (1 + size_cv²) × peakedness`` (compound Poisson when peakedness is 1).
    ``E[max(0, load − capacity)]`` per window, scaled to an hour.
    """
    if volume_per_hour <= 0:
        return 0.0
    if capacity_per_hour <= 0:
        return volume_per_hour
    w = burst_window_s / 3600.0
    mean, cap = volume_per_hour * w, capacity_per_hour * w
    sd = math.sqrt(mean * max(capacity_tokens_per_request, 1e-9) * (1.0 + size_cv * size_cv) * peakedness)
    if sd <= 0:
        return max(0.0, volume_per_hour - capacity_per_hour)
    z = (cap - mean) / sd
    tail = 0.5 * math.erfc(z / _SQRT2)  # P(load > capacity)
    loss = sd * (_INV_SQRT_2PI * math.exp(-0.5 * z * z) - z * tail)
    return min(volume_per_hour, max(0.0, loss / w, volume_per_hour - capacity_per_hour))


def expected_cost_per_hour(n: int, spec: EndpointSpec, mix: TrafficMix, volume_per_hour: float,
                           burst_window_s: float = 10.0, size_cv: float = 1.0, peakedness: float = 1.5) -> float:
    """USD/hour with ``n`` instances serving: their price plus the API bill of the overflow."""
    overflow = expected_overflow_per_hour(
        volume_per_hour, n * instance_capacity_per_hour(spec), mix.capacity_tokens_per_request,
        burst_window_s, size_cv, peakedness,
    )
    return n * spec.hourly_price_usd + overflow * mix.api_usd_per_capacity_token


def cheapest_instances(spec: EndpointSpec, mix: TrafficMix, volume_per_hour: float,
                       burst_window_s: float = 10.0, size_cv: float = 1.0,
                       peakedness: float = 1.5) -> tuple[int, tuple[float, ...]]:
    """The instance count in [min_instances, max_instances] with the least expected USD/hour.

    Returns that count and the cost of every count from min_instances up (USD/hour).
    Ties go to the smaller count.
    """
    lo, hi = spec.min_instances, max(spec.min_instances, spec.max_instances)
    costs = tuple(
        expected_cost_per_hour(n, spec, mix, volume_per_hour, burst_window_s, size_cv, peakedness)
        for n in range(lo, hi + 1)
    )
    best = min(range(len(costs)), key=lambda i: (costs[i], i))
    return lo + best, costs
