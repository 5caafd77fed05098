"""The SageMaker control-plane stand-in, driven by the real boto3 client (and the runtime stand-in beside it)."""
from __future__ import annotations

import json

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gateway.standins.sagemaker_control import NO_CAPACITY, SageMakerControlStandIn, service_model, shape_errors
from gateway.standins.sagemaker_server import SageMakerStandIn

ROLE = "arn:aws:iam::123456789012:role/sm"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/llm:latest"


class Clock:
    """Time the test moves by hand, so a start-up delay is a number, not a wait."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def control(clock):
    with SageMakerControlStandIn(startup_delay=60, from_zero_delay=300, clock=clock) as cp:
        yield cp
    assert not cp.errors, f"the control stand-in itself crashed: {cp.errors}"


def client(cp, secret: str | None = None, **config):
    return boto3.client("sagemaker", endpoint_url=cp.url, region_name=cp.region, aws_access_key_id=cp.access_key,
                        aws_secret_access_key=secret or cp.secret_key, config=Config(retries={"max_attempts": 1},
                                                                                    **config))


def error(exc_info) -> tuple[str, str]:
    err = exc_info.value.response["Error"]
    return err["Code"], err["Message"]


def make_component_endpoint(sm, name: str, copies: int = 1, max_instances: int = 3) -> None:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sm.create_endpoint_config(EndpointConfigName=name, ExecutionRoleArn=ROLE, ProductionVariants=[{
        "VariantName": "AllTraffic", "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1,
        "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": max_instances},
        "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)


def create_component(sm, name: str, endpoint: str, copies: int) -> None:
    sm.create_inference_component(
        InferenceComponentName=name, EndpointName=endpoint, VariantName="AllTraffic",
        Specification={"ModelName": endpoint, "ComputeResourceRequirements": {
            "NumberOfAcceleratorDevicesRequired": 1, "MinMemoryRequiredInMb": 1024}},
        RuntimeConfig={"CopyCount": copies})


def variant(sm, endpoint: str) -> tuple[int, int]:
    v = sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]
    return v["CurrentInstanceCount"], v["DesiredInstanceCount"]


def runtime_config(sm, component: str) -> tuple[str, int, int]:
    ic = sm.describe_inference_component(InferenceComponentName=component)
    return ic["InferenceComponentStatus"], ic["RuntimeConfig"]["CurrentCopyCount"], ic["RuntimeConfig"]["DesiredCopyCount"]


def test_plain_endpoint_lifecycle_and_no_resize_to_zero(control, clock):
    sm = client(control)
    sm.create_model(ModelName="plain", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sm.create_endpoint_config(EndpointConfigName="plain", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "plain", "InitialInstanceCount": 1, "InstanceType": "ml.g5.xlarge"}])
    sm.create_endpoint(EndpointName="plain", EndpointConfigName="plain")
    assert sm.describe_endpoint(EndpointName="plain")["EndpointStatus"] == "Creating"
    clock.now += 60
    assert sm.describe_endpoint(EndpointName="plain")["EndpointStatus"] == "InService"
    assert variant(sm, "plain") == (1, 1)
    assert not control.hosts_components("plain")

    with pytest.raises(ClientError) as e:  # what the issue is about: a plain endpoint cannot go to 0
        sm.update_endpoint_weights_and_capacities(EndpointName="plain", DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredInstanceCount": 0}])
    assert error(e)[0] == "ValidationException"
    assert variant(sm, "plain") == (1, 1)

    sm.update_endpoint_weights_and_capacities(EndpointName="plain", DesiredWeightsAndCapacities=[
        {"VariantName": "AllTraffic", "DesiredInstanceCount": 2}])
    assert sm.describe_endpoint(EndpointName="plain")["EndpointStatus"] == "Updating"
    assert variant(sm, "plain") == (1, 2)
    clock.now += 60
    assert variant(sm, "plain") == (2, 2)

    assert sm.describe_endpoint_config(EndpointConfigName="plain")["ProductionVariants"][0]["ModelName"] == "plain"
    sm.delete_endpoint(EndpointName="plain")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="plain")  # its first DescribeEndpoint already says gone
    sm.delete_endpoint_config(EndpointConfigName="plain")
    sm.delete_model(ModelName="plain")
    for call, kwargs in ((sm.describe_endpoint, {"EndpointName": "plain"}),
                         (sm.describe_endpoint_config, {"EndpointConfigName": "plain"}),
                         (sm.describe_model, {"ModelName": "plain"})):
        with pytest.raises(ClientError) as e:
            call(**kwargs)
        assert error(e)[0] == "ValidationException" and "Could not find" in error(e)[1]


def test_component_scales_one_zero_one_and_instances_follow(control, clock):
    sm = client(control)
    make_component_endpoint(sm, "ic-ep")
    clock.now += 60
    create_component(sm, "ic", "ic-ep", copies=1)
    assert runtime_config(sm, "ic") == ("Creating", 0, 1)
    assert control.hosts_components("ic-ep") and control.component_copies("ic-ep", "ic") == 0
    clock.now += 300  # a new component starts from zero copies
    assert runtime_config(sm, "ic") == ("InService", 1, 1)
    assert variant(sm, "ic-ep") == (1, 1)

    sm.update_inference_component_runtime_config(InferenceComponentName="ic", DesiredRuntimeConfig={"CopyCount": 0})
    assert runtime_config(sm, "ic") == ("InService", 0, 0)
    assert variant(sm, "ic-ep") == (0, 0)  # MinInstanceCount 0: nothing runs, nothing is billed
    assert control.instances("ic-ep") == 0 and control.copies("ic") == 0

    sm.update_inference_component_runtime_config(InferenceComponentName="ic", DesiredRuntimeConfig={"CopyCount": 1})
    assert runtime_config(sm, "ic") == ("Updating", 0, 1)
    assert variant(sm, "ic-ep") == (1, 1)  # the instance being started is counted (and billed) already
    with pytest.raises(ClientError) as e:  # one change at a time, as on AWS
        sm.update_inference_component_runtime_config(InferenceComponentName="ic", DesiredRuntimeConfig={"CopyCount": 2})
    assert error(e)[0] == "ValidationException"
    clock.now += 299
    assert control.copies("ic") == 0  # from zero takes from_zero_delay, not startup_delay
    clock.now += 1
    assert runtime_config(sm, "ic") == ("InService", 1, 1)

    sm.update_inference_component_runtime_config(InferenceComponentName="ic", DesiredRuntimeConfig={"CopyCount": 2})
    clock.now += 59
    assert runtime_config(sm, "ic") == ("Updating", 1, 2)
    clock.now += 1  # from one copy up: startup_delay
    assert runtime_config(sm, "ic") == ("InService", 2, 2)
    assert variant(sm, "ic-ep") == (2, 2)

    listed = sm.list_inference_components(EndpointNameEquals="ic-ep")["InferenceComponents"]
    assert [(c["InferenceComponentName"], c["InferenceComponentStatus"]) for c in listed] == [("ic", "InService")]
    assert sm.list_inference_components(EndpointNameEquals="other")["InferenceComponents"] == []
    with pytest.raises(ClientError) as e:
        sm.delete_endpoint(EndpointName="ic-ep")
    assert error(e)[0] == "ValidationException"
    sm.delete_inference_component(InferenceComponentName="ic")
    sm.delete_endpoint(EndpointName="ic-ep")
    with pytest.raises(ClientError) as e:
        sm.describe_inference_component(InferenceComponentName="ic")
    assert "Could not find inference component" in error(e)[1]


def test_copies_per_instance_and_max_instances(clock):
    with SageMakerControlStandIn(copies_per_instance=2, clock=clock) as cp:
        sm = client(cp)
        make_component_endpoint(sm, "packed", max_instances=2)
        create_component(sm, "ic", "packed", copies=3)
        assert variant(sm, "packed") == (2, 2)  # ceil(3 / 2)
        assert runtime_config(sm, "ic") == ("InService", 3, 3)  # delays 0: at once
        sm.update_inference_component_runtime_config(InferenceComponentName="ic",
                                                     DesiredRuntimeConfig={"CopyCount": 9})
        assert runtime_config(sm, "ic")[1:] == (4, 4)  # MaxInstanceCount 2 x 2 copies: what fits
        assert variant(sm, "packed") == (2, 2)
    assert not cp.errors


def test_requests_are_checked_against_botocores_model_and_signed(control):
    loose = client(control, parameter_validation=False)  # what a hand-built request would send
    with pytest.raises(ClientError) as e:
        loose.update_inference_component_runtime_config(InferenceComponentName="ic",
                                                        DesiredRuntimeConfig={"CopyCount": -1})
    code, message = error(e)
    assert code == "ValidationException" and "DesiredRuntimeConfig.CopyCount" in message and "minimum" in message
    with pytest.raises(ClientError) as e:
        loose.create_endpoint_config(EndpointConfigName="x", ProductionVariants=[{
            "VariantName": "AllTraffic", "ManagedInstanceScaling": {"Status": "ON"}}])
    assert error(e)[0] == "ValidationException" and "'ON' is not one of" in error(e)[1]

    with pytest.raises(ClientError) as e:
        client(control, secret="wrong").describe_endpoint(EndpointName="x")
    assert error(e)[0] == "InvalidSignatureException"
    assert control.requests[-1].status == 403


def test_shape_check_catches_an_answer_the_model_does_not_allow():
    output = service_model().operation_model("DescribeInferenceComponent").output_shape
    good = {"InferenceComponentName": "ic", "InferenceComponentArn": "arn:aws:sagemaker:us-east-1:123456789012:inference-component/ic",
            "EndpointName": "ep", "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/ep",
            "CreationTime": 1.0, "LastModifiedTime": 1.0, "InferenceComponentStatus": "InService",
            "RuntimeConfig": {"DesiredCopyCount": 1, "CurrentCopyCount": 1}}
    assert shape_errors(good, output) == []
    bad = {**good, "InferenceComponentStatus": "Ready", "RuntimeConfig": {"CopyCount": 1}}
    del bad["EndpointArn"]
    assert sorted(shape_errors(bad, output)) == [
        "EndpointArn: is required", "InferenceComponentStatus: 'Ready' is not one of "
        "['InService', 'Creating', 'Updating', 'Failed', 'Deleting']", "RuntimeConfig.CopyCount: unknown member"]


def test_runtime_honours_the_component_header_and_copy_count(control, clock):
    sm = client(control)
    make_component_endpoint(sm, "ic-ep")
    clock.now += 60
    create_component(sm, "ic", "ic-ep", copies=1)
    clock.now += 300
    with SageMakerStandIn(endpoints=(), control=control) as rt:
        runtime = boto3.client("sagemaker-runtime", endpoint_url=rt.url, region_name=rt.region,
                               aws_access_key_id=rt.access_key, aws_secret_access_key=rt.secret_key,
                               config=Config(retries={"max_attempts": 1}))
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        out = runtime.invoke_endpoint(EndpointName="ic-ep", InferenceComponentName="ic", Body=body,
                                      ContentType="application/json")
        assert json.loads(out["Body"].read())["choices"][0]["message"]["content"]
        assert rt.last_request.headers["x-amzn-sagemaker-inference-component"] == "ic"

        stream = runtime.invoke_endpoint_with_response_stream(EndpointName="ic-ep", InferenceComponentName="ic",
                                                              Body=body, ContentType="application/json")
        assert b"".join(ev["PayloadPart"]["Bytes"] for ev in stream["Body"] if "PayloadPart" in ev)

        with pytest.raises(ClientError) as e:  # an endpoint hosting components needs the header
            runtime.invoke_endpoint(EndpointName="ic-ep", Body=body, ContentType="application/json")
        assert error(e)[0] == "ValidationError" and "Inference Component Name header is required" in error(e)[1]

        sm.update_inference_component_runtime_config(InferenceComponentName="ic",
                                                     DesiredRuntimeConfig={"CopyCount": 0})
        for call in (runtime.invoke_endpoint, runtime.invoke_endpoint_with_response_stream):
            with pytest.raises(ClientError) as e:
                call(EndpointName="ic-ep", InferenceComponentName="ic", Body=body, ContentType="application/json")
            assert error(e) == ("ValidationError", NO_CAPACITY)
            assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        with pytest.raises(ClientError) as e:
            runtime.invoke_endpoint(EndpointName="ic-ep", InferenceComponentName="nope", Body=body,
                                    ContentType="application/json")
        assert error(e)[0] == "ValidationError" and "nope" in error(e)[1]
    assert not rt.errors
