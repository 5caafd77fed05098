"""The live capacity planner, fed a trace's timestamps, makes the replay's decisions (issue 7).

Both sides are the real code, nothing mocked:

* replay: ``gateway.replay.simulator.simulate`` with ``break_even`` in a spy that records every
  ``CapacityContext`` and ``CapacityDecision`` it is handed and gives, and every request's route;
* live: ``gateway.routing.planner.CapacityPlanner`` over the in-process ``MemoryStore``. Each
  request is recorded by ``Accounting.settle`` (the live gateway's own recording: the request's
  row and, if it fits the endpoint, its ``fitting_key`` row) on a clock that reads the request's
  trace timestamp, with the backend the replay routed it to; at each of the replay's capacity
  ticks ``store.sync`` then ``planner.plan`` run, as ``GatewayApp.tick`` does, with the endpoint
  status reporting what the simulated endpoint had in service. The planner's target, last change
  and memo follow its own decisions.

At every tick both sides hand the policy the same windows (requests, tokens, ``LoadMoments``) and
state, and get the same decision. What has to line up, and why:

* **Ticks on bucket boundaries.** Live volume is kept in 10-s buckets; the replay counts exact
  timestamps in ``[now - seconds, now)``. On a bucket boundary the whole buckets of the last
  ``seconds`` hold exactly those requests, so ``capacity_interval_s`` is 10 here (a multiple of
  ``BUCKET_S``) and the live clock starts at a multiple of 60 s (the largest ``MOMENT_BUCKETS_S``).
  Between boundaries (every other tick at the default 5 s, any live ``time.time()``) a live window
  is up to one bucket shorter at its old end: the store's resolution, by design; 47 of 2,848
  decisions of this trace differ at 5 s. (Before ``volume.first_bucket``, a window on a boundary
  was a bucket short too: 60-s windows of 50 s, and an hour of moments without its first bucket.)
* **The watched part only.** Both cut every window where watching began: the replay at the
  trace's start, the live store at its first sync (``VolumeBuckets.since``), so in the first hour
  the windows, and the hour's ``LoadMoments``, cover the same minutes on both sides.
* **A dyadic prompt weight** (1/32): the replay adds up ``completion + weight × prompt`` request by
  request, the live buckets add up tokens first; only with such a weight are both sums exact
  (any weight agrees to rounding, and this test asserts equality).
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry

from gateway.access_log import AccessLog
from gateway.spend.accounting import Accounting, RequestRecord
from gateway.routing.planner import CapacityPlanner
from gateway.config import parse_config
from gateway.spend.cost import Usage
from gateway.endpoint.state import EndpointStatus
from gateway.metrics import GatewayMetrics
from gateway.routing.inputs import endpoint_spec, token_prices
from gateway.replay.simulator import setup_from_config, simulate
from gateway.replay.synth import synthesize_from_arrivals
from gateway.replay.trace import read_trace
from gateway.state.memory import MemoryStore
from routing_policies import build_policy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARRIVALS = (os.path.join(ROOT, "gateway", "replay", "data", "azure2023_code.csv.gz"),  # shipped in the package
            os.path.join(ROOT, "..", "shared", "traces", "normalized", "azure2023_code.csv.gz"))
EPOCH = 1_764_547_200.0  # the live clock at trace time 0 (2025-12-01 00:00 UTC): a multiple of 60 s
ENDPOINT, MODEL = "sagemaker", "gpt-4o"


def config(api_prices: dict | None = None):
    """gpt-4o's API prices (litellm's map: 2.50 / 10.00 USD per 1M tokens), against which the endpoint
    pays off above ~260 requests/hour of code traffic. The endpoint is the default's (ml.g5.xlarge,
    $1.408/h, 0-4 instances, 6 min start-up) on a slower model server (40 capacity tokens/s), so that
    a few thousand requests an hour need several instances and ramps take several steps."""
    openai = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "UNUSED_KEY"}
    if api_prices:
        openai["prices"] = {MODEL: api_prices}
    return parse_config({
        "backends": {
            "openai": openai,
            ENDPOINT: {
                "type": "sagemaker", "endpoint_name": "e", "region": "us-east-1", "instance_type": "ml.g5.xlarge",
                "hourly_price_usd": "1.408", "max_tokens_per_second": 40, "prompt_token_weight": 0.03125,
                "context_window": 4096,  # 13 % of the code requests are longer: only the API can take them
                "min_instances": 0, "max_instances": 4, "startup_s": 360, "poll_interval_s": 0,
            },
        },
        "models": {MODEL: {"backends": [{"backend": "openai"}, {"backend": ENDPOINT}]}},
        "routing": {"policy": "break_even", "capacity_interval_s": 10},
    }, "test_live_replay_agreement", env={})


class Spy:
    """The configured policy as it is, recording what it is asked and what it answers."""

    name = "break_even"

    def __init__(self, cfg):
        self.inner = build_policy(cfg.routing.policy, cfg.routing.params)
        self.plans: list = []  # (CapacityContext, CapacityDecision), one per capacity tick
        self.routes: list = []  # Decision, one per request

    def route(self, ctx):
        d = self.inner.route(ctx)
        self.routes.append(d)
        return d

    def plan_capacity(self, ctx):
        d = self.inner.plan_capacity(ctx)
        self.plans.append((ctx, d))
        return d


def bursty_trace(hourly: list[float]):
    """Each hour of ``hourly`` filled with the real Azure code hour's arrivals and tokens
    (73 % empty seconds, gaps of minutes), thinned or replicated to the hour's count."""
    path = next((p for p in ARRIVALS if os.path.exists(p)), None)
    if path is None:
        pytest.skip("no copy of the Azure code trace (gateway/replay/data/ or ../shared/traces/)")
    return synthesize_from_arrivals(hourly, read_trace(path), scale=1.0, seed=7, name="azure-code-arrivals")


async def drive_live(cfg, trace, replay: Spy, start_instances: int) -> tuple[Spy, Decimal]:
    """The live planner on the trace's timestamps at the replay's ticks: its own spy, and the API spend."""
    live = Spy(cfg)
    store = MemoryStore()
    status = EndpointStatus(ENDPOINT, status="InService", instances_in_service=start_instances, polled_at=EPOCH)
    endpoints = {ENDPOINT: status}
    metrics = GatewayMetrics(CollectorRegistry())
    clock = [EPOCH]
    accounting = Accounting(cfg, metrics, store, AccessLog(enabled=False), endpoints, clock=lambda: clock[0])
    planner = CapacityPlanner(cfg, live, store, endpoints, metrics)
    upstream = {r.backend: r.upstream_model for r in cfg.models[MODEL].routes}
    arrival, prompt, completion = trace.arrival_s, trace.prompt_tokens, trace.completion_tokens
    api_usd = Decimal(0)
    i, n = 0, len(trace)

    def record_until(t: float) -> None:
        nonlocal i, api_usd
        while i < n and arrival[i] < t:
            clock[0] = EPOCH + arrival[i]
            backend = replay.routes[i].backend
            rec = RequestRecord(f"r{i}", MODEL, "chat", 0.0, backend=backend, upstream_model=upstream[backend],
                                usage=Usage(prompt[i], completion[i], from_upstream=True))
            accounting.settle(rec)
            if backend == "openai":
                api_usd += rec.cost
            i += 1

    for ctx, _ in replay.plans:
        record_until(ctx.now_s)  # the replay ticks before a request that arrives at the tick's time
        now = EPOCH + ctx.now_s
        status.instances_in_service = ctx.instances_in_service
        await store.sync(now)
        assert planner.due(now), f"t={ctx.now_s}: the live planner is not due at the replay's tick"
        planner.plan(now)
    record_until(float("inf"))  # the requests after the last tick
    return live, api_usd


def on_trace_clock(memo) -> dict:
    memo = dict(memo)
    for key in ("at", "busy", "over"):  # the policy's clock readings
        if key in memo:
            memo[key] -= EPOCH
    return memo


@pytest.mark.parametrize("hourly", [[0, 1500, 3500, 600, 100], [1500, 3500, 600, 100]],
                         ids=["quiet-first-hour", "traffic-from-the-start"])
def test_live_planner_makes_the_replays_decisions(hourly):
    """With traffic from the first second, the first hour's windows are the watched minutes only."""
    cfg = config()
    trace = bursty_trace(hourly)
    setup = setup_from_config(cfg)
    replay = Spy(cfg)
    result = simulate(trace, replay, setup)
    live, api_usd = asyncio.run(drive_live(cfg, trace, replay, setup.start_instances))

    assert len(live.plans) == len(replay.plans) > (len(hourly) - 1) * 360  # every 10 s until the last arrival
    assert float(api_usd) == pytest.approx(result.api_spend_usd, rel=1e-12)  # every request recorded as routed
    for (want_ctx, want), (got_ctx, got) in zip(replay.plans, live.plans, strict=True):
        t = want_ctx.now_s
        got_ctx = replace(got_ctx, now_s=got_ctx.now_s - EPOCH, last_change_s=got_ctx.last_change_s - EPOCH,
                          memo=on_trace_clock(got_ctx.memo))
        assert (got_ctx.endpoint, got_ctx.api_prices) == (want_ctx.endpoint, want_ctx.api_prices)
        assert (got_ctx.now_s, got_ctx.instances_in_service, got_ctx.current_target, got_ctx.last_change_s,
                got_ctx.memo) == (want_ctx.now_s, want_ctx.instances_in_service, want_ctx.current_target,
                                  want_ctx.last_change_s, want_ctx.memo), t
        for gw, ww in zip(got_ctx.windows, want_ctx.windows, strict=True):
            assert (gw.seconds, gw.requests, gw.prompt_tokens, gw.completion_tokens) == (
                ww.seconds, ww.requests, ww.prompt_tokens, ww.completion_tokens), (t, ww.seconds)
            assert gw.moments == ww.moments, (t, ww.seconds)
        assert (got.instances, got.reason, on_trace_clock(got.memo)) == (want.instances, want.reason, want.memo), t

    # the trace exercises what the decisions depend on: ramps up and down by several steps,
    # every kind of capacity decision, and requests the endpoint took, refused or could not fit
    targets = [d.instances for _, d in replay.plans]
    assert sum(b > a for a, b in zip(targets, targets[1:])) >= 2
    assert sum(b < a for a, b in zip(targets, targets[1:])) >= 2
    assert max(targets) >= 3
    assert {"no_traffic", "volume_above_break_even", "startup_not_paid_back", "at_cheapest",
            "keep_for_restart", "idle_cost_above_restart_cost"} <= set(result.capacity_reasons)
    assert {"endpoint_in_service", "endpoint_at_capacity", "context_too_long"} <= set(result.route_reasons)


def test_replay_prices_and_endpoint_are_the_live_planners():
    # 0.10 USD/1M: float(0.10) / 1e6 is one bit off the live planner's float(Decimal("0.10") / 10**6)
    cfg = config({"input": "0.10", "output": "0.40"})
    setup = setup_from_config(cfg)
    assert setup.api_prices == token_prices(cfg.backends["openai"].prices[MODEL])
    assert setup.endpoint == endpoint_spec(cfg.backends[ENDPOINT])
