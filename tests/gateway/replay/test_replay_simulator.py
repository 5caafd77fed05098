"""The simulator and the hindsight optimum against spend computed by hand, and by brute force."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from gateway.replay.optimum import hindsight_optimum
from gateway.replay.simulator import ReplaySetup, simulate
from gateway.replay.trace import Trace
from routing_policies import CapacityDecision, Decision, EndpointSpec, TokenPrices, build_policy
from routing_policies.rules import endpoint_first

# Round numbers so that the spend can be checked by hand:
#   API: 0.001 USD per prompt token, 0.002 USD per completion token
#   endpoint: 3.6 USD/hour = 0.001 USD per instance-second, 10 capacity tokens/s per instance,
#   prompt tokens weigh 0, context window 100 tokens, start-up 10 s, 0..1 instances
#   queue 10 s: one instance takes requests while its backlog is below 10 × 10 = 100 capacity
#   tokens; the backlog drains at 10 tokens/s
SPEC = EndpointSpec(hourly_price_usd=3.6, max_tokens_per_second=10.0, prompt_token_weight=0.0,
                    min_instances=0, max_instances=1, startup_s=10.0, context_window=100, queue_s=10.0)
SETUP = ReplaySetup("m", "openai", "sagemaker", TokenPrices(0.001, 0.002), SPEC, capacity_interval_s=5.0)

#            arrival  prompt  completion
HAND = Trace.from_rows([
    (1.0, 10, 5),    # r1: t=1, the instance asked for at t=0 is still starting -> API 10×.001 + 5×.002 = 0.020
    (12.0, 10, 50),  # r2: in service since t=10, backlog 0 < 100 -> endpoint; backlog 50
    (13.0, 10, 80),  # r3: backlog 50 - 10 = 40 < 100 -> endpoint (a long decode is taken whole); backlog 120
    (14.0, 95, 10),  # r4: 95 + 10 > context window 100 -> API .095 + .020 = 0.115
    (14.5, 10, 20),  # r5: backlog 120 - 15 = 105 >= 100 -> at capacity, API .010 + .040 = 0.050
    (23.0, 1, 40),   # r6: backlog 105 - 85 = 20 < 100 -> endpoint
])


def test_always_selfhosted_by_hand():
    r = simulate(HAND, build_policy("always_selfhosted"), SETUP, horizon_s=30.0)
    # API: 0.020 + 0.115 + 0.050 = 0.185 USD; endpoint: one instance billed from t=0 to 30 s = 0.030 USD
    assert r.api_spend_usd == pytest.approx(0.185)
    assert r.endpoint_spend_usd == pytest.approx(0.030)
    assert r.spend_usd == pytest.approx(0.215)
    assert (r.api_requests, r.endpoint_requests, r.endpoint_refused) == (3, 3, 1)
    assert (r.endpoint_prompt_tokens, r.endpoint_completion_tokens) == (21, 170)
    assert (r.api_prompt_tokens, r.api_completion_tokens) == (115, 35)
    assert r.route_reasons == {"endpoint_not_in_service": 1, "endpoint_in_service": 3,
                               "endpoint_at_capacity": 1, "context_too_long": 1}
    assert r.instances_started == 1


def test_always_api_by_hand():
    r = simulate(HAND, build_policy("always_api"), SETUP, horizon_s=30.0)
    # r1 .020 + r2 (.010 + .100) + r3 (.010 + .160) + r4 .115 + r5 .050 + r6 (.001 + .080) = 0.546 USD
    assert r.spend_usd == pytest.approx(0.546)
    assert r.endpoint_spend_usd == 0 and r.instance_hours == 0


def test_optimum_by_hand():
    # 10-s intervals, 3 of them; nothing can serve in [0, 10) (start-up 10 s from t=0).
    # [10, 20): one instance costs 10 × .001 + start-up 10 × .001 = 0.020 and saves r2 + r3 = 0.280 -> on
    # [20, 30): one instance costs 0.010 and saves r6's 0.081 -> on
    # total: API r1 .020 + r4 .115 (too long) + r5 .050 (at capacity) + endpoint .030 = 0.215 USD
    best = hindsight_optimum(HAND, SETUP, interval_s=10.0, horizon_s=30.0)
    assert best.schedule == [0, 1, 1]
    assert best.spend_usd == pytest.approx(0.215)
    assert best.endpoint_spend_usd == pytest.approx(0.030)
    assert best.instances_started == 1


class Scripted:
    """A test policy: capacity targets from a script of (from time, instances), always the endpoint."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.seen_in_service = []

    def route(self, ctx):
        self.seen_in_service.append((ctx.now_s, ctx.candidates[1].instances_in_service))
        return Decision("sagemaker", "scripted")

    def plan_capacity(self, ctx):
        target = [n for t, n in self.script if t <= ctx.now_s][-1]
        return CapacityDecision(target, "scripted")


def test_scale_down_cancels_the_starting_instance_first_and_stops_its_billing():
    spec = EndpointSpec(3.6, 10.0, 0.0, min_instances=0, max_instances=2, startup_s=10.0, context_window=100)
    setup = ReplaySetup("m", "openai", "sagemaker", TokenPrices(0.001, 0.002), spec)
    trace = Trace.from_rows([(12.0, 1, 1), (16.0, 1, 1)])
    policy = Scripted([(0, 1), (5, 2), (10, 1)])
    r = simulate(trace, policy, setup, horizon_s=30.0)
    # instance A: t=0..30 (30 s); instance B: t=5..10, cancelled while starting (5 s): 35 s × 0.001
    assert r.endpoint_spend_usd == pytest.approx(0.035)
    assert r.instances_started == 2
    assert policy.seen_in_service == [(12.0, 1), (16.0, 1)]  # B never came into service


def test_a_cold_start_takes_startup_from_zero_s_and_is_billed_throughout():
    spec = EndpointSpec(3.6, 10.0, 0.0, min_instances=0, max_instances=2, startup_s=10.0, context_window=100,
                        startup_from_zero_s=20.0)
    setup = ReplaySetup("m", "openai", "sagemaker", TokenPrices(0.001, 0.002), spec, capacity_interval_s=5.0)
    trace = Trace.from_rows([(12.0, 1, 1), (21.0, 1, 1), (30.0, 1, 1), (36.0, 1, 1)])
    policy = Scripted([(0, 1), (25, 2)])
    r = simulate(trace, policy, setup, horizon_s=40.0)
    # A from nothing at t=0: serves from t=20; B beside it at t=25: the shorter start-up, serves from t=35
    assert policy.seen_in_service == [(12.0, 0), (21.0, 1), (30.0, 1), (36.0, 2)]
    # billed while starting: A 0..40 (40 s), B 25..40 (15 s) at 0.001 USD/s
    assert r.endpoint_spend_usd == pytest.approx(0.055)
    assert r.instances_started == 2


def naive_refused(trace, spec, prices, n, interval_s, k_count):
    """Admission by the queue's sup formula (Lindley): an independent re-implementation for the brute force.

    The backlog at t is max(0, max over earlier admissions s of (work admitted in [s, t]) − C (t − s)).
    """
    out = [0.0] * k_count
    admitted = []  # (time, capacity tokens)
    rate = n * spec.max_tokens_per_second
    for t, p, c in zip(trace.arrival_s, trace.prompt_tokens, trace.completion_tokens):
        cost = prices.request_cost(p, c)
        if p + c > spec.context_window:
            continue
        backlog = max([0.0] + [sum(x for at, x in admitted if at >= s) - rate * (t - s) for s, _ in admitted])
        cap = c + spec.prompt_token_weight * p
        if n > 0 and backlog < rate * spec.queue_s:
            admitted.append((t, cap))
        else:
            out[min(k_count - 1, int(t // interval_s))] += cost
    return out


@pytest.mark.parametrize("from_zero", [None, 25.0])
def test_optimum_matches_brute_force_on_a_tiny_case(from_zero):
    spec = EndpointSpec(hourly_price_usd=36.0, max_tokens_per_second=4.0, prompt_token_weight=0.1,
                        min_instances=0, max_instances=2, startup_s=15.0, context_window=80, queue_s=10.0,
                        startup_from_zero_s=from_zero)
    prices = TokenPrices(0.0005, 0.003)
    setup = ReplaySetup("m", "openai", "sagemaker", prices, spec)
    rng = random.Random(3)
    rows = []
    for k in range(6):  # bursts of different sizes in six 10-s intervals
        for _ in range(rng.choice([0, 1, 3, 8])):
            rows.append((k * 10 + rng.uniform(0, 10), rng.randint(1, 60), rng.randint(1, 40)))
    trace = Trace.from_rows(rows)
    interval, horizon, k_count = 10.0, 60.0, 6
    per_s = spec.hourly_price_usd / 3600
    misfit = sum(prices.request_cost(p, c) for _, p, c in rows if p + c > spec.context_window)
    refused = {n: naive_refused(trace, spec, prices, n, interval, k_count) for n in (0, 1, 2)}
    frozen = math.ceil(spec.startup_for(0) / interval)  # 2 (3 from zero) intervals: nothing can serve yet
    best = math.inf
    for schedule in itertools.product((0, 1, 2), repeat=k_count):
        if any(schedule[k] > 0 for k in range(frozen)):
            continue
        start_s = sum(max(0, b - a) * (from_zero or spec.startup_s if a == 0 else spec.startup_s)
                      for a, b in zip((0,) + schedule, schedule))
        cost = misfit + sum(refused[n][k] for k, n in enumerate(schedule))
        cost += (sum(schedule) * interval + start_s) * per_s
        best = min(best, cost)
    got = hindsight_optimum(trace, setup, interval_s=interval, horizon_s=horizon)
    assert got.spend_usd == pytest.approx(best)
    assert got.spend_usd <= simulate(trace, build_policy("always_api"), setup, horizon_s=horizon).spend_usd + 1e-12


def test_break_even_replay_is_never_above_the_baselines_on_a_steady_trace():
    # six hours at 2 req/s (long enough that the first start-up, which no policy can avoid, is
    # not the whole story), conversation-like tokens, gpt-4o prices on a real-sized endpoint
    spec = EndpointSpec(1.408, 300.0, 0.02, min_instances=0, max_instances=4, startup_s=360.0, context_window=8192)
    setup = ReplaySetup("m", "openai", "sagemaker", TokenPrices(2.5e-6, 10e-6), spec)
    rng = random.Random(1)
    t, rows = 0.0, []
    while t < 21600:
        t += rng.expovariate(2.0)
        rows.append((t, rng.randint(200, 2000), rng.randint(50, 400)))
    trace = Trace.from_rows(rows)
    spend = {name: simulate(trace, build_policy(name), setup, horizon_s=21600.0).spend_usd
             for name in ("break_even", "always_api", "always_selfhosted")}
    best = hindsight_optimum(trace, setup, 60.0, 21600.0).spend_usd
    assert spend["break_even"] <= min(spend["always_api"], spend["always_selfhosted"])
    assert spend["break_even"] <= 1.10 * best


class WindowSpy:
    name = "spy"

    def __init__(self):
        self.contexts = []

    def route(self, ctx):
        return Decision("openai", "spy")

    def plan_capacity(self, ctx):
        self.contexts.append(ctx)
        return CapacityDecision(0, "spy")


def test_capacity_windows_count_only_what_the_endpoint_could_serve():
    spy = WindowSpy()
    simulate(HAND, spy, SETUP, horizon_s=30.0)
    at_20 = next(c for c in spy.contexts if c.now_s == 20.0)
    minute, _, hour = at_20.windows
    # before t=20: r1, r2, r3, r5 fit; r4 (95 + 10 > 100) can only go to the API and is left out
    assert minute.requests == 4
    assert (minute.prompt_tokens, minute.completion_tokens) == (40, 155)
    # the simulated gateway has watched since the trace start: every window is the 20 s it saw
    # (not 60 s, 300 s and an hour of which all but 20 s were never watched), and the longest one's
    # load moments are its complete 10-s buckets [0, 10) and [10, 20), not 360 with 358 empty
    assert [w.seconds for w in at_20.windows] == [20.0, 20.0, 20.0]
    m10 = next(m for m in hour.moments if m.bucket_s == 10)
    assert (m10.count, m10.total, m10.squares) == (2, 5 + 150, 5 ** 2 + 150 ** 2)
    assert m10.step_squares == (150 - 5) ** 2
    # and the first tick, before any watching, a window of 1 s (as the live store's), not of 0
    assert [w.seconds for w in spy.contexts[0].windows] == [1.0, 1.0, 1.0]
    assert [c.now_s for c in spy.contexts] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]


def test_capacity_windows_can_count_all_traffic_when_asked():
    from dataclasses import replace

    spy = WindowSpy()
    simulate(HAND, spy, replace(SETUP, window_traffic="all"), horizon_s=30.0)
    at_20 = next(c for c in spy.contexts if c.now_s == 20.0)
    assert at_20.windows[0].requests == 5  # r4 counted too


class ScriptedCapacity(Scripted):
    """Scripted capacity, routed like break_even (the endpoint only while it is in service and has room)."""

    def route(self, ctx):
        return endpoint_first(ctx)


@pytest.mark.parametrize("gap_min", [3, 12, 40, 120])
def test_break_even_is_within_twice_the_best_online_choice_on_on_off_traffic(gap_min):
    # The ski-rental adversary: busy half-hours (1,500 req/h, gpt-4o prices: one instance pays off
    # many times over) separated by idle gaps of one length. An online policy cannot start an
    # instance before the traffic it has not seen, so per gap it can only keep the instance through
    # (fixed_1) or release it at once and restart on the traffic's return (an oracle that knows
    # where each gap starts). The threshold rule's worst case is twice the better of the two.
    spec = EndpointSpec(1.408, 300.0, 0.02, min_instances=0, max_instances=1, startup_s=360.0, context_window=8192)
    setup = ReplaySetup("m", "openai", "sagemaker", TokenPrices(2.5e-6, 10e-6), spec)
    rng = random.Random(gap_min)
    rows, t, busy = [], 0.0, []
    for _ in range(6):
        end = t + 1800
        busy.append((t, end))
        while True:
            t += rng.expovariate(1500 / 3600)
            if t >= end:
                break
            rows.append((t, rng.randint(200, 2000), rng.randint(50, 400)))
        t = end + gap_min * 60
    trace = Trace.from_rows(rows)
    horizon = math.ceil(t / 60) * 60
    run = lambda policy: simulate(trace, policy, setup, horizon_s=horizon).spend_usd  # noqa: E731
    result = simulate(trace, build_policy("break_even"), setup, horizon_s=horizon)
    spend = result.spend_usd
    keep = run(build_policy("fixed", {"instances": 1}))
    release = run(ScriptedCapacity([(0, 0)] + [(x, n) for a, b in busy for x, n in ((a, 1), (b, 0))]))
    assert spend <= 2.0 * min(keep, release)
    if gap_min <= 12:
        assert result.instances_started == 1  # a short gap is kept through: keeping is what pays there
    elif gap_min >= 120:
        assert result.instances_started == 6 and spend < keep  # a long one is released
    # (40 minutes is about the threshold itself: the adversary's best case, where the 2× bound is all)
    assert spend >= hindsight_optimum(trace, setup, 60.0, horizon).spend_usd  # the optimum starts ahead: a lower bound


class Recorded:
    """A policy whose capacity decisions are kept: (time, from, to) of every change."""

    def __init__(self, policy):
        self.policy, self.name, self.changes = policy, policy.name, []

    def route(self, ctx):
        return self.policy.route(ctx)

    def plan_capacity(self, ctx):
        d = self.policy.plan_capacity(ctx)
        if d.instances != ctx.current_target:
            self.changes.append((ctx.now_s, ctx.current_target, d.instances))
        return d


# the default config's endpoint (a 10-min cold start from none) at gpt-4o prices
GAP_SETUP = ReplaySetup("m", "openai", "sagemaker", TokenPrices(2.5e-6, 10e-6),
                        EndpointSpec(1.408, 300.0, 0.02, min_instances=0, max_instances=4, startup_s=360.0,
                                     context_window=8192, startup_from_zero_s=600.0))


def poisson_rows(rng, start, end, per_hour, prompt, completion) -> list:
    """Poisson arrivals over [start, end) with token counts drawn from the (low, high) ranges."""
    rows, t = [], start
    while (t := t + rng.expovariate(per_hour / 3600)) < end:
        rows.append((t, rng.randint(*prompt), rng.randint(*completion)))
    return rows


def assert_kept_through_the_gap_and_its_return(rows, back: float) -> None:
    """Replays ``rows`` with break_even: the count the gap ends with is not lowered from ``back`` on."""
    policy = Recorded(build_policy("break_even"))
    simulate(Trace.from_rows(rows), policy, GAP_SETUP, horizon_s=back + 3600)
    count = 0
    for t, _, to in policy.changes:
        if t < back:
            count = to
    assert count >= 1  # kept through the gap
    assert all(to >= count for t, _, to in policy.changes if t >= back)  # and through the return


def test_the_return_after_a_collection_gap_keeps_the_instance_the_gap_kept():
    # Two busy hours at 9,000 req/h (gpt-4o prices: three instances), two hours with a trickle of
    # ten requests (a gap in collection, as ServeGen's m-mid shape has), and the same traffic back.
    # A cold start of that traffic costs more than two idle hours of one instance, so one is kept
    # through the gap; the return must not release it. The forecast's 5-min window still reads the
    # gap, and the return's first requests are a new step in an hour of nothing (measured as
    # burstiness, they made one instance look worthless): it was released 10 s into the return and
    # started cold three minutes later. (The handful-of-requests mix, the third cause on m-mid, is
    # tested on its own in tests/routing_policies.)
    rng = random.Random(1)
    rows = poisson_rows(rng, 0, 7200, 9000, (200, 2000), (50, 400))
    back = 4 * 3600
    rows += [(7200 + (i + 0.5) * 720, rng.randint(200, 2000), rng.randint(50, 400)) for i in range(10)]
    rows += poisson_rows(rng, back, back + 3600, 9000, (200, 2000), (50, 400))
    assert_kept_through_the_gap_and_its_return(rows, back)


def test_a_gap_kept_through_is_not_released_once_the_traffic_is_back():
    # Three busy hours (code-like requests at 6,500 req/h, gpt-4o prices: one instance), two hours
    # without a request, and the traffic back, its first minutes sparse. Through the gap the
    # restart a release risks includes the half-hour the hour-long forecast window would take to
    # notice the return, and the instance is kept. The return shortens the forecast window, the
    # restart looks cheaper than the idle hours already paid, and the instance was released three
    # minutes into the return while its forecast said it was needed (m-mid code arrivals at
    # 4,000 req/h: a cold start of that traffic three minutes later, 5.85 USD of API). A release
    # waits for a tick where keeping costs more.
    rng = random.Random(3)
    rows = poisson_rows(rng, 0, 3 * 3600, 6500, (1500, 2500), (10, 50))
    back = 5 * 3600
    for minute, n in enumerate((27, 5, 3)):  # the return's first minutes: a clump, then a trickle
        rows += sorted((back + minute * 60 + rng.uniform(0, 60), 2000, 30) for _ in range(n))
    rows += poisson_rows(rng, back + 180, back + 3600, 6500, (1500, 2500), (10, 50))
    assert_kept_through_the_gap_and_its_return(rows, back)


def test_no_online_policy_is_at_or_below_the_best_static_one_on_every_trace():
    # Issue 7 asks break_even never to be above the best static policy. At a cold start no online
    # policy can promise that. H is busy from t = 0 (1,500 req/h, gpt-4o prices), so fixed_1,
    # which starts its instance before any traffic, is the best static policy there. Take any
    # policy whose first start on H comes at d, and L_d, H's requests before d and nothing after.
    # Both traces have the same past at d, so the policy starts at d on L_d too. On L_d it pays a
    # start-up that serves nothing, above always_api; on H it serves d seconds after fixed_1 does,
    # above fixed_1 (d > 0) or, with d = 0, it is fixed_1, which L_0 shows to be a bet. Shown here for
    # break_even, for a start before any traffic, at the first request, and two minutes in.
    rows = poisson_rows(random.Random(7), 0, 6 * 3600, 1500, (200, 2000), (50, 400))
    horizon = 6 * 3600

    def spend(trace_rows, policy) -> float:
        return simulate(Trace.from_rows(trace_rows), policy, GAP_SETUP, horizon_s=horizon).spend_usd

    def best_static(trace_rows) -> float:
        return min([spend(trace_rows, build_policy("always_api"))]
                   + [spend(trace_rows, build_policy("fixed", {"instances": k})) for k in (1, 2, 3, 4)])

    best_h = best_static(rows)
    rules = [("break_even", lambda: Recorded(build_policy("break_even"))),
             ("before any traffic", lambda: ScriptedCapacity([(0.0, 1)])),
             ("at the first request", lambda: ScriptedCapacity([(0.0, 0), (rows[0][0], 1)])),
             ("two minutes in", lambda: ScriptedCapacity([(0.0, 0), (120.0, 1)]))]
    for name, make in rules:
        policy = make()
        on_h = spend(rows, policy) - best_h
        if isinstance(policy, Recorded):
            d = policy.changes[0][0]
        else:  # the first capacity tick at or after the script's start
            d = math.ceil(policy.script[-1][0] / GAP_SETUP.capacity_interval_s) * GAP_SETUP.capacity_interval_s
        prefix = [r for r in rows if r[0] < d] or rows[:1]  # the same past as H at d (before anything: any)
        on_l = spend(prefix, make()) - best_static(prefix)
        assert on_h > 0 or on_l > 0, name
        if name == "break_even":
            # what it pays for waiting to see the traffic: the saving it missed before starting, which
            # its ski rental holds to about one start-up's billing (600 s at 1.408 USD/h: 0.235 USD)
            startup_billing = GAP_SETUP.endpoint.hourly_price_usd * 600.0 / 3600.0
            assert 0 < on_h < startup_billing and on_l > 0  # (on L_d, then the gap's own ski rental)
