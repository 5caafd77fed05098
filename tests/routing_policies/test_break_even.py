"""Unit tests of the break-even policy and its economics: pure, no I/O, fast."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest

from routing_policies import (
    API, ENDPOINT, BackendView, CapacityContext, EndpointSpec, LoadMoments, RequestContext, TokenPrices,
    VolumeWindow, build_policy, policy_names,
)
from routing_policies.capacity import (
    TrafficMix, break_even_requests_per_hour, cheapest_instances, costs_by_instances, costs_over_levels,
    endpoint_ever_pays_off, expected_overflow_per_hour, instance_capacity_per_hour, level_spread,
    measured_dispersion, poisson_dispersion,
)

SPEC = EndpointSpec(hourly_price_usd=1.408, max_tokens_per_second=300.0, prompt_token_weight=0.02,
                    min_instances=0, max_instances=4, startup_s=360.0, context_window=8192)
MINI = TokenPrices(0.15e-6, 0.60e-6)  # gpt-4o-mini, USD per token
GPT4O = TokenPrices(2.50e-6, 10.0e-6)  # gpt-4o
# Azure 2023 conversation trace means: 1,154.7 prompt and 211.1 completion tokens per request
CONV = (1154.7, 211.1)


def windows(req_per_hour: float, prompt=CONV[0], completion=CONV[1], seconds=(60.0, 300.0, 3600.0)):
    return tuple(
        VolumeWindow(s, req_per_hour * s / 3600, req_per_hour * s / 3600 * prompt, req_per_hour * s / 3600 * completion)
        for s in seconds
    )


def cap_ctx(req_per_hour=0.0, *, prices=GPT4O, current=0, in_service=None, now=10_000.0, last_change=0.0,
            spec=SPEC, wins=None):
    return CapacityContext(now, spec, prices, windows(req_per_hour) if wins is None else wins,
                           current if in_service is None else in_service, current, last_change)


def mix(prices, prompt=CONV[0], completion=CONV[1], rph=1000.0, spec=SPEC):
    return TrafficMix.from_totals(rph, rph * prompt, rph * completion, 3600.0, spec, prices)


# -- economics --------------------------------------------------------------------------------

def test_break_even_volume_by_hand():
    # gpt-4o, 1000 prompt + 200 completion: 1000 × 2.5e-6 + 200 × 10e-6 = 0.0045 USD/request;
    # 1.408 USD/h ÷ 0.0045 USD = 312.9 requests/hour
    m = mix(GPT4O, 1000, 200)
    assert m.api_usd_per_request == pytest.approx(0.0045)
    assert m.capacity_tokens_per_request == pytest.approx(200 + 0.02 * 1000)
    assert break_even_requests_per_hour(SPEC, m) == pytest.approx(1.408 / 0.0045)


def test_conversation_mix_never_pays_off_against_gpt_4o_mini():
    # API: (1154.7 × 0.15 + 211.1 × 0.60) / (211.1 + 0.02 × 1154.7) = 1.281 USD per 1M capacity tokens;
    # a full instance: 1.408 / (300 × 3600) = 1.304 USD per 1M: dearer even when full
    m = mix(MINI)
    assert m.api_usd_per_capacity_token * 1e6 == pytest.approx(1.2812, abs=1e-3)
    assert not endpoint_ever_pays_off(SPEC, m)
    assert break_even_requests_per_hour(SPEC, m) is None


def test_prompt_heavy_mix_pays_off_against_gpt_4o_mini():
    # Azure code: 2,048 prompt + 28 completion: prompt tokens are cheap for the endpoint
    m = mix(MINI, 2048, 28)
    assert endpoint_ever_pays_off(SPEC, m)
    be = break_even_requests_per_hour(SPEC, m)
    one_instance = instance_capacity_per_hour(SPEC) / m.capacity_tokens_per_request
    assert 0 < be < one_instance


def test_expected_overflow_limits():
    # volume and capacity in capacity tokens/hour; backlog limit in capacity tokens (300 tok/s × 30 s)
    assert expected_overflow_per_hour(0, 1.08e6, 9000, 200) == 0
    assert expected_overflow_per_hour(5e5, 0, 0, 200) == 5e5
    # far above capacity: the excess overflows
    assert expected_overflow_per_hour(1e7, 1.08e6, 9000, 200) == pytest.approx(1e7 - 1.08e6, rel=1e-3)
    # far below: next to nothing
    assert expected_overflow_per_hour(1e5, 1.08e6, 9000, 200) < 1e-6
    # at exactly full load the diffusion's loss is σ²/(2B) per second
    assert expected_overflow_per_hour(1.08e6, 1.08e6, 9000, 200) == pytest.approx(3600 * 300 * 200 / (2 * 9000))
    # more capacity never overflows more; burstier traffic overflows more
    values = [expected_overflow_per_hour(1e6, c, c / 120, 200) for c in (5e5, 1e6, 1.5e6, 2e6)]
    assert values == sorted(values, reverse=True)
    assert expected_overflow_per_hour(1e6, 1.08e6, 9000, 2000) > expected_overflow_per_hour(1e6, 1.08e6, 9000, 200)


def test_measured_dispersion_takes_the_longest_buckets_with_data():
    # dispersion = Allan variance (Σ steps² ÷ 2(count − 1)) ÷ mean
    poisson_like = LoadMoments(10.0, 360, 360 * 100.0, 0.0, 2 * 359 * 100.0 * 200)  # 200
    clumped = LoadMoments(60.0, 60, 60 * 600.0, 0.0, 2 * 59 * 600.0 * 3000)  # 3000
    assert measured_dispersion((poisson_like, clumped)) == pytest.approx(3000)
    assert measured_dispersion((poisson_like, LoadMoments(60.0, 3, 1800.0, 0.0, 1e6))) == pytest.approx(200)
    assert measured_dispersion(()) is None
    # a level that moved once (busy, then nothing) is not bursty, however different its halves
    ramp = LoadMoments(60.0, 60, 30 * 600.0, 30 * 600.0 ** 2, 600.0 ** 2)
    assert ramp.dispersion == pytest.approx(600.0 ** 2 / (2 * 59) / 300.0)


def test_cheapest_instances_grows_with_volume_and_stays_in_bounds():
    m = mix(GPT4O)
    counts = [cheapest_instances(SPEC, m, r * m.capacity_tokens_per_request)[0] for r in (0, 200, 2000, 8000, 1e6)]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] == SPEC.max_instances


# -- capacity decision ---------------------------------------------------------------------------

def test_never_pays_off_keeps_zero_and_says_so():
    policy = build_policy("break_even")
    for rph in (100, 5_000, 50_000):
        d = policy.plan_capacity(cap_ctx(rph, prices=MINI, current=2))
        assert (d.instances, d.reason) == (0, "endpoint_never_pays_off")
        assert d.break_even_requests_per_hour is None
        assert d.expected_requests_per_hour == pytest.approx(rph)


def test_never_pays_off_respects_min_instances():
    spec = EndpointSpec(1.408, 300.0, 0.02, min_instances=1, max_instances=4, startup_s=360, context_window=8192)
    d = build_policy("break_even").plan_capacity(cap_ctx(5_000, prices=MINI, current=3, spec=spec))
    assert d.instances == 1


def steady(policy, req_per_hour, seconds, *, current=0, start=10_000.0, prices=GPT4O, step=5.0, memo=None):
    """Ask the capacity decision every ``step`` s at a steady volume, carrying target and memo like the
    gateway does; returns the decisions."""
    memo, last_change, out = dict(memo or {}), start - 10_000.0, []
    now = start
    while now < start + seconds:
        d = policy.plan_capacity(CapacityContext(now, SPEC, prices, windows(req_per_hour), current, current,
                                                 last_change, memo))
        if d.instances != current:
            current, last_change = d.instances, now
        memo = dict(d.memo)
        out.append(d)
        now += step
    return out


def test_scales_up_above_break_even():
    decisions = steady(build_policy("break_even"), 8_000, 300)
    ups = [d for d in decisions if d.reason == "volume_above_break_even"]
    assert ups and ups[-1].instances >= 2  # 8,000 req/h × 234 capacity tokens > one instance's 1.08 M/h
    assert decisions[-1].instances >= 2
    assert len(decisions) - decisions.index(ups[-1]) > 30  # within the first 150 s: a ramp keeps its claim
    assert ups[0].break_even_requests_per_hour == pytest.approx(1.408 / mix(GPT4O).api_usd_per_request)


def test_no_traffic_is_min_instances():
    d = build_policy("break_even").plan_capacity(cap_ctx(0, current=0))
    assert (d.instances, d.reason) == (0, "no_traffic")


def test_below_break_even_stays_at_zero():
    decisions = steady(build_policy("break_even"), 50, 3600)  # break-even ~280 req/h
    assert {d.instances for d in decisions} == {0}


def test_level_spread_is_the_wander_of_the_level_not_the_noise():
    # 60 one-minute buckets: noise alone (plain variance = Allan variance) is no wander
    noise = LoadMoments(60.0, 60, 60 * 100.0, 60 * (100.0 ** 2 + 400.0), 2 * 59 * 400.0)
    assert level_spread((noise,)) == 0.0
    # a busy quarter-hour at twice the rest's load, without noise: sd 43.3 around a mean of 125
    quarter = [200.0] * 15 + [100.0] * 45
    busy = LoadMoments(60.0, 60, sum(quarter), sum(x * x for x in quarter),
                       sum((b - a) ** 2 for a, b in zip(quarter, quarter[1:])))
    assert level_spread((busy,)) == pytest.approx(math.sqrt(0.25 * 0.75) * 100.0 / 125.0, rel=0.03)
    assert level_spread(()) == 0.0 and level_spread((LoadMoments(60.0, 3, 300.0, 1e6, 0.0),)) == 0.0


def test_costs_over_levels_price_the_busy_half():
    m = mix(GPT4O, rph=8_000.0)
    volume = 8_000.0 * m.capacity_tokens_per_request  # below two instances' 2.16M tokens/hour
    flat = costs_by_instances(SPEC, m, volume, 700.0)
    assert costs_over_levels(SPEC, m, volume, 700.0, 0.0) == flat
    spread = costs_over_levels(SPEC, m, volume, 700.0, 0.35)
    # overflow is convex in the load: the busy half's overflow is more than the calm half's saves
    assert all(s >= f - 1e-12 for s, f in zip(spread, flat))
    assert spread[2] - spread[3] > 3 * (flat[2] - flat[3])


def test_a_marginal_instance_is_priced_at_the_levels_the_hour_ran_at():
    # three instances; the hour averaged 8,000 req/h, which two could carry on average. Then a lull.
    # In an hour whose level wandered (a busy quarter above what two can carry) the third instance's
    # restart costs more than at a steady 8,000 req/h, so it is kept longer through the same lull.
    rph, cap_req = 8_000.0, CONV[1] + SPEC.prompt_token_weight * CONV[0]
    mean = rph / 60.0 * cap_req  # capacity tokens per one-minute bucket
    allan = 700.0 * mean

    def release_after(wander_sd: float) -> int:
        moments = (LoadMoments(60.0, 60, 60 * mean, 60 * (mean ** 2 + wander_sd ** 2 + allan), 2 * 59 * allan),)
        hour = VolumeWindow(3600.0, rph, rph * CONV[0], rph * CONV[1], moments)
        wins = windows(1e-6)[:2] + (hour,)
        policy, memo = build_policy("break_even"), {"at": 20_000.0, "level": rph * cap_req}
        for step in range(5, 3 * 3600, 5):
            d = policy.plan_capacity(CapacityContext(20_000.0 + step, SPEC, GPT4O, wins, 3, 3, 0.0, memo))
            memo = dict(d.memo)
            if d.instances < 3:
                return step
        return 3 * 3600

    steady, wandering = release_after(0.0), release_after(0.35 * mean)
    assert steady < 3600
    assert wandering >= 1.5 * steady


def test_scale_up_waits_until_the_missed_saving_covers_a_start_up():
    # just above break-even (400 req/h against ~280) one instance saves about 0.5 USD/hour; its start-up
    # billing is 1.408 × 360 / 3600 = 0.141 USD, so the account needs ~17 minutes of such traffic
    decisions = steady(build_policy("break_even"), 400, 3600)
    first = next(i for i, d in enumerate(decisions) if d.instances > 0)
    assert 10 * 60 <= first * 5 <= 25 * 60
    assert {d.reason for d in decisions[:first]} == {"startup_not_paid_back"}


def test_scale_down_is_ski_rental():
    # one instance serving 1,500 req/h (gpt-4o); then the traffic stops. Releasing it risks a restart:
    # two start-ups' worth (its billing, and the account a new start must build) plus the API spend, at
    # the level traffic returns at, while the forecast notices the return and the instance starts;
    # keeping it wastes 1.408 USD/hour. It is kept at least as long as the start-up billing alone
    # would take to waste (6 minutes), and released within the hour.
    policy = build_policy("break_even")
    busy = steady(policy, 1_500, 3600)
    assert busy[-1].instances == 1
    quiet_wins = windows(1e-6)[:2] + (VolumeWindow(3600.0, 750.0, 750.0 * CONV[0], 750.0 * CONV[1]),)
    memo, now, released, decisions = dict(busy[-1].memo), 10_000.0 + 3600, None, []
    for step in range(0, 4 * 3600, 5):
        d = policy.plan_capacity(CapacityContext(now + step, SPEC, GPT4O, quiet_wins, 1, 1, 0.0, memo))
        memo = dict(d.memo)
        decisions.append(d.reason)
        if d.instances == 0:
            released = step
            assert d.reason == "idle_cost_above_restart_cost"
            break
    assert released is not None and 2 * 360 <= released <= 3600
    assert set(decisions[:-1]) == {"keep_for_restart"}


def test_a_busy_spell_pays_the_idle_account_down():
    policy = build_policy("break_even")
    memo = {"at": 0.0, "0": 0.10}
    d = policy.plan_capacity(CapacityContext(60.0, SPEC, GPT4O, windows(3_000), 1, 1, 0.0, memo))
    assert d.instances == 1 and d.memo["0"] == 0.0


def test_bad_parameter_is_named():
    with pytest.raises(ValueError, match="restart_weight"):
        build_policy("break_even", {"restart_weight": -1})
    # infinity passed the range checks (a forecast window of forever), and a string ("1e308", as YAML
    # reads it) failed them with a Python comparison error that named no parameter
    for key, value in (("restart_weight", float("nan")), ("forecast_window_s", float("inf")),
                       ("min_dwell_s", "1e308"), ("hour_headroom", True)):
        with pytest.raises(ValueError, match=f"parameter {key} must be a finite number"):
            build_policy("break_even", {key: value})
    with pytest.raises(TypeError):
        build_policy("break_even", {"no_such_knob": 1})


def test_registered():
    assert "break_even" in policy_names()


# -- no flapping ------------------------------------------------------------------------------------

def drive(policy, rate_per_s, seconds: int, step: int = 5, prices=GPT4O):
    """Feed per-second request rates to the capacity decision like the gateway does; return targets.

    Instances are in service immediately: the point is the decision, not the start-up.
    """
    cum = [0.0]
    for r in rate_per_s:
        cum.append(cum[-1] + r)
    target, last_change, targets, memo = 0, 0.0, [], {}
    for now in range(0, seconds, step):
        wins = []
        for s in (60, 300, 3600):
            n = cum[now] - cum[max(0, now - s)]
            wins.append(VolumeWindow(float(s), n, n * CONV[0], n * CONV[1]))
        d = policy.plan_capacity(CapacityContext(float(now), SPEC, prices, tuple(wins), target, target, last_change,
                                                 memo))
        memo = dict(d.memo)
        if d.instances != target:
            target, last_change = d.instances, float(now)
        targets.append(target)
    return targets


def changes(targets):
    return sum(1 for a, b in zip(targets, targets[1:]) if a != b)


def _threshold_2(prices=GPT4O):
    """Requests/second where the cheapest count goes from 1 to 2."""
    m = mix(prices)
    lo, hi = 1.0, 20_000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cheapest_instances(SPEC, m, mid * m.capacity_tokens_per_request)[0] < 2 else (lo, mid)
    return hi / 3600


def test_spiky_traffic_around_a_threshold_does_not_flap():
    # one minute at 1.4× the 1→2 threshold, one minute at 0.6×, for four hours
    v = _threshold_2()
    rates = [v * (1.4 if (t // 60) % 2 == 0 else 0.6) for t in range(4 * 3600)]
    targets = drive(build_policy("break_even"), rates, len(rates))
    assert changes(targets[120:]) <= 1  # after the first ramp-up: at most one settling step
    # the same traffic does flap a policy without its brakes: the test can tell
    naive = build_policy("break_even", {"restart_weight": 0, "min_dwell_s": 0, "forecast_window_s": 60})
    assert changes(drive(naive, rates, len(rates))) > 50


def test_noisy_traffic_around_a_threshold_does_not_flap():
    rng = random.Random(7)
    v = _threshold_2()
    rates = [v * (1 + 0.05 * math.sin(t / 600)) * rng.uniform(0.5, 1.5) for t in range(6 * 3600)]
    targets = drive(build_policy("break_even"), rates, len(rates))
    # the ±5 % swing crosses the threshold every ~31 minutes (11 times in 6 h): at most one change per
    # crossing, each paid for by an account worth a start-up; the per-second noise changes nothing
    assert changes(targets) <= 12
    naive = build_policy("break_even", {"restart_weight": 0, "min_dwell_s": 0, "forecast_window_s": 60})
    assert changes(drive(naive, rates, len(rates))) > 3 * max(1, changes(targets))


def test_follows_a_real_step():
    v = _threshold_2()
    rates = [v * 0.3] * 3600 + [v * 3] * 3600 + [v * 0.3] * 3600
    targets = drive(build_policy("break_even"), rates, len(rates))
    assert targets[3600 // 5 - 1] <= 1
    assert targets[2 * 3600 // 5 - 1] >= 2  # up within the hour of high traffic
    assert targets[-1] <= 1  # and down again after it



def test_peaks_of_minutes_start_no_second_instance():
    # an hour at 0.6× the 1→2 threshold, then 10-minute peaks at 1.5× once an hour for six hours:
    # each peak is over soon after a second instance would be in service, and the hour's rate
    # (at most 0.75× the threshold) never asks for one
    v = _threshold_2()
    rates = [v * 0.6] * 3600 + [v * (1.5 if (t % 3600) < 600 else 0.6) for t in range(6 * 3600)]
    targets = drive(build_policy("break_even"), rates, len(rates))
    assert max(targets) == 1
    # without the rule the same traffic starts one on the peaks: the test can tell
    assert max(drive(build_policy("break_even", {"hour_headroom": 0}), rates, len(rates))) >= 2


def test_a_lull_of_minutes_does_not_lift_the_cap_on_peaks_of_minutes():
    # the traffic above with six silent minutes before each peak: the lull is no quiet hour, and
    # the hour before it still shows what rate recurs (a cap on the 5-min rate's lulls alone let
    # the peaks start a second instance for 1,608 of these ticks)
    v = _threshold_2()
    def rate(t):
        at = t % 3600
        return 0.0 if at < 360 else v * 1.5 if at < 960 else v * 0.6
    rates = [v * 0.6] * 3600 + [rate(t) for t in range(6 * 3600)]
    assert max(drive(build_policy("break_even"), rates, len(rates))) == 1


def test_a_fresh_process_counts_the_hour_it_has_watched():
    # a process that starts into traffic 3× the 1→2 threshold has seen ten minutes, not an hour: its
    # windows say so (``VolumeWindow.seconds``: the watched part), and the second instance is not held
    # back by an hour that is mostly unwatched
    v = _threshold_2()
    targets = []
    policy, memo, target, last = build_policy("break_even"), {}, 0, 0.0
    for now in range(600, 1800, 5):  # its first decision at t = 600 s, with 600 s watched
        wins = tuple(VolumeWindow(float(min(s, now)), v * 3 * min(s, now), v * 3 * min(s, now) * CONV[0],
                                  v * 3 * min(s, now) * CONV[1]) for s in (60, 300, 3600))
        d = policy.plan_capacity(CapacityContext(float(now), SPEC, GPT4O, wins, target, target, last, memo))
        memo = dict(d.memo)
        if d.instances != target:
            target, last = d.instances, float(now)
        targets.append(target)
    assert memo["busy"] == 600.0
    assert max(targets) >= 2


def test_a_return_after_a_gap_is_not_held_back_by_the_gap():
    # two busy hours at 3× the 1→2 threshold, an hour with a trickle of requests (a gap in
    # collection, far below break-even), and the same traffic again: the hour window then holds
    # the gap, and read as the hour's rate it would hold the second instance back for most of an
    # hour. The watched hour starts where traffic fell below break-even.
    v = _threshold_2()
    rates = [v * 3] * 7200 + [v * 0.01] * 3600 + [v * 3] * 3600
    targets = drive(build_policy("break_even"), rates, len(rates))
    back = 3 * 3600 // 5
    assert max(targets[back - 12:back]) <= 1  # the gap released the second instance
    again = next(i for i in range(back, len(targets)) if targets[i] >= 2)
    assert (again - back) * 5 <= 15 * 60, (again - back) * 5


# -- per-request decision -------------------------------------------------------------------------

def req(prompt=100, max_tokens=100, in_service=1, backlog=0.0, healthy=True, window=8192, bound=False):
    api = BackendView("openai", API, True, GPT4O)
    ep = BackendView("sagemaker", ENDPOINT, healthy, None, window, in_service, 300.0, backlog, queue_s=30.0)
    return RequestContext("m", prompt, max_tokens, (api, ep), 0.0, prompt_tokens_is_bound=bound)


@pytest.mark.parametrize("ctx,backend,reason", [
    (req(), "sagemaker", "endpoint_in_service"),
    (req(prompt=8000, max_tokens=500), "openai", "context_too_long"),
    (req(prompt=8000, max_tokens=500, in_service=0), "openai", "context_too_long"),  # context first
    # a byte length above the window proves nothing: at 0 instances only that is reported
    (req(prompt=8000, max_tokens=500, in_service=0, bound=True), "openai", "endpoint_not_in_service"),
    (req(prompt=8000, max_tokens=500, bound=True), "openai", "context_too_long"),  # the caller counted first
    (req(prompt=7000, max_tokens=500, bound=True), "sagemaker", "endpoint_in_service"),  # a bound below proves it
    (req(in_service=0), "openai", "endpoint_not_in_service"),
    (req(backlog=9000.0), "openai", "endpoint_at_capacity"),  # 300 tok/s × 30 s held: full
    (req(backlog=8999.0), "sagemaker", "endpoint_in_service"),
    (req(in_service=2, backlog=9000.0), "sagemaker", "endpoint_in_service"),
    (req(healthy=False), "openai", "endpoint_unhealthy"),
])
def test_route(ctx, backend, reason):
    d = build_policy("break_even").route(ctx)
    assert (d.backend, d.reason) == (backend, reason)


def test_startup_from_zero_is_its_own_delay():
    cold = dataclasses.replace(SPEC, startup_from_zero_s=720.0)
    assert (cold.startup_for(0), cold.startup_for(1), cold.startup_for(3)) == (720.0, 360.0, 360.0)
    assert SPEC.startup_for(0) == SPEC.startup_s == 360.0  # not set: the same as adding one


def test_a_cold_start_must_be_paid_back_before_scaling_up_from_zero():
    # the start-up billing a scale-up from 0 risks is the from-zero one: twice as long, twice the account
    def first_up(spec):
        policy, memo, now = build_policy("break_even"), {}, 10_000.0
        for i in range(3600 // 5):
            d = policy.plan_capacity(CapacityContext(now + 5 * i, spec, GPT4O, windows(400), 0, 0, 0.0, memo))
            memo = dict(d.memo)
            if d.instances > 0:
                return 5 * i
        return None

    warm, cold = first_up(SPEC), first_up(dataclasses.replace(SPEC, startup_from_zero_s=720.0))
    assert warm is not None and cold is not None
    assert 1.8 * warm <= cold <= 2.2 * warm


def test_an_hour_without_requests_is_ski_rental_too():
    # two busy hours (3× the 1→2 threshold, gpt-4o prices), then silence. Once the hour window is
    # empty there is no traffic to measure, but a restart still costs a cold start's billing and
    # the API bill until the instance serves again: more than another hour of one instance. So a
    # 70-minute silence keeps one; a six-hour one releases everything before it ends.
    v = _threshold_2()
    busy = [v * 3] * 7200
    short = drive(build_policy("break_even"), busy + [0.0] * 4200 + busy, 2 * 7200 + 4200)
    assert min(short[7200 // 5:(7200 + 4200) // 5]) >= 1
    long = drive(build_policy("break_even"), busy + [0.0] * 6 * 3600, 7200 + 6 * 3600)
    assert long[-1] == 0


def test_the_return_of_traffic_does_not_release_the_instance_kept_through_its_gap():
    # two busy hours (3× the 1→2 threshold), two silent hours, the same traffic again. The gap's
    # account grows towards the restart's price all the while; the return must pay it down, not
    # tip it over: the forecast's 5-min window still reads the gap for minutes, but the last
    # minute says the instance is needed. (Without that, it was released 5 s after the return
    # and restarted minutes later: a cold start of API traffic at the busy rate.)
    v = _threshold_2()
    busy = [v * 3] * 7200
    targets = drive(build_policy("break_even"), busy + [0.0] * 7200 + busy, 3 * 7200)
    back = 2 * 7200 // 5
    assert targets[back - 1] == 1  # kept through the gap (the return costs more than two idle hours)
    assert min(targets[back:]) >= 1


def test_a_trickle_is_priced_at_the_last_mix_measured_on_enough_requests():
    # after busy conversation traffic, a quiet hour's handful of requests (here three short ones)
    # says little about what a request costs; priced on them, the restart a release risks would
    # swing with each request. The mix measured on enough requests stands until there are that many
    policy = build_policy("break_even")
    busy = steady(policy, 3_000, 600)
    memo = dict(busy[-1].memo)
    trickle = tuple(VolumeWindow(s, 3.0, 3 * 20.0, 3 * 10.0) for s in (60.0, 300.0, 3600.0))
    d = policy.plan_capacity(CapacityContext(20_000.0, SPEC, GPT4O, trickle, 1, 1, 0.0, memo))
    assert d.details["api_usd_per_request"] == pytest.approx(GPT4O.request_cost(*CONV))
    fresh = policy.plan_capacity(CapacityContext(20_000.0, SPEC, GPT4O, trickle, 0, 0, 0.0, {}))
    assert fresh.details["api_usd_per_request"] == pytest.approx(GPT4O.request_cost(20.0, 10.0))  # nothing better known


def test_an_instance_the_hours_busy_minutes_need_is_kept_at_the_average():
    # three instances at 8,000 req/h, which two carry on average. If the hour was that steady, the
    # third costs more than the overflow it saves and is released. If its level wandered (a busy
    # quarter above what two carry, a calm rest), the third is worth its price in the busy minutes,
    # which are what overflow is made of: kept. Starting one is still judged at the rate now.
    rph, cap_req = 8_000.0, CONV[1] + SPEC.prompt_token_weight * CONV[0]
    mean = rph / 60.0 * cap_req  # capacity tokens per one-minute bucket
    allan = 700.0 * mean

    def count_after_two_hours(wander_sd: float, current: int = 3) -> int:
        moments = (LoadMoments(60.0, 60, 60 * mean, 60 * (mean ** 2 + wander_sd ** 2 + allan), 2 * 59 * allan),)
        wins = windows(rph)[:2] + (VolumeWindow(3600.0, rph, rph * CONV[0], rph * CONV[1], moments),)
        policy, memo = build_policy("break_even"), {"at": 20_000.0, "level": rph * cap_req}
        for step in range(5, 2 * 3600, 5):
            d = policy.plan_capacity(CapacityContext(20_000.0 + step, SPEC, GPT4O, wins, current, current, 0.0, memo))
            memo, current = dict(d.memo), d.instances
        return current

    assert count_after_two_hours(0.0) == 2
    assert count_after_two_hours(0.35 * mean) == 3
    assert count_after_two_hours(0.35 * mean, current=2) == 2  # not started for the busy quarter


def test_a_burst_in_the_last_minute_holds_a_ripe_release_at_the_measured_burstiness():
    # two instances; the hour ran at 1,000 req/h of bursty load (20x a Poisson load's dispersion),
    # which one instance carries, and the account for one is far past a restart's price. If the last
    # minute ran at that rate, the second instance goes. If it ran at 2,500 req/h (a burst), the
    # release waits: at the measured burstiness two instances are needed for it, though a Poisson
    # load at that rate would not need them
    m = mix(GPT4O)
    cap = m.capacity_tokens_per_request
    mean = 1_000.0 / 60.0 * cap  # capacity tokens per one-minute bucket
    allan = 20.0 * poisson_dispersion(m) * mean
    moments = (LoadMoments(60.0, 60, 60 * mean, 60 * (mean ** 2 + allan), 2 * 59 * allan),)
    hour = VolumeWindow(3600.0, 1_000.0, 1_000.0 * CONV[0], 1_000.0 * CONV[1], moments)

    def decide(last_minute_rph):
        wins = windows(last_minute_rph, seconds=(60.0,)) + windows(1_000.0, seconds=(300.0,)) + (hour,)
        return build_policy("break_even").plan_capacity(
            CapacityContext(20_000.0, SPEC, GPT4O, wins, 2, 2, 0.0, {"at": 19_995.0, "level": 1_000.0 * cap, "1": 10.0}))

    assert decide(1_000.0).instances == 1
    burst = decide(2_500.0)
    assert burst.instances == 2 and burst.reason == "keep_for_restart"
    assert cheapest_instances(SPEC, m, 2_500.0 * cap)[0] == 1  # a Poisson load at the burst's rate: one


def test_the_load_is_the_windows_tokens_not_their_request_count():
    # two instances at 6,500 req/h, which one cannot carry. For two hours the requests come at
    # half that rate but twice the size (real hours do this: bursts of short requests, lulls of
    # long ones): the load is unchanged and both instances stay. Counted in requests at the hour's
    # size it would look like 3,250 req/h, which one instance carries, and the second would go. A
    # real lull (half the requests at the same size) does release it
    rph = 6_500.0
    hour = windows(rph, seconds=(3600.0,))

    def count_after_two_hours(size: float) -> int:
        recent = windows(rph / 2, prompt=CONV[0] * size, completion=CONV[1] * size, seconds=(60.0, 300.0))
        policy, memo, current = build_policy("break_even"), {}, 2
        for step in range(0, 7200, 5):
            d = policy.plan_capacity(CapacityContext(20_000.0 + step, SPEC, GPT4O, recent + hour, current,
                                                     current, 0.0, memo))
            memo, current = dict(d.memo), d.instances
        return current

    assert count_after_two_hours(2.0) == 2
    assert count_after_two_hours(1.0) == 1


def test_a_new_level_at_an_hours_start_is_not_held_to_the_hours_rate():
    # an hour at 1.5× the 1→2 threshold (two instances), then 4× it (four): the watched hour's rate
    # lags the new level, and held to it the last instances waited half an hour (30.3 minutes) while
    # every minute missed more than starting them could waste (m-mid conversation 8,000, hour 146:
    # 12.59 USD where three instances cost 4.22). Once the last minute has run above the hour's rate
    # for a start-up plus a dwell, and the missed saving covers a wrong start, they start
    v = _threshold_2()
    rates = [v * 1.5] * 3600 + [v * 4.0] * 2400
    targets = drive(build_policy("break_even"), rates, len(rates))
    step = 3600 // 5
    assert targets[step - 1] == 2
    assert targets[step + 12 * 60 // 5] == 4
