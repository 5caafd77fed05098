"""Unit tests of the baseline policies (always_api, always_selfhosted, first_healthy)."""
from __future__ import annotations

import pytest

from routing_policies import (
    API, ENDPOINT, BackendView, CapacityContext, EndpointSpec, RequestContext, TokenPrices, build_policy,
)

SPEC = EndpointSpec(1.408, 300.0, 0.02, min_instances=1, max_instances=3, startup_s=360, context_window=8192)
PRICES = TokenPrices(0.15e-6, 0.60e-6)


def req(prompt=100, max_tokens=100, in_service=1, load=0.0, api_healthy=True, api_first=True):
    api = BackendView("openai", API, api_healthy, PRICES)
    ep = BackendView("sagemaker", ENDPOINT, True, None, 8192, in_service, 300.0, load)
    return RequestContext("m", prompt, max_tokens, (api, ep) if api_first else (ep, api), 0.0)


def cap(current=2):
    return CapacityContext(0.0, SPEC, PRICES, (), current, current, 0.0)


def test_always_api_routes_to_the_api_and_recommends_the_minimum():
    policy = build_policy("always_api")
    assert policy.route(req()).backend == "openai"
    assert policy.route(req(api_first=False)).backend == "openai"
    assert policy.route(req(api_healthy=False)).reason == "no_healthy_api"
    assert policy.plan_capacity(cap()).instances == SPEC.min_instances


@pytest.mark.parametrize("ctx,backend,reason", [
    (req(), "sagemaker", "endpoint_in_service"),
    (req(load=9000.0), "openai", "endpoint_at_capacity"),  # overflow: 300 tok/s × 30 s held
    (req(prompt=8100, max_tokens=200), "openai", "context_too_long"),
    (req(in_service=0), "openai", "endpoint_not_in_service"),
])
def test_always_selfhosted_routes_with_overflow(ctx, backend, reason):
    d = build_policy("always_selfhosted").route(ctx)
    assert (d.backend, d.reason) == (backend, reason)


def test_always_selfhosted_keeps_full_size():
    assert build_policy("always_selfhosted").plan_capacity(cap(current=0)).instances == SPEC.max_instances


def test_first_healthy_takes_the_first_usable_backend_and_keeps_capacity():
    policy = build_policy("first_healthy")
    assert policy.route(req()).backend == "openai"
    assert policy.route(req(api_first=False)).backend == "sagemaker"
    assert policy.route(req(api_first=False, in_service=0)).backend == "openai"
    assert policy.plan_capacity(cap(current=2)).instances == 2


def test_unknown_policy_names_the_known_ones():
    with pytest.raises(ValueError, match="break_even"):
        build_policy("nope")


def test_fixed_keeps_its_count_within_bounds():
    assert build_policy("fixed", {"instances": 2}).plan_capacity(cap()).instances == 2
    assert build_policy("fixed", {"instances": 9}).plan_capacity(cap()).instances == SPEC.max_instances
    assert build_policy("fixed", {"instances": 0}).plan_capacity(cap()).instances == SPEC.min_instances
    assert build_policy("fixed").route(req()).backend == "sagemaker"
    with pytest.raises(ValueError, match="instances"):
        build_policy("fixed", {"instances": -1})


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), -1, 1.5, "two", True])
def test_fixed_refuses_a_count_that_is_not_one_with_its_name(bad):
    # infinity made int() raise OverflowError: a traceback from `replay --param instances=inf`
    with pytest.raises(ValueError, match="fixed: parameter instances out of range"):
        build_policy("fixed", {"instances": bad})
