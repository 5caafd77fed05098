"""Endpoint economics as pure functions: break-even volume and the cheapest instance count.

Units throughout: money in USD, volume in *capacity tokens* (completion tokens plus
``prompt_token_weight`` × prompt tokens, see ``EndpointSpec.capacity_tokens``), rates
per hour unless a name says otherwise.

The cost model, for ``n`` instances serving a volume of ``V`` capacity tokens/hour::

    cost(n) = n × hourly_price + api_usd_per_capacity_token × overflow(V, n)

``overflow`` is the expected part of ``V`` that does not fit: traffic arrives in
bursts, and an endpoint whose backlog is full (``admission``) sends the excess to the API
even when the hourly average fits. The backlog is approximated by a diffusion whose
variance is the load's mean × *dispersion*; the dispersion is measured from the traffic
itself (``LoadMoments``: the live volume buckets, or the replayed trace's, the same way),
and only when there is no measurement yet taken to be a compound Poisson load's
(size × (1 + cv²)).

Usage::

    mix = TrafficMix.from_totals(requests=900, prompt_tokens=1.0e6, completion_tokens=2.0e5,
                                 seconds=300, spec=spec, prices=prices)
    n, costs = cheapest_instances(spec, mix, mix.capacity_tokens_per_hour)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .base import EndpointSpec, TokenPrices



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


def poisson_dispersion(mix: TrafficMix, size_cv: float = 1.0, peakedness: float = 1.0) -> float:
    """Variance ÷ mean of the capacity-token load of Poisson arrivals of this mix (× peakedness).

    The fallback when the traffic has not been measured (``LoadMoments``): a compound
    Poisson load has variance ÷ mean = size × (1 + cv²).
    """
    return max(mix.capacity_tokens_per_request, 1e-9) * (1.0 + size_cv * size_cv) * peakedness


def measured_dispersion(moments) -> float | None:
    """Variance ÷ mean of the load, from the traffic's own ``LoadMoments`` (None without data).

    The largest bucket size with enough buckets: what fills or drains a backlog of tens
    of seconds is the load's variance over such spans, which for bursty traffic (clumps,
    gaps of minutes) is far above what its 10-s buckets, or Poisson arrivals, show.
    """
    m = _longest_buckets(moments)
    return m.dispersion if m is not None else None


def _longest_buckets(moments):
    """The ``LoadMoments`` of the largest bucket size with enough buckets (6) and load; None if none."""
    usable = [m for m in moments if m.count >= 6 and m.total > 0]
    return max(usable, key=lambda m: m.bucket_s) if usable else None


def level_spread(moments) -> float:
    """How far the load's level moves within the window: the relative spread of its slow part (0 without data).

    The plain variance of the per-bucket load holds both the bucket-to-bucket noise (the Allan
    variance, see ``LoadMoments.dispersion``) and the level's own wander over the window (a
    busy quarter-hour in an otherwise calmer hour); their difference is the latter. Returned as
    its standard deviation ÷ the mean load, from the largest bucket size with enough buckets.
    Poisson traffic at a steady rate gives about 0.
    """
    m = _longest_buckets(moments)
    if m is None:
        return 0.0
    mean = m.total / m.count
    wander = m.squares / m.count - mean * mean - m.allan_variance
    return math.sqrt(wander) / mean if wander > 0 else 0.0


def expected_overflow_per_hour(volume_per_hour: float, capacity_per_hour: float, backlog_limit: float,
                               dispersion: float) -> float:
    """Expected capacity tokens/hour that find the endpoint's backlog full.

    Diffusion approximation of the fluid backlog (``admission``): reflected Brownian motion
    on [0, ``backlog_limit``] with drift λ − C and variance rate λ × ``dispersion``
    (λ, C in capacity tokens/s). Its loss rate at the upper boundary is
    ``(λ − C) / (1 − exp(−2 (λ − C) B / σ²))``. Replayed on the Azure conversation and code
    arrivals at 98 % load, it gives 0.95× and 0.94× the refusals the simulator counts.
    """
    if volume_per_hour <= 0:
        return 0.0
    if capacity_per_hour <= 0 or backlog_limit <= 0:
        return volume_per_hour
    lam, cap = volume_per_hour / 3600.0, capacity_per_hour / 3600.0
    drift, var = lam - cap, lam * max(dispersion, 1e-9)
    theta = 2.0 * drift * backlog_limit / var
    if abs(theta) < 1e-9:
        loss = var / (2.0 * backlog_limit)
    elif theta > 0:
        loss = drift / -math.expm1(-theta)
    else:
        loss = -drift / math.expm1(-theta) if theta > -700 else 0.0
    return min(volume_per_hour, max(volume_per_hour - capacity_per_hour, 3600.0 * loss))


def expected_cost_per_hour(n: int, spec: EndpointSpec, mix: TrafficMix, volume_per_hour: float,
                           dispersion: float) -> float:
    """USD/hour with ``n`` instances serving: their price plus the API bill of the overflow."""
    overflow = expected_overflow_per_hour(volume_per_hour, n * instance_capacity_per_hour(spec),
                                          n * spec.max_tokens_per_second * spec.queue_s, dispersion)
    return n * spec.hourly_price_usd + overflow * mix.api_usd_per_capacity_token


def costs_by_instances(spec: EndpointSpec, mix: TrafficMix, volume_per_hour: float,
                       dispersion: float) -> tuple[float, ...]:
    """Expected USD/hour for every count from min_instances to max_instances."""
    lo, hi = spec.instance_bounds
    return tuple(expected_cost_per_hour(n, spec, mix, volume_per_hour, dispersion) for n in range(lo, hi + 1))


def cheapest_instances(spec: EndpointSpec, mix: TrafficMix, volume_per_hour: float,
                       dispersion: float | None = None) -> tuple[int, tuple[float, ...]]:
    """The instance count in [min_instances, max_instances] with the least expected USD/hour.

    Returns that count and the cost of every count from min_instances up (USD/hour).
    Ties go to the smaller count. Without a measured dispersion, Poisson load.
    """
    costs = costs_by_instances(spec, mix, volume_per_hour,
                               poisson_dispersion(mix) if dispersion is None else dispersion)
    best = min(range(len(costs)), key=lambda i: (costs[i], i))
    return spec.min_instances + best, costs


def costs_over_levels(spec: EndpointSpec, mix: TrafficMix, volume_per_hour: float, dispersion: float,
                      spread: float) -> tuple[float, ...]:
    """``costs_by_instances`` averaged over a level that sits ``spread`` (relative) above and below the volume.

    Half the time at volume × (1 + spread), half at volume × (1 − spread) (not below 0): the same
    mean up to a spread of 1, and the overflow of the busier half, which an average volume hides
    (overflow is convex in the load).
    """
    if spread <= 0:
        return costs_by_instances(spec, mix, volume_per_hour, dispersion)
    high = costs_by_instances(spec, mix, volume_per_hour * (1.0 + spread), dispersion)
    low = costs_by_instances(spec, mix, volume_per_hour * max(0.0, 1.0 - spread), dispersion)
    return tuple((a + b) / 2.0 for a, b in zip(high, low))
