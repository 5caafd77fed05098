"""The hindsight optimum: the least spend any instance schedule could reach on a trace.

The model (the simulator's, so that a policy's ratio to it is fair):

* Time is cut into intervals of ``interval_s``; a schedule gives the number of
  instances *in service* in each interval, within [min_instances, max_instances].
* An instance in service over an interval costs ``interval_s`` of billing; every
  instance added costs ``startup_s`` more (it was provisioned that long before, billed
  and not serving), ``startup_from_zero_s`` when it is added to none (a cold start, as in
  the simulator). With hindsight the start can always be early enough, except that
  nothing can be provisioned before the trace starts: during the first
  ``ceil(startup / interval_s)`` intervals the count cannot rise above the starting
  count (``min_instances``, in service at t=0, as in the simulator). Removing an
  instance is free and immediate.
* Requests whose prompt + completion exceed the endpoint's context window pay the API.
  The others are offered to the endpoint in arrival order with the simulator's admission
  rule (``routing_policies.admission``: taken while the fluid backlog is below
  ``n × max_tokens_per_second × queue_s``); what it refuses pays the API. The
  refused cost of an interval under ``n`` instances is measured by running that rule
  with ``n`` instances over the whole trace, so the load carried across an interval
  boundary where the schedule changes is approximated by the constant-``n`` run's
  (the backlog drains within ``queue_s``, so that error is confined to the first
  ``queue_s`` of such an interval).

Dynamic programming over (interval, instances): ``O(intervals × counts²)``, plus one
admission pass over the trace per count.

Usage::

    best = hindsight_optimum(trace, setup, interval_s=60)
    best.spend_usd, best.schedule
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

from routing_policies.admission import FluidBacklog, has_room

from .simulator import ReplaySetup, default_horizon
from .trace import Trace


@dataclass
class Optimum:
    spend_usd: float
    api_spend_usd: float
    endpoint_spend_usd: float
    instance_hours: float
    instances_started: int
    interval_s: float
    horizon_s: float
    schedule: list[int] = field(repr=False, default_factory=list)  # instances in service, per interval
    hours_at: dict = field(default_factory=dict)  # instances -> hours the schedule spends there
    source: str = "dp"  # or the replayed run that spent less than the DP's schedule (see floor_with)
    dp_spend_usd: float | None = None


def floor_with(optimum: Optimum, results) -> Optimum:
    """The optimum, or a replayed run if one spent less: so that it is a lower bound of every run.

    The DP prices each interval by a constant-count admission pass. When the endpoint is
    saturated, *which* requests a full backlog refuses depends on its whole history, so a
    replayed schedule can come out a few % below the DP's estimate of the same schedule (seen
    with 4 instances at 98 % load on the Azure conversation hour). That run is then the
    cheapest schedule known, and the report says so (``source``, ``dp_spend_usd``).
    """
    cheaper = min(results, key=lambda r: r.spend_usd, default=None)
    # a micro-dollar of float noise between the DP's sum and the simulator's is not a better schedule
    if cheaper is None or cheaper.spend_usd >= optimum.spend_usd - 1e-6:
        return optimum
    name = cheaper.policy + (f" {cheaper.params}" if cheaper.params else "")
    return Optimum(cheaper.spend_usd, cheaper.api_spend_usd, cheaper.endpoint_spend_usd, cheaper.instance_hours,
                   cheaper.instances_started, optimum.interval_s, optimum.horizon_s, [], {}, name, optimum.spend_usd)


def refused_api_costs(trace: Trace, setup: ReplaySetup, interval_s: float, horizon_s: float):
    """API cost the endpoint refuses per interval, for each instance count; and the misfits' cost.

    Returns ``(misfit_usd, {n: array of USD per interval})``.
    """
    spec, pin, pout = setup.endpoint, setup.api_prices.input, setup.api_prices.output
    window, weight = spec.context_window, spec.prompt_token_weight
    k_count = max(1, math.ceil(horizon_s / interval_s - 1e-9))
    times, caps, costs, slots = array("d"), array("d"), array("d"), array("l")
    misfit = 0.0
    for t, p, c in zip(trace.arrival_s, trace.prompt_tokens, trace.completion_tokens):
        cost = pin * p + pout * c
        if window is not None and p + c > window:
            misfit += cost
            continue
        times.append(t)
        caps.append(c + weight * p)
        costs.append(cost)
        slots.append(min(k_count - 1, int(t // interval_s)))
    lo, hi = spec.instance_bounds
    refused = {}
    for n in range(lo, hi + 1):
        refused[n] = _refused_with(n, times, caps, costs, slots, k_count, spec.max_tokens_per_second,
                                   spec.queue_s)
    return misfit, refused


def _refused_with(n, times, caps, costs, slots, k_count, tps, queue_s) -> array:
    out = array("d", bytes(8 * k_count))
    backlog, drain = FluidBacklog(), n * tps
    for t, cap, cost, k in zip(times, caps, costs, slots):
        if has_room(backlog.advance(t, drain), n, tps, queue_s):  # the simulator's rule
            backlog.add(cap)
        else:
            out[k] += cost
    return out


def hindsight_optimum(trace: Trace, setup: ReplaySetup, interval_s: float = 60.0,
                      horizon_s: float | None = None) -> Optimum:
    """The cheapest schedule of instance counts; see the module docstring for the model."""
    spec = setup.endpoint
    horizon = default_horizon(trace, interval_s) if horizon_s is None else horizon_s
    misfit, refused = refused_api_costs(trace, setup, interval_s, horizon)
    counts = sorted(refused)
    k_count = len(refused[counts[0]])
    per_s = spec.hourly_price_usd / 3600.0
    s0 = min(max(setup.start_instances, counts[0]), counts[-1])
    frozen = math.ceil(spec.startup_for(s0) / interval_s - 1e-9)  # intervals before a new instance can serve

    inf = math.inf
    best = {n: (0.0 if n == s0 else inf) for n in counts}
    back: list[dict] = []
    for k in range(k_count):
        allowed = [n for n in counts if k >= frozen or n <= s0]
        nxt, arg = {}, {}
        for m in allowed:
            step = m * interval_s * per_s + refused[m][k]
            cand, where = inf, None
            for n in counts:
                v = best[n]
                if v == inf:
                    continue
                v += (m - n) * spec.startup_for(n) * per_s if m > n else 0.0  # their start-up billing
                if v < cand:
                    cand, where = v, n
            nxt[m], arg[m] = cand + step, where
        for m in counts:
            nxt.setdefault(m, inf)
        best = nxt
        back.append(arg)

    end = min(counts, key=lambda n: (best[n], n))
    schedule = [0] * k_count
    cur = end
    for k in range(k_count - 1, -1, -1):
        schedule[k] = cur
        cur = back[k][cur]

    starts, start_s, prev = 0, 0.0, s0
    hours_at: dict[int, float] = {}
    api = misfit
    for k, m in enumerate(schedule):
        starts += max(0, m - prev)
        start_s += max(0, m - prev) * spec.startup_for(prev)
        prev = m
        hours_at[m] = hours_at.get(m, 0.0) + interval_s / 3600.0
        api += refused[m][k]
    inst_hours = (sum(schedule) * interval_s + start_s) / 3600.0
    endpoint = inst_hours * spec.hourly_price_usd
    return Optimum(api + endpoint, api, endpoint, inst_hours, starts, interval_s, horizon,
                   schedule, dict(sorted(hours_at.items())))
