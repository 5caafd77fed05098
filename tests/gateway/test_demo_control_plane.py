"""The demo's control plane: the control-plane stand-in with the default config's endpoint deployed."""
from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from gateway_harness import wait_until

from gateway.demo.control_plane import DemoControlPlane


def client(cp):
    return boto3.client("sagemaker", endpoint_url=cp.url, region_name=cp.region, aws_access_key_id=cp.access_key,
                        aws_secret_access_key=cp.secret_key)


def test_component_starts_at_zero_and_follows_copy_changes():
    with DemoControlPlane("ep", "AllTraffic", "us-east-1", "k", "s", startup_real_s=0.2, clock=lambda: 42.0,
                          component="ic", from_zero_real_s=0.3, copies_per_instance=2, max_instances=4) as cp:
        sm = client(cp)
        assert sm.describe_endpoint(EndpointName="ep")["EndpointStatus"] == "InService"
        ic = sm.describe_inference_component(InferenceComponentName="ic")
        assert (ic["InferenceComponentStatus"], ic["RuntimeConfig"]["CurrentCopyCount"]) == ("InService", 0)
        assert cp.instances_in_service() == 0
        sm.update_inference_component_runtime_config(InferenceComponentName="ic", DesiredRuntimeConfig={"CopyCount": 4})
        assert cp.instances_in_service() == 0  # the cold start is under way
        assert wait_until(lambda: cp.instances_in_service() == 2)  # 4 copies, 2 per instance
        assert cp.changes == [{"at": 42.0, "from": 0, "to": 2}]
    assert not cp.errors


def test_plain_endpoint_refuses_zero_as_aws_does():
    with DemoControlPlane("ep", "AllTraffic", "us-east-1", "k", "s", startup_real_s=0.0, instances=1) as cp:
        sm = client(cp)
        assert cp.instances_in_service() == 1
        with pytest.raises(ClientError) as e:
            sm.update_endpoint_weights_and_capacities(EndpointName="ep", DesiredWeightsAndCapacities=[
                {"VariantName": "AllTraffic", "DesiredInstanceCount": 0}])
        assert e.value.response["Error"]["Code"] == "ValidationException"
        assert cp.instances_in_service() == 1 and cp.changes == []
