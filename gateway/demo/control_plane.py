"""A SageMaker control plane for the demo: DescribeEndpoint and UpdateEndpointWeightsAndCapacities.

AWS JSON 1.1 over HTTP (``X-Amz-Target: SageMaker.<Operation>``), SigV4-checked like the
runtime stand-in, so the gateway's real boto3 poller and actuator run against it. A resize
sets the endpoint ``Updating``; new instances come into service after the start-up delay
(real seconds: the config's ``startup_s`` divided by the demo's speed); fewer instances
leave at once. The endpoint may go to 0 instances, as one with managed instance scaling can.
"""
from __future__ import annotations

import json
import threading
import time

from ..standins.sagemaker_server import SageMakerStandIn


class DemoControlPlane(SageMakerStandIn):
    def __init__(self, endpoint: str, variant: str, region: str, access_key: str, secret_key: str,
                 startup_real_s: float, instances: int = 0, clock=time.time):
        super().__init__(endpoints=(endpoint,), region=region, access_key=access_key, secret_key=secret_key)
        self.endpoint, self.variant, self.startup_real_s, self.clock = endpoint, variant, startup_real_s, clock
        self._current = self._desired = instances
        self._ready_at: float | None = None  # monotonic time the pending change completes
        self._state_lock = threading.Lock()
        self.changes: list[dict] = []  # every accepted update: {"at" (clock), "from", "to"}

    def _settle(self) -> None:
        if self._ready_at is not None and time.monotonic() >= self._ready_at:
            self._current, self._ready_at = self._desired, None

    def instances_in_service(self) -> int:
        with self._state_lock:
            self._settle()
            return self._current

    def _describe(self) -> dict:
        with self._state_lock:
            self._settle()
            status = "Updating" if self._ready_at is not None else "InService"
            current, desired = self._current, self._desired
        arn = f"arn:aws:sagemaker:{self.region}:{self.account}:endpoint/{self.endpoint}"
        return {"EndpointName": self.endpoint, "EndpointArn": arn, "EndpointConfigName": self.endpoint,
                "EndpointStatus": status, "CreationTime": 1700000000.0, "LastModifiedTime": time.time(),
                "ProductionVariants": [{"VariantName": self.variant, "CurrentWeight": 1.0, "DesiredWeight": 1.0,
                                        "CurrentInstanceCount": current, "DesiredInstanceCount": desired}]}

    def _update(self, body: dict) -> tuple[int, dict]:
        wanted = next((w for w in body.get("DesiredWeightsAndCapacities", []) if w.get("VariantName") == self.variant),
                      None)
        if wanted is None or not isinstance(wanted.get("DesiredInstanceCount"), int):
            return 400, {"__type": "ValidationException", "message": f"No variant {self.variant} in the request."}
        with self._state_lock:
            self._settle()
            if self._ready_at is not None:
                return 400, {"__type": "ValidationException",
                             "message": f"Cannot update in-progress endpoint {self.endpoint}."}
            target = wanted["DesiredInstanceCount"]
            self.changes.append({"at": self.clock(), "from": self._current, "to": target})
            self._desired = target
            if target > self._current:
                self._ready_at = time.monotonic() + self.startup_real_s
            else:
                self._current = target
        return 200, {"EndpointArn": f"arn:aws:sagemaker:{self.region}:{self.account}:endpoint/{self.endpoint}"}

    async def handle(self, req, conn):
        target = req.headers.get("x-amz-target", "")
        rejected = self.check_signature(req)
        if rejected:
            return self._json(conn, req, 403, {"__type": rejected[0], "message": rejected[1]})
        body = req.json if isinstance(req.json, dict) else {}
        if target == "SageMaker.DescribeEndpoint":
            if body.get("EndpointName") != self.endpoint:
                return self._json(conn, req, 400, {"__type": "ValidationException",
                                                   "message": f"Could not find endpoint \"{body.get('EndpointName')}\"."})
            return self._json(conn, req, 200, self._describe())
        if target == "SageMaker.UpdateEndpointWeightsAndCapacities" and body.get("EndpointName") == self.endpoint:
            return self._json(conn, req, *self._update(body))
        return self._json(conn, req, 400, {"__type": "UnknownOperationException", "message": f"{target} is not served here."})

    def _json(self, conn, req, status: int, body: dict):
        conn.respond(req, status, json.dumps(body, default=str).encode(), content_type="application/x-amz-json-1.1",
                     headers={"x-amzn-RequestId": "demo"})
