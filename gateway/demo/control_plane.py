"""The demo's SageMaker control plane: the stand-in's (``gateway.standins.sagemaker_control``),
with one endpoint made for the demo, on the demo's clock, able to scale to zero.

The gateway drives a model-based endpoint (DescribeEndpoint, UpdateEndpointWeightsAndCapacities).
AWS lets such an endpoint go to 0 instances only through inference components on a variant with
managed instance scaling, which the gateway does not drive yet (issue 12). So that the default
config's ``min_instances: 0`` can be carried out here, this endpoint is created already InService
at 0 instances and takes ``DesiredInstanceCount: 0``: the one departure from AWS, said where the
demo prints it. Everything else (SigV4, shapes checked against botocore's model, ``Updating`` for
the start-up time on the demo's clock) is the stand-in's.
"""
from __future__ import annotations

from ..standins.sagemaker_control import SageMakerControlStandIn


class DemoControlPlane(SageMakerControlStandIn):
    """``DemoControlPlane(startup_delay=360, clock=clock).start()``, then ``create_endpoint(...)``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.changes: list[dict] = []  # accepted resizes: {"at" (clock), "from", "to"} instances

    def create_endpoint(self, name: str, variant: str, instance_type: str) -> None:
        """A model-based endpoint, InService with 0 instances (see the module's docstring)."""
        image = f"{self.account}.dkr.ecr.{self.region}.amazonaws.com/demo-llm:latest"
        with self._state:
            self._op_CreateModel({"ModelName": name, "PrimaryContainer": {"Image": image},
                                  "ExecutionRoleArn": f"arn:aws:iam::{self.account}:role/demo"})
            self._op_CreateEndpointConfig({"EndpointConfigName": name, "ProductionVariants": [{
                "VariantName": variant, "ModelName": name, "InitialInstanceCount": 1, "InstanceType": instance_type}]})
            self._op_CreateEndpoint({"EndpointName": name, "EndpointConfigName": name})
            self._endpoints[name].update(phase="InService", ready_at=self.clock(), instances=0, desired=0)

    def _op_UpdateEndpointWeightsAndCapacities(self, body):
        ep = self._find(self._endpoints, body["EndpointName"], "endpoint", "endpoint")
        before = self._variant_counts(ep)[0]
        wanted = [c.get("DesiredInstanceCount") for c in body["DesiredWeightsAndCapacities"]
                  if c["VariantName"] == ep["variant"]["VariantName"]]
        if wanted == [0] and not ep["managed"] and self._endpoint_status(ep) == "InService":
            ep["instances"] = ep["desired"] = 0  # instances leave at once
            ep["modified"] = self._now_epoch()
            result = {"EndpointArn": self._arn("endpoint", ep["name"])}
        else:
            result = super()._op_UpdateEndpointWeightsAndCapacities(body)
        if wanted and wanted[0] is not None:
            self.changes.append({"at": self.clock(), "from": before, "to": wanted[0]})
        return result
