"""The running gateway reads its endpoint from the control plane (moto) and acts only when told to."""
from __future__ import annotations

import time

import boto3
import httpx
import pytest
from aws_standin import REGION, make_endpoint
from gateway_harness import RunningGateway, build_config, standin_config, wait_until
from openai import OpenAI

MSG = [{"role": "user", "content": "hello"}]



@pytest.fixture
def control_plane(moto_url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_url)
    return boto3.client("sagemaker", region_name=REGION, endpoint_url=moto_url)


def _gateway_config(openai_standin, sagemaker_standin, endpoint, dry_run):
    data = standin_config(openai_standin, sagemaker_standin,
                          routing={"policy": "break_even", "capacity_interval_s": 0.3, "dry_run": dry_run})
    sm = data["backends"]["sagemaker"]
    sm.update(endpoint_name=endpoint, poll_interval_s=0.3, assumed_instances=0, min_instances=0, max_instances=3,
              actuation_cooldown_s=0)
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
    return build_config(data, openai=openai_standin)


def _instances(sm, endpoint):
    return sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]["CurrentInstanceCount"]


@pytest.mark.parametrize("dry_run", [True, False])
def test_gateway_polls_and_actuates_only_without_dry_run(openai_standin, sagemaker_standin, control_plane, dry_run):
    endpoint = make_endpoint(control_plane, instances=1)
    # the runtime stand-in serves one fixed endpoint name: answer for this one too
    sagemaker_standin.endpoints.add(endpoint)
    with RunningGateway(_gateway_config(openai_standin, sagemaker_standin, endpoint, dry_run)) as gw:
        # unconfirmed (0 instances) until DescribeEndpoint answers; then its counts apply
        assert wait_until(lambda: gw.app.endpoints["sagemaker"].status == "InService"
                     and gw.app.endpoints["sagemaker"].instances_in_service == 1)
        # 120 answers of 1,500 tokens within the 5-minute window: ~1,440 requests/h × 1,500 tokens
        # is ~2 instances of 300 tokens/s
        openai_standin.script(prompt_tokens=3000, completion_tokens=1500)
        sagemaker_standin.script(prompt_tokens=3000, completion_tokens=1500)
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        for _ in range(120):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)

        def acted():
            last = httpx.get(f"{gw.url}/admin/routing").json()["endpoints"]["sagemaker"]["last_actuation"]
            # before the traffic the honest answer is "no_traffic" → 0; wait for the scale-up
            return last is not None and last["action"] in ("would_update", "updated") and last["target"] > 1

        assert wait_until(acted, timeout=20), str(httpx.get(f"{gw.url}/admin/routing").json()["endpoints"])
        last = gw.app.last_actuation["sagemaker"]
        assert last["dry_run"] is dry_run and last["target"] > 1
        if dry_run:
            assert _instances(control_plane, endpoint) == 1
        else:
            assert wait_until(lambda: _instances(control_plane, endpoint) > 1, timeout=20)


def test_missing_endpoint_is_neither_routed_to_nor_charged(openai_standin, sagemaker_standin, control_plane):
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "always_selfhosted"})
    data["backends"]["sagemaker"].update(endpoint_name="never-created", poll_interval_s=0.2, assumed_instances=1)
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        assert wait_until(lambda: gw.app.endpoints["sagemaker"].status == "NotFound")
        # routing inputs are rebuilt on the next state tick
        assert wait_until(lambda: not gw.app.live.candidates("gpt-4o-mini", None)[1].healthy)
        spent = gw.sample("gateway_spend_usd_total", backend="sagemaker", model="")
        raw = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MSG)
        assert (raw.headers["x-gateway-backend"], raw.headers["x-gateway-route-reason"]) == \
            ("openai", "endpoint_unhealthy")
        time.sleep(1.2)
        assert gw.sample("gateway_spend_usd_total", backend="sagemaker", model="") == spent


def test_an_endpoint_confirmed_after_start_is_not_scaled_down_on_an_empty_start(openai_standin, sagemaker_standin,
                                                                             control_plane):
    """Planned with 0 instances while unconfirmed; the first answer (1 instance) is where a fresh process
    starts from, so no scale-down follows from the empty windows of a restart."""
    endpoint = make_endpoint(control_plane, instances=1)
    sagemaker_standin.endpoints.add(endpoint)
    with RunningGateway(_gateway_config(openai_standin, sagemaker_standin, endpoint, dry_run=False)) as gw:
        assert wait_until(lambda: gw.app.endpoints["sagemaker"].state == "confirmed")
        decided = gw.app.planner.plans["sagemaker"].decided_at or 0
        assert wait_until(lambda: (gw.app.planner.plans["sagemaker"].decided_at or 0) > decided + 0.5)
        assert gw.app.planner.plans["sagemaker"].decision.instances == 1
        assert (gw.app.last_actuation["sagemaker"]["action"], _instances(control_plane, endpoint)) == ("none", 1)
