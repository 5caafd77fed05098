"""Unit tests of the break-even policy and its economics: pure, no I/O, fast."""
from __future__ import annotations

import math
import random

import pytest

from routing_policies import (
    API, ENDPOINT, BackendView, CapacityContext, EndpointSpec, RequestContext, TokenPrices,
    VolumeWindow, build_policy, policy_names,
)
from routing_policies.capacity import (
    TrafficMix, break_even_requests_per_hour, cheapest_instances, endpoint_ever_pays_off,
    expected_overflow_per_hour, instance_capacity_per_hour,
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
    assert expected_overflow_per_hour(0, 1e6, 200, 10, 1) == 0
    assert expected_overflow_per_hour(5e5, 0, 200, 10, 1) == 5e5
    # far above capacity: the excess overflows
    assert expected_overflow_per_hour(1e7, 1e6, 200, 10, 1) == pytest.approx(9e6, rel=1e-3)
    # far below: next to nothing
    assert expected_overflow_per_hour(1e5, 1e6, 200, 10, 1) < 1e-6
    # more capacity never overflows more
    values = [expected_overflow_per_hour(1e6, c, 200, 10, 1) for c in (5e5, 1e6, 1.5e6, 2e6)]
    assert values == sorted(values, reverse=True)


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


def test_scales_up_above_break_even():
    d = build_policy("break_even").plan_capacity(cap_ctx(8_000, current=0))
    assert d.reason == "volume_above_break_even"
    assert d.instances >= 2  # 8,000 req/h × 234 capacity tokens > one instance's 1.08 M/h
    assert d.break_even_requests_per_hour == pytest.approx(1.408 / mix(GPT4O).api_usd_per_request)


def test_no_traffic_is_min_instances():
    d = build_policy("break_even").plan_capacity(cap_ctx(0, current=0))
    assert (d.instances, d.reason) == (0, "no_traffic")


def test_below_break_even_stays_at_zero():
    d = build_policy("break_even").plan_capacity(cap_ctx(50, current=0))  # break-even ~280 req/h
    assert d.instances == 0


def test_scale_up_must_pay_back_its_start_up():
    # just above break-even the hourly saving is tiny; with a short payback the start-up is not worth it
    d = build_policy("break_even", {"payback_s": 60}).plan_capacity(cap_ctx(1_000, current=0))
    assert (d.instances, d.reason) == (0, "startup_not_paid_back")


def test_scale_down_waits_for_min_dwell_then_goes():
    policy = build_policy("break_even", {"min_dwell_s": 900})
    early = policy.plan_capacity(cap_ctx(50, current=2, now=1_000, last_change=500))
    assert (early.instances, early.reason) == (2, "min_dwell")
    late = policy.plan_capacity(cap_ctx(50, current=2, now=2_000, last_change=500))
    assert (late.instances, late.reason) == (0, "volume_below_break_even")


def test_hysteresis_holds_just_below_the_threshold():
    m = mix(GPT4O)
    # the volume at which the cheapest count drops from 2 to 1
    lo, hi = 1.0, 20_000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cheapest_instances(SPEC, m, mid * m.capacity_tokens_per_request)[0] < 2 else (lo, mid)
    threshold = hi
    policy = build_policy("break_even", {"hysteresis": 0.2})
    d = policy.plan_capacity(cap_ctx(threshold * 0.95, current=2, now=10_000, last_change=0))
    assert (d.instances, d.reason) == (2, "hysteresis")
    d = policy.plan_capacity(cap_ctx(threshold * 0.5, current=2, now=10_000, last_change=0))
    assert d.instances == 1 and d.reason == "volume_below_break_even"


def test_bad_parameter_is_named():
    with pytest.raises(ValueError, match="hysteresis"):
        build_policy("break_even", {"hysteresis": 1.5})
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
    target, last_change, targets = 0, 0.0, []
    for now in range(0, seconds, step):
        wins = []
        for s in (60, 300, 3600):
            n = cum[now] - cum[max(0, now - s)]
            wins.append(VolumeWindow(float(s), n, n * CONV[0], n * CONV[1]))
        d = policy.plan_capacity(CapacityContext(float(now), SPEC, prices, tuple(wins), target, target, last_change))
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
    naive = build_policy("break_even", {"hysteresis": 0, "min_dwell_s": 0, "forecast_window_s": 60})
    assert changes(drive(naive, rates, len(rates))) > 50


def test_noisy_traffic_around_a_threshold_does_not_flap():
    rng = random.Random(7)
    v = _threshold_2()
    rates = [v * (1 + 0.05 * math.sin(t / 600)) * rng.uniform(0.5, 1.5) for t in range(6 * 3600)]
    targets = drive(build_policy("break_even"), rates, len(rates))
    assert changes(targets) <= 3


def test_follows_a_real_step():
    v = _threshold_2()
    rates = [v * 0.3] * 3600 + [v * 3] * 3600 + [v * 0.3] * 3600
    targets = drive(build_policy("break_even"), rates, len(rates))
    assert targets[3600 // 5 - 1] <= 1
    assert targets[2 * 3600 // 5 - 1] >= 2  # up within the hour of high traffic
    assert targets[-1] <= 1  # and down again after it


# -- per-request decision -------------------------------------------------------------------------

def req(prompt=100, max_tokens=100, in_service=1, load=0.0, healthy=True, window=8192):
    api = BackendView("openai", API, True, GPT4O)
    ep = BackendView("sagemaker", ENDPOINT, healthy, None, window, in_service, 300.0, load)
    return RequestContext("m", prompt, max_tokens, (api, ep), 0.0)


@pytest.mark.parametrize("ctx,backend,reason", [
    (req(), "sagemaker", "endpoint_in_service"),
    (req(prompt=8000, max_tokens=500), "openai", "context_too_long"),
    (req(prompt=8000, max_tokens=500, in_service=0), "openai", "context_too_long"),  # context first
    (req(in_service=0), "openai", "endpoint_not_in_service"),
    (req(load=300.0), "openai", "endpoint_at_capacity"),
    (req(in_service=2, load=300.0), "sagemaker", "endpoint_in_service"),
    (req(healthy=False), "openai", "endpoint_unhealthy"),
])
def test_route(ctx, backend, reason):
    d = build_policy("break_even").route(ctx)
    assert (d.backend, d.reason) == (backend, reason)
