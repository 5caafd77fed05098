"""What a budget reserves per request (pure: no server): the most the request can be charged on any
route it may take, endpoint routes included, so that a burst overspends by at most one request."""
from __future__ import annotations

import time
from decimal import Decimal
from types import SimpleNamespace

import pytest
from gateway_harness import build_config, standin_config

from gateway.endpoint.state import EndpointStatus
from gateway.keys import KeyService
from gateway.keys.records import usd_to_nanos
from gateway.spend.accounting import CHARGEBACK_WINDOW_S, Accounting, RequestRecord, endpoint_charge_cap
from gateway.spend.cost import Usage
from gateway.state import build_store

# configs only: nothing listens here and nothing is called
OPENAI = SimpleNamespace(base_url="http://127.0.0.1:9/v1", api_key="k")
SAGEMAKER = SimpleNamespace(base_url="http://127.0.0.1:9")
HOURLY = Decimal("1.408")  # standin_config's ml.g5.xlarge


def _config(max_instances: int = 1):
    data = standin_config(OPENAI, SAGEMAKER)
    data["backends"]["sagemaker"]["max_instances"] = max_instances
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
    data["models"]["llama-endpoint"] = {"backends": [{"backend": "sagemaker"}], "encoding": "o200k_base"}
    return build_config(data, openai=OPENAI)


def test_the_cap_is_the_whole_window_of_the_instances():
    # 1.408 USD/h x 3 instances x 60 s
    assert endpoint_charge_cap(HOURLY, 3) == Decimal("0.0704")
    assert CHARGEBACK_WINDOW_S == 60


@pytest.mark.parametrize("start", [1_700_000_000.0, 100.0])  # multiples of 10: bucket boundaries
@pytest.mark.parametrize("offset_s", [0.0, 5e-9, 1e-7, 0.5, 3.3, 9.999999])
@pytest.mark.parametrize("traffic", [0, 1, 30])
def test_no_endpoint_request_is_charged_more_than_the_cap(start, offset_s, traffic):
    """Whatever the moment in the 10-s bucket and the traffic before it, up to the cap; a lone
    request on a bucket boundary pays the whole window: the cap is reached, not just a bound.
    (At 100 + 5e-9 s the window measures 60.000000005 s: first_bucket's 1e-9 tolerance.)"""
    config = _config()
    status = EndpointStatus.initial("sagemaker", assumed_instances=1)
    store = build_store(config.state)
    acc = Accounting(config, None, store, None, {"sagemaker": status})
    now = start + offset_s
    for i in range(traffic):
        store.record("sagemaker", "llama-endpoint", 5, 5, now - 59 + i)
    rec = RequestRecord("r", "llama-endpoint", "chat", time.perf_counter(), backend="sagemaker",
                        upstream_model="llama-endpoint", usage=Usage(40_000, 4_000))
    acc.clock = lambda: now
    acc.settle(rec)
    cap = endpoint_charge_cap(HOURLY, 1)
    assert 0 < rec.cost <= cap
    if traffic == 0 and (offset_s == 0.0 or now == 100 + 5e-9):
        assert rec.cost == cap


def _keys(config, instances_in_service: int = 1) -> KeyService:
    status = EndpointStatus.initial("sagemaker", assumed_instances=instances_in_service)
    return KeyService(config, endpoints={"sagemaker": status})


def _model(config, name):
    return config.models[name]


def test_an_endpoint_only_model_reserves_the_endpoint_cap():
    config = _config(max_instances=2)
    keys = _keys(config)
    # max_instances (the actuator's ceiling), not the 1 in service now: a scale-up may land first
    assert keys.worst_case_nanos(_model(config, "llama-endpoint"), None, 10, 40) == \
        usd_to_nanos(endpoint_charge_cap(HOURLY, 2))
    # more in service than max_instances (scaled outside the gateway): those are charged, so reserved
    assert _keys(config, 5).worst_case_nanos(_model(config, "llama-endpoint"), None, 10, 40) == \
        usd_to_nanos(endpoint_charge_cap(HOURLY, 5))


def test_the_routes_a_request_may_take_decide_and_a_pin_narrows_them():
    config = _config()
    keys = _keys(config)
    mixed = _model(config, "gpt-4o-mini")  # API first, the endpoint second: either may serve (failover)
    api = usd_to_nanos(Decimal(10 * 2.5 + 40 * 10) / 1_000_000)
    cap = usd_to_nanos(endpoint_charge_cap(HOURLY, 1))
    assert keys.worst_case_nanos(mixed, None, 10, 40) == max(api, cap) == cap
    assert keys.worst_case_nanos(mixed, "openai", 10, 40) == api  # "openai/gpt-4o-mini": no failover
    assert keys.worst_case_nanos(mixed, "sagemaker", 10, 40) == cap  # "sagemaker/gpt-4o-mini"
    # a prompt dear enough on the API outweighs the endpoint's cap
    big = 100_000
    assert keys.worst_case_nanos(mixed, None, big, 4_000) == usd_to_nanos(
        Decimal(big * 2.5 + 4_000 * 10) / 1_000_000)
