"""Scale to zero with an inference component: poller, actuator, billing, invoke header and failover.

The control plane is SageMakerControlStandIn (moto has no inference components), the runtime
SageMakerStandIn beside it; the gateway's own boto3 client (its cut-down model) talks to both.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging

import boto3
import httpx
import pytest
from gateway_harness import RunningGateway, build_config, standin_config, wait_until
from openai import OpenAI

from gateway.endpoint import CapacityActuator, EndpointPoller, EndpointStatus
from gateway.standins.sagemaker_control import SageMakerControlStandIn
from gateway.standins.sagemaker_server import SageMakerStandIn

ROLE = "arn:aws:iam::123456789012:role/sm"
MSG = [{"role": "user", "content": "hello"}]
ENDPOINT, COMPONENT = "ic-endpoint", "ic-llm"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def deploy(cp, copies: int = 1, max_instances: int = 3, clock: Clock | None = None) -> None:
    """What setup_endpoint.py --inference-component creates, made directly with boto3."""
    sm = boto3.client("sagemaker", endpoint_url=cp.url, region_name=cp.region)
    sm.create_model(ModelName=ENDPOINT, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": "img"})
    sm.create_endpoint_config(EndpointConfigName=ENDPOINT, ExecutionRoleArn=ROLE, ProductionVariants=[{
        "VariantName": "AllTraffic", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1,
        "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": max_instances}}])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT)
    if clock is not None:
        clock.now += cp.startup_delay
    assert wait_until(lambda: sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService")
    sm.create_inference_component(
        InferenceComponentName=COMPONENT, EndpointName=ENDPOINT, VariantName="AllTraffic",
        Specification={"ModelName": ENDPOINT, "ComputeResourceRequirements": {
            "NumberOfAcceleratorDevicesRequired": 1, "MinMemoryRequiredInMb": 1024}},
        RuntimeConfig={"CopyCount": copies})


def backend_cfg(**changes):
    data = {"backends": {"sagemaker": {
        "type": "sagemaker", "endpoint_name": ENDPOINT, "region": "us-east-1", "instance_type": "ml.g5.xlarge",
        "hourly_price_usd": "1.408", "max_tokens_per_second": 300, "context_window": 8192,
        "min_instances": 0, "max_instances": 3, "inference_component_name": COMPONENT, **changes}},
        "models": {"m": {"backends": [{"backend": "sagemaker"}]}}}
    return build_config(data).backends["sagemaker"]


@pytest.fixture
def aws_env(monkeypatch):
    def point_at(cp):
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", cp.url)  # read by the gateway's boto3 client
    return point_at


def test_scale_one_zero_one_by_copies_with_billing_on_instances(aws_env):
    clock = Clock()
    with SageMakerControlStandIn(startup_delay=60, from_zero_delay=600, clock=clock) as cp:
        aws_env(cp)
        deploy(cp, copies=1, clock=clock)
        clock.now += 600
        cfg = backend_cfg(actuation_cooldown_s=0)
        status = EndpointStatus("sagemaker")

        async def run():
            poller = EndpointPoller(cfg, status, interval_s=0)
            actuator = CapacityActuator(cfg, status, dry_run=False, cooldown_s=0)
            seen = {}
            await poller.poll(1.0)
            seen["one"] = dataclasses.replace(status)
            seen["to_zero"] = await actuator.apply(0, "no_traffic", 2.0)
            seen["zero_now"] = dataclasses.replace(status)  # before any poll: copies being removed serve nothing
            await poller.poll(3.0)
            seen["zero"] = dataclasses.replace(status)
            seen["to_one"] = await actuator.apply(1, "traffic", 4.0)
            seen["held"] = await actuator.apply(2, "more", 5.0)  # the component is Updating
            await poller.poll(6.0)
            seen["starting"] = dataclasses.replace(status)
            clock.now += 600
            await poller.poll(7.0)
            seen["back"] = dataclasses.replace(status)
            return seen

        seen = asyncio.run(run())
    one, zero, starting, back = seen["one"], seen["zero"], seen["starting"], seen["back"]
    assert (one.status, one.component_status, one.copies, one.instances_in_service, one.billed_instances) == \
        ("InService", "InService", 1, 1, 1)
    assert (seen["to_zero"].action, seen["to_zero"].target, seen["to_zero"].current) == ("updated", 0, 1)
    assert (seen["zero_now"].instances_in_service, seen["zero_now"].serving) == (0, False)
    assert (zero.copies, zero.desired_copies, zero.instances_in_service, zero.billed_instances) == (0, 0, 0, 0)
    assert zero.status == "InService" and zero.last_error is None  # the endpoint stays; nothing runs on it
    assert (seen["to_one"].action, seen["to_one"].target) == ("updated", 1)
    assert seen["held"].action == "held" and "Updating" in seen["held"].reason
    # from zero: the instance is billed while it starts, but nothing serves before the copy does
    assert (starting.component_status, starting.copies, starting.desired_copies) == ("Updating", 0, 1)
    assert (starting.billed_instances, starting.instances_in_service, starting.serving) == (1, 0, False)
    assert (back.component_status, back.copies, back.instances_in_service, back.serving) == ("InService", 1, 1, True)
    routing = back.as_dict()
    assert routing["instances_billed"] == 1
    assert routing["inference_component"] == {"name": COMPONENT, "status": "InService", "copies": 1,
                                              "desired_copies": 1}


def test_copies_per_instance_converts_instances_to_copies(aws_env):
    with SageMakerControlStandIn(copies_per_instance=2) as cp:
        aws_env(cp)
        deploy(cp, copies=2)
        cfg = backend_cfg(copies_per_instance=2, actuation_cooldown_s=0)
        status = EndpointStatus("sagemaker")

        async def run():
            poller = EndpointPoller(cfg, status, interval_s=0)
            await poller.poll(1.0)
            before = dataclasses.replace(status)
            result = await CapacityActuator(cfg, status, dry_run=False, cooldown_s=0).apply(2, "busy", 2.0)
            await poller.poll(3.0)
            return before, result

        before, result = asyncio.run(run())
        assert (before.copies, before.instances_in_service, before.desired_instances) == (2, 1, 1)
        assert (result.action, result.current, result.target) == ("updated", 1, 2)
        assert cp.copies(COMPONENT) == 4 and cp.instances(ENDPOINT) == 2
        assert (status.copies, status.instances_in_service, status.billed_instances) == (4, 2, 2)


def test_missing_component_is_not_routed_to(aws_env):
    with SageMakerControlStandIn() as cp:
        aws_env(cp)
        deploy(cp, copies=1)
        status = EndpointStatus("sagemaker")
        asyncio.run(EndpointPoller(backend_cfg(inference_component_name="never-made"), status).poll(1.0))
    assert (status.component_status, status.copies, status.serving) == ("NotFound", 0, False)
    assert status.last_error.startswith("DescribeInferenceComponent: ValidationException: Could not find")
    assert status.billed_instances == 1  # the endpoint's instance runs (and is paid) all the same


def test_plain_endpoint_with_min_instances_zero_warns_naming_the_key(caplog):
    caplog.set_level(logging.WARNING, logger="gateway.endpoint_control")
    plain = backend_cfg(inference_component_name=None)
    CapacityActuator(plain, EndpointStatus("sagemaker"), dry_run=True)
    warned = [r.getMessage() for r in caplog.records if "min_instances" in r.getMessage()]
    assert len(warned) == 1 and "backends.sagemaker.min_instances: 0" in warned[0]
    assert "backends.sagemaker.inference_component_name" in warned[0]
    caplog.clear()
    CapacityActuator(backend_cfg(), EndpointStatus("sagemaker"), dry_run=True)
    CapacityActuator(backend_cfg(inference_component_name=None, min_instances=1), EndpointStatus("sagemaker"),
                     dry_run=True)
    assert not [r for r in caplog.records if "min_instances" in r.getMessage()]


# ---- through the running gateway ----

def gateway_config(openai_standin, runtime, policy="first_healthy", **sagemaker):
    data = standin_config(openai_standin, runtime, routing={"policy": policy})
    data["backends"]["sagemaker"].update(endpoint_name=ENDPOINT, inference_component_name=COMPONENT, **sagemaker)
    return build_config(data, openai=openai_standin)


def test_invoke_names_the_component_in_a_signed_header(openai_standin, aws_env):
    with SageMakerControlStandIn() as cp, SageMakerStandIn(endpoints=(), control=cp) as runtime:
        aws_env(cp)
        deploy(cp, copies=1)
        cfg = gateway_config(openai_standin, runtime, "always_selfhosted", poll_interval_s=0.2, assumed_instances=0)
        with RunningGateway(cfg) as gw:
            assert wait_until(lambda: gw.app.endpoints["sagemaker"].serving)
            # routing inputs are rebuilt on the next state tick
            assert wait_until(lambda: gw.app.live.candidates("gpt-4o-mini", None)[1].instances_in_service == 1)
            client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            plain = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
            assert plain.headers["x-gateway-backend"] == "sagemaker"
            assert plain.parse().choices[0].message.content
            with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MSG,
                                                                        stream=True) as streamed:
                assert streamed.headers["x-gateway-backend"] == "sagemaker"
                assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
            invocations = [r for r in runtime.requests if r.path.startswith("/endpoints/")]
            assert [r.path.rsplit("/", 1)[1] for r in invocations] == ["invocations", "invocations-response-stream"]
            for r in invocations:
                assert r.status == 200 and r.headers["x-amzn-sagemaker-inference-component"] == COMPONENT
                signed = r.headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
                assert "x-amzn-sagemaker-inference-component" in signed
            routing = httpx.get(f"{gw.url}/admin/routing").json()["endpoints"]["sagemaker"]
            assert routing["inference_component"]["copies"] == 1 and routing["instances_billed"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_component_without_copies_fails_over_to_the_api_at_once(openai_standin, aws_env, stream):
    with SageMakerControlStandIn() as cp, SageMakerStandIn(endpoints=(), control=cp) as runtime:
        aws_env(cp)
        deploy(cp, copies=0)
        # never polled, assumed in service: the gateway only learns it from the invocation's answer
        cfg = gateway_config(openai_standin, runtime, "always_selfhosted", poll_interval_s=0, assumed_instances=1)
        with RunningGateway(cfg) as gw:
            client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            if stream:
                with client.chat.completions.with_streaming_response.create(
                        model="gpt-4o-mini", messages=MSG, stream=True) as raw:
                    headers = raw.headers
                    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            else:
                raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
                headers = raw.headers
                assert raw.parse().choices[0].message.content
            assert (headers["x-gateway-backend"], headers["x-gateway-route-reason"]) == \
                ("openai", "endpoint_not_in_service")
            refused = [r for r in runtime.requests if r.path.startswith("/endpoints/")]
            assert [r.status for r in refused] == [400]  # SageMaker's answer, once, then the API


def test_billing_follows_the_instance_count(openai_standin, aws_env):
    with SageMakerControlStandIn() as cp, SageMakerStandIn(endpoints=(), control=cp) as runtime:
        aws_env(cp)
        deploy(cp, copies=1)
        cfg = gateway_config(openai_standin, runtime, poll_interval_s=0.2, assumed_instances=0)
        sm = boto3.client("sagemaker", endpoint_url=cp.url, region_name=cp.region)
        with RunningGateway(cfg) as gw:
            def spent():
                return gw.sample("gateway_spend_usd_total", backend="sagemaker", model="") or 0.0

            assert wait_until(lambda: gw.app.endpoints["sagemaker"].billed_instances == 1)
            first = spent()
            assert wait_until(lambda: spent() > first)  # one instance runs: its time accrues
            sm.update_inference_component_runtime_config(InferenceComponentName=COMPONENT,
                                                         DesiredRuntimeConfig={"CopyCount": 0})
            assert wait_until(lambda: gw.app.endpoints["sagemaker"].billed_instances == 0)
            # accrual runs once a second: after two more ticks nothing more may have been charged
            stopped = spent()
            ticks = gw.app.endpoint_clock.accrued_usd["sagemaker"]
            assert wait_until(lambda: gw.app.endpoints["sagemaker"].polled_at is not None)
            deadline_polls = gw.app.endpoints["sagemaker"].polled_at
            assert wait_until(lambda: (gw.app.endpoints["sagemaker"].polled_at or 0) > deadline_polls + 2.0,
                              timeout=15)
            assert spent() == stopped and gw.app.endpoint_clock.accrued_usd["sagemaker"] == ticks


def test_capacity_decision_scales_the_component_one_zero_one(openai_standin, aws_env):
    """No traffic: break_even asks for 0 and the copy goes; traffic again: it asks for more and a copy
    comes back (after the stand-in's from-zero start-up), meanwhile the API serves."""
    with SageMakerControlStandIn(startup_delay=0.3, from_zero_delay=0.5) as cp, \
            SageMakerStandIn(endpoints=(), control=cp) as runtime:
        aws_env(cp)
        deploy(cp, copies=1)
        assert wait_until(lambda: cp.copies(COMPONENT) == 1)  # deployed: one copy serves
        data = standin_config(openai_standin, runtime,
                              routing={"policy": "break_even", "capacity_interval_s": 0.3, "dry_run": False,
                                       "params": {"min_dwell_s": 0}})
        data["backends"]["sagemaker"].update(
            endpoint_name=ENDPOINT, inference_component_name=COMPONENT, poll_interval_s=0.2, assumed_instances=0,
            min_instances=0, max_instances=3, actuation_cooldown_s=0)
        data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
        with RunningGateway(build_config(data, openai=openai_standin)) as gw:
            assert wait_until(lambda: cp.copies(COMPONENT) == 0, timeout=20)
            assert gw.app.last_actuation["sagemaker"]["target"] == 0
            assert wait_until(lambda: gw.app.endpoints["sagemaker"].billed_instances == 0)
            openai_standin.script(prompt_tokens=3000, completion_tokens=1500)
            runtime.script(prompt_tokens=3000, completion_tokens=1500)
            client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            # ~1,440 requests/h of 1,500 completion tokens (test_control_wiring's load): well above break-even;
            # then more until the endpoint serves again (it keeps the decision up; bounded in time)
            routes = []
            for _ in range(120):
                raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
                routes.append((raw.headers["x-gateway-backend"], raw.headers["x-gateway-route-reason"]))

            def served_by_endpoint():
                raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
                routes.append((raw.headers["x-gateway-backend"], raw.headers["x-gateway-route-reason"]))
                return routes[-1][0] == "sagemaker"
            assert wait_until(served_by_endpoint, timeout=60, interval=0), (
                len(routes), routes[-3:], gw.app.endpoints["sagemaker"].as_dict(), gw.app.last_actuation["sagemaker"],
                gw.app.planner.plans["sagemaker"].decision)
            assert ("openai", "endpoint_not_in_service") in routes  # while it had no copy
        updates = [r.json["DesiredRuntimeConfig"]["CopyCount"] for r in cp.requests
                   if r.headers.get("x-amz-target") == "SageMaker.UpdateInferenceComponentRuntimeConfig"]
        assert updates[0] == 0 and updates[1] >= 1, updates  # 1 -> 0 -> 1+, each a capacity decision
