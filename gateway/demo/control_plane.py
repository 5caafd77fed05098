"""The demo's SageMaker control plane: the project's control-plane stand-in, deployed at start.

``SageMakerControlStandIn`` (AWS JSON 1.1, SigV4-checked, shapes checked against botocore's
model) with the config's endpoint already created, so the gateway's real botocore poller and
actuator run against it. With ``component`` (the default config's ``inference_component_name``)
the endpoint has managed instance scaling and the model runs as that inference component:
the gateway scales its copies, down to 0, and instances follow. New copies serve after the
start-up delay (real seconds: the config's ``startup_s``, or ``startup_from_zero_s`` from 0,
divided by the demo's speed); fewer leave at once. Without one it is a plain endpoint, which
(as on AWS) refuses 0 instances.
"""
from __future__ import annotations

import math
import time

from ..standins.sagemaker_control import SageMakerControlStandIn

_ROLE = "arn:aws:iam::123456789012:role/demo"


class DemoControlPlane(SageMakerControlStandIn):
    def __init__(self, endpoint: str, variant: str, region: str, access_key: str, secret_key: str,
                 startup_real_s: float, instances: int = 0, clock=time.time, component: str | None = None,
                 from_zero_real_s: float | None = None, copies_per_instance: int = 1, max_instances: int = 1):
        super().__init__(startup_delay=startup_real_s, from_zero_delay=from_zero_real_s,
                         copies_per_instance=copies_per_instance, region=region, access_key=access_key,
                         secret_key=secret_key)
        self.endpoint, self.variant, self.component = endpoint, variant, component
        self.changes_clock = clock  # stamps changes (the demo's simulated time); delays run in real seconds
        self._initial, self._max = instances, max(1, max_instances, instances)
        self.changes: list[dict] = []  # every accepted update: {"at" (clock), "from", "to"} in instances

    def start(self) -> DemoControlPlane:
        super().start()
        self._deploy()
        return self

    __enter__ = start

    def _deploy(self) -> None:
        """The endpoint (and component) in service from the first poll: the demo starts there."""
        delays = self.startup_delay, self.from_zero_delay
        self.startup_delay, self.from_zero_delay = 0.0, 0.0
        variant = {"VariantName": self.variant, "InstanceType": "ml.g5.xlarge",
                   "InitialInstanceCount": max(1, self._initial)}
        if self.component:
            variant["ManagedInstanceScaling"] = {"Status": "ENABLED", "MinInstanceCount": 0,
                                                 "MaxInstanceCount": self._max}
        else:
            variant["ModelName"] = self.endpoint
        with self._state:
            self._op_CreateModel({"ModelName": self.endpoint, "ExecutionRoleArn": _ROLE,
                                  "PrimaryContainer": {"Image": "demo"}})
            self._op_CreateEndpointConfig({"EndpointConfigName": self.endpoint, "ExecutionRoleArn": _ROLE,
                                           "ProductionVariants": [variant]})
            self._op_CreateEndpoint({"EndpointName": self.endpoint, "EndpointConfigName": self.endpoint})
            if self.component:
                self._op_CreateInferenceComponent({
                    "InferenceComponentName": self.component, "EndpointName": self.endpoint,
                    "VariantName": self.variant, "RuntimeConfig": {"CopyCount": self._initial * self.copies_per_instance},
                    "Specification": {"ModelName": self.endpoint, "ComputeResourceRequirements": {
                        "NumberOfAcceleratorDevicesRequired": 1, "MinMemoryRequiredInMb": 1024}}})
        self.startup_delay, self.from_zero_delay = delays

    def instances_in_service(self) -> int:
        """Instances serving now: with a component, those holding a copy."""
        with self._state:
            instances = self.instances(self.endpoint)
            if not self.component:
                return instances
            return min(instances, math.ceil(self.copies(self.component) / self.copies_per_instance))

    def _op_UpdateEndpointWeightsAndCapacities(self, body):
        before = self.instances_in_service()
        out = super()._op_UpdateEndpointWeightsAndCapacities(body)
        for change in body["DesiredWeightsAndCapacities"]:
            if "DesiredInstanceCount" in change:
                self.changes.append({"at": self.changes_clock(), "from": before, "to": change["DesiredInstanceCount"]})
        return out

    def _op_UpdateInferenceComponentRuntimeConfig(self, body):
        before = self.instances_in_service()
        out = super()._op_UpdateInferenceComponentRuntimeConfig(body)
        copies = body["DesiredRuntimeConfig"]["CopyCount"]
        self.changes.append({"at": self.changes_clock(), "from": before, "to": math.ceil(copies / self.copies_per_instance)})
        return out
