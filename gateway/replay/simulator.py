"""Replay a trace through a routing policy on a simulated clock and a simulated endpoint.

The simulated world, and why it matches the live gateway:

* Every ``capacity_interval_s`` of simulated time the policy's ``plan_capacity`` gets the
  same ``CapacityContext`` the live gateway builds: volume windows (requests, prompt and
  completion tokens over the last 60 s, 300 s, 3600 s), instances in service, the
  previous target and when it last changed. The windows count the traffic the endpoint
  *could* serve: requests of this model whose prompt + max_tokens fit its context
  window. Requests that can only go to the API do not change what an instance is worth,
  and counting them made the endpoint look profitable on long-prompt traffic
  (Mooncake: 46 % of requests are too long for 8k, and they are the prompt-heavy ones).
  ``ReplaySetup.window_traffic="all"`` counts every request instead, as the live
  gateway's ``routing.planner.sum_windows`` does today. The simulated endpoint then
  *follows* the decision, as if actuation were on: new instances are billed at once and
  serve ``startup_s`` later (``startup_from_zero_s`` when none was provisioned: a cold
  start); removed instances stop billing at once, youngest (still starting) first.
* Every request gets the same ``RequestContext`` (candidates in the model's configured
  order). ``max_tokens`` is the request's completion tokens: the trace does not say what
  the client asked for, and the completion is the least it must have allowed.
* The endpoint is a fluid continuous-batching server (``routing_policies.admission``): the
  capacity tokens it admitted and has not processed yet drain at ``instances ×
  max_tokens_per_second``; the policy sees that backlog in the request's ``BackendView``
  and the endpoint takes a request while the backlog is below ``instances ×
  max_tokens_per_second × queue_s`` (``endpoint_at_capacity`` otherwise: counted as
  refused). ``gateway.replay.optimum`` and the live router use this same rule.
* The capacity windows' longest one carries ``LoadMoments`` (capacity-token load per
  complete aligned 10-s and 60-s bucket of the last hour), as the live planner builds them
  from its volume buckets.
* Billing: every provisioned instance (starting or in service) per second at
  ``hourly_price_usd / 3600``, from 0 to ``horizon_s``. API requests pay the
  configured per-token prices (no cached-input discount: traces carry no cache data).

Usage::

    setup = setup_from_config(load_config("config.yaml"))
    result = simulate(read_trace("trace.csv.gz"), build_policy("break_even"), setup)
    result.spend_usd, result.endpoint_refused
"""
from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Callable

from routing_policies import (
    API, ENDPOINT, BackendView, CapacityContext, EndpointSpec, RequestContext, RoutingPolicy,
    TokenPrices, VolumeWindow,
)

from routing_policies.admission import FluidBacklog
from routing_policies.base import LoadMoments

from ..routing.inputs import endpoint_spec, token_prices
from ..state.volume import MOMENT_BUCKETS_S
from .trace import Trace

Progress = Callable[[int, int], None]  # (requests done, total)


@dataclass(frozen=True)
class ReplaySetup:
    """The one model a trace replays: its API route, its endpoint, and the simulation knobs."""

    model: str
    api_name: str
    endpoint_name: str
    api_prices: TokenPrices  # USD per token
    endpoint: EndpointSpec
    api_first: bool = True  # candidates' configured order
    capacity_interval_s: float = 5.0
    windows_s: tuple[float, ...] = (60.0, 300.0, 3600.0)
    initial_instances: int | None = None  # None: endpoint.min_instances, in service at t=0
    window_traffic: str = "fitting"  # or "all": what the capacity windows count (see module docstring)
    api_prices_from: str = "config"  # or "--api-prices": where api_prices came from, for the report

    @property
    def start_instances(self) -> int:
        return self.endpoint.min_instances if self.initial_instances is None else self.initial_instances

    def api_cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return self.api_prices.request_cost(prompt_tokens, completion_tokens)


def setup_from_config(cfg, model: str | None = None, **knobs) -> ReplaySetup:
    """The replay setup for ``model`` (default: the first chat model with an openai and a sagemaker route)."""
    candidates = [m for m in cfg.models.values() if m.kind == "chat"]
    if model is not None:
        if model not in cfg.models:
            raise ValueError(f"{cfg.path}: models.{model}: no such model (have: {', '.join(cfg.models)})")
        candidates = [cfg.models[model]]
    for m in candidates:
        api = next((r for r in m.routes if cfg.backends[r.backend].type == "openai"), None)
        ep = next((r for r in m.routes if cfg.backends[r.backend].type == "sagemaker"), None)
        if api is None or ep is None:
            continue
        ab, eb = cfg.backends[api.backend], cfg.backends[ep.backend]
        # the live planner's own conversions: float(USD/1M) / 1e6 rounds twice and can differ
        # from it in the last bit (0.10 USD/1M does)
        prices = token_prices(ab.prices[api.upstream_model])
        spec = endpoint_spec(eb)
        api_first = m.routes.index(api) < m.routes.index(ep)
        return ReplaySetup(m.name, ab.name, eb.name, prices, spec, api_first,
                           capacity_interval_s=cfg.routing.capacity_interval_s, **knobs)
    where = f"models.{model}" if model else "models"
    raise ValueError(f"{cfg.path}: {where}: replay needs a chat model routed to both an openai and a sagemaker backend")


def default_horizon(trace: Trace, step_s: float) -> float:
    """End of billing: the last arrival rounded up to a whole ``step_s`` (at least one step)."""
    last = trace.arrival_s[-1] if len(trace) else 0.0
    return max(step_s, math.ceil((last + 1e-9) / step_s) * step_s)


@dataclass
class ReplayResult:
    """What one policy spent on one trace (USD) and where the requests went."""

    policy: str
    params: dict
    requests: int = 0
    spend_usd: float = 0.0
    api_spend_usd: float = 0.0
    endpoint_spend_usd: float = 0.0
    api_requests: int = 0
    endpoint_requests: int = 0
    api_prompt_tokens: int = 0
    api_completion_tokens: int = 0
    endpoint_prompt_tokens: int = 0
    endpoint_completion_tokens: int = 0
    endpoint_refused: int = 0  # requests the policy sent to the API because the endpoint was full
    instance_hours: float = 0.0
    instances_started: int = 0
    horizon_s: float = 0.0
    route_reasons: dict = field(default_factory=dict)
    capacity_reasons: dict = field(default_factory=dict)  # reason -> number of capacity decisions
    last_capacity: dict = field(default_factory=dict)
    elapsed_s: float = 0.0


class _BucketLoads:
    """Capacity-token load per aligned ``bucket_s`` bucket, with prefix sums for ``LoadMoments``."""

    def __init__(self, times, loads, bucket_s: float, horizon_s: float, history_s: float):
        self.bucket_s = bucket_s
        # padding before the trace start: windows are cut at the start (``_windows``), never read it
        self.pad = int(history_s // bucket_s) + 2
        per = [0.0] * (self.pad + int(horizon_s // bucket_s) + 2)
        for t, x in zip(times, loads):
            per[self.pad + int(t // bucket_s)] += x
        self.cum = [0.0, *accumulate(per)]
        self.cum_sq = [0.0, *accumulate(x * x for x in per)]
        self.cum_step = [0.0, *accumulate((b - a) ** 2 for a, b in zip(per, per[1:]))]  # [i]: steps below i

    def moments(self, now: float, seconds: float) -> LoadMoments:
        """The complete buckets inside ``[now - seconds, now)``."""
        b = self.bucket_s
        first = self.pad + math.ceil((now - seconds) / b - 1e-9)
        last = min(len(self.cum) - 1, self.pad + int(now // b))  # exclusive: the open bucket is not complete
        if last <= first:
            return LoadMoments(b, 0, 0.0, 0.0)
        return LoadMoments(b, last - first, self.cum[last] - self.cum[first], self.cum_sq[last] - self.cum_sq[first],
                           self.cum_step[last - 1] - self.cum_step[first])


def _windows(arr, cum_p, cum_c, now: float, windows_s, loads: tuple[_BucketLoads, ...],
             since: float = 0.0) -> tuple[VolumeWindow, ...]:
    """The capacity windows at ``now``, each cut at ``since``: the simulated gateway starts watching
    with the trace, and traffic before that is unknown, not zero (``VolumeBuckets.since``, live)."""
    hi = bisect_left(arr, now)
    out = []
    longest = windows_s[-1]
    for full in windows_s:
        s = full if now - since >= full else max(now - since, 1.0)
        lo = bisect_left(arr, now - s, 0, hi)
        moments = tuple(b.moments(now, s) for b in loads) if full == longest else ()
        out.append(VolumeWindow(s, float(hi - lo), float(cum_p[hi] - cum_p[lo]), float(cum_c[hi] - cum_c[lo]),
                                moments))
    return tuple(out)


def _fitting(trace: Trace, context_window: int | None):
    """Arrival times and token counts of the requests that fit the endpoint's context window."""
    if context_window is None:
        return trace.arrival_s, trace.prompt_tokens, trace.completion_tokens
    keep = [i for i, (p, c) in enumerate(zip(trace.prompt_tokens, trace.completion_tokens)) if p + c <= context_window]
    return (array("d", (trace.arrival_s[i] for i in keep)), array("q", (trace.prompt_tokens[i] for i in keep)),
            array("q", (trace.completion_tokens[i] for i in keep)))


def simulate(trace: Trace, policy: RoutingPolicy, setup: ReplaySetup, *, horizon_s: float | None = None,
             params: dict | None = None, progress: Progress | None = None, chunk: int = 50_000) -> ReplayResult:
    """Replay ``trace`` through ``policy``; see the module docstring for the model."""
    t0 = time.perf_counter()
    spec, prices = setup.endpoint, setup.api_prices
    arr, pr, co = trace.arrival_s, trace.prompt_tokens, trace.completion_tokens
    n = len(arr)
    horizon = default_horizon(trace, setup.capacity_interval_s) if horizon_s is None else horizon_s
    fit_t, fit_p, fit_c = _fitting(trace, spec.context_window if setup.window_traffic == "fitting" else None)
    cum_p = [0, *accumulate(fit_p)]  # prefix sums of the requests the endpoint could serve
    cum_c = [0, *accumulate(fit_c)]
    windows_s = tuple(sorted(setup.windows_s))
    fit_load = [c + spec.prompt_token_weight * p for p, c in zip(fit_p, fit_c)]
    loads = tuple(_BucketLoads(fit_t, fit_load, b, horizon, windows_s[-1]) for b in MOMENT_BUCKETS_S)
    res = ReplayResult(policy.name, dict(params or {}), requests=n, horizon_s=horizon)

    api_view = BackendView(setup.api_name, API, True, prices)
    ep_name, model = setup.endpoint_name, setup.model
    ctx_window, tps, weight, queue_s = spec.context_window, spec.max_tokens_per_second, spec.prompt_token_weight, spec.queue_s
    route, plan = policy.route, policy.plan_capacity
    interval = setup.capacity_interval_s
    lo_inst, hi_inst = spec.instance_bounds

    # endpoint state
    target = provisioned = serving = setup.start_instances
    pending: deque[float] = deque()  # ready times of starting instances, oldest first
    last_change = 0.0
    inst_seconds = 0.0
    last_bill = 0.0
    started = 0
    backlog = FluidBacklog()
    memo: dict = {}
    exp_completion = 0.0
    next_tick = 0.0
    reasons: dict[str, int] = {}
    cap_reasons: dict[str, int] = {}
    last_decision = None
    refused = 0
    ep_req = ep_p = ep_c = 0

    def tick(now: float) -> None:
        nonlocal inst_seconds, last_bill, serving, provisioned, target, last_change, started
        nonlocal exp_completion, last_decision, memo
        inst_seconds += provisioned * (now - last_bill)
        last_bill = now
        backlog.advance(now, serving * tps)
        while pending and pending[0] <= now:
            pending.popleft()
            serving += 1
        wins = _windows(fit_t, cum_p, cum_c, now, windows_s, loads)
        mid = wins[len(wins) // 2]
        if mid.requests > 0:
            exp_completion = mid.completion_tokens / mid.requests
        d = plan(CapacityContext(now, spec, prices, wins, serving, target, last_change, memo))
        memo = d.memo
        last_decision = d
        cap_reasons[d.reason] = cap_reasons.get(d.reason, 0) + 1
        new = min(max(d.instances, lo_inst), hi_inst)
        if new == target:
            return
        target, last_change = new, now
        if new > provisioned:
            startup = spec.startup_for(provisioned)  # from zero: a cold start, longer
            if startup <= 0:
                serving += new - provisioned
            else:
                pending.extend([now + startup] * (new - provisioned))
            started += new - provisioned
        else:
            drop = provisioned - new
            while drop and pending:
                pending.pop()
                drop -= 1
            serving -= drop
        provisioned = new

    done = 0
    while done < n:
        stop = min(n, done + chunk)
        for i in range(done, stop):
            t = arr[i]
            while next_tick <= t:
                tick(next_tick)
                next_tick += interval
            if pending and pending[0] <= t:
                while pending and pending[0] <= t:
                    backlog.advance(pending[0], serving * tps)
                    pending.popleft()
                    serving += 1
            held = backlog.advance(t, serving * tps)
            p, c = pr[i], co[i]
            ep_view = BackendView(ep_name, ENDPOINT, True, None, ctx_window, serving, tps, held, queue_s)
            cands = (api_view, ep_view) if setup.api_first else (ep_view, api_view)
            d = route(RequestContext(model, p, c, cands, t, exp_completion))
            reason = d.reason
            if d.backend == ep_name:
                backlog.add(c + weight * p)
                ep_req += 1
                ep_p += p
                ep_c += c
            elif reason == "endpoint_at_capacity":
                refused += 1
            reasons[reason] = reasons.get(reason, 0) + 1
        done = stop
        if progress is not None:
            progress(done, n)

    while next_tick < horizon:
        tick(next_tick)
        next_tick += interval
    inst_seconds += provisioned * max(0.0, horizon - last_bill)

    total_p, total_c = sum(pr), sum(co)
    res.endpoint_requests, res.endpoint_prompt_tokens, res.endpoint_completion_tokens = ep_req, ep_p, ep_c
    res.api_requests = n - ep_req
    res.api_prompt_tokens, res.api_completion_tokens = total_p - ep_p, total_c - ep_c
    res.api_spend_usd = setup.api_cost(res.api_prompt_tokens, res.api_completion_tokens)
    res.instance_hours = inst_seconds / 3600.0
    res.endpoint_spend_usd = res.instance_hours * spec.hourly_price_usd
    res.spend_usd = res.api_spend_usd + res.endpoint_spend_usd
    res.endpoint_refused = refused
    res.instances_started = started
    res.route_reasons = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    res.capacity_reasons = dict(sorted(cap_reasons.items(), key=lambda kv: -kv[1]))
    if last_decision is not None:
        res.last_capacity = {
            "instances": last_decision.instances, "reason": last_decision.reason,
            "break_even_requests_per_hour": last_decision.break_even_requests_per_hour,
            "expected_requests_per_hour": last_decision.expected_requests_per_hour,
        }
    res.elapsed_s = time.perf_counter() - t0
    return res
