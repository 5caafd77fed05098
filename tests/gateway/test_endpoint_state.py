"""An endpoint nobody has confirmed is neither routed to (not even on failover) nor charged.

The gateway runs in-process against the stand-ins; the endpoint is never described
(``poll_interval_s: 0``), so it stays unconfirmed unless ``assumed_instances`` says otherwise.
"""
from __future__ import annotations

import time

import httpx
import openai
import pytest
from gateway_harness import RunningGateway, build_config, standin_config
from openai import OpenAI

MSG = [{"role": "user", "content": "hello"}]


def _gateway(openai_standin, sagemaker_standin, assumed: int, policy: str = "break_even") -> RunningGateway:
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": policy})
    data["backends"]["sagemaker"]["assumed_instances"] = assumed
    return RunningGateway(build_config(data, openai=openai_standin))


def _endpoint_spend(gw) -> float:
    return gw.sample("gateway_spend_usd_total", backend="sagemaker", model="") or 0.0


def test_a_failing_api_does_not_fail_over_to_an_unconfirmed_endpoint(openai_standin, sagemaker_standin):
    with _gateway(openai_standin, sagemaker_standin, assumed=0, policy="always_selfhosted") as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        openai_standin.fail_next(503)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert e.value.status_code == 503
        assert e.value.response.headers["x-gateway-route-reason"] == "endpoint_not_in_service"
        assert sagemaker_standin.requests == []


def test_a_pinned_request_is_forwarded_but_no_instance_time_is_charged(openai_standin, sagemaker_standin):
    with _gateway(openai_standin, sagemaker_standin, assumed=0) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="sagemaker/gpt-4o-mini", messages=MSG)
        assert raw.parse().choices[0].message.content and len(sagemaker_standin.requests) == 1
        assert (raw.headers["x-gateway-backend"], raw.headers["x-gateway-route-reason"]) == ("sagemaker", "pinned")
        assert float(raw.headers["x-gateway-cost-usd"]) == 0  # its share of no instance time
        unpinned = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert unpinned.headers["x-gateway-backend"] == "openai"
        time.sleep(1.2)  # a state tick
        assert _endpoint_spend(gw) == 0
        state = httpx.get(f"{gw.url}/readyz").json()["endpoints"]["sagemaker"]
        assert (state["state"], state["reason"]) == ("unconfirmed", "never described (poll_interval_s is 0)")


def test_assumed_instances_are_routed_to_and_charged_while_unconfirmed(openai_standin, sagemaker_standin):
    with _gateway(openai_standin, sagemaker_standin, assumed=1) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert (raw.headers["x-gateway-backend"], raw.headers["x-gateway-route-reason"]) == \
            ("sagemaker", "endpoint_in_service")
        time.sleep(1.2)
        assert _endpoint_spend(gw) > 0
        state = httpx.get(f"{gw.url}/admin/routing").json()["endpoints"]["sagemaker"]
        assert (state["state"], state["status"], state["instances_in_service"]) == ("assumed", "Assumed", 1)
