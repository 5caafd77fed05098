"""SageMaker control-plane stand-in: endpoints and inference components, with managed instance scaling.

moto has no inference components, so this serves the calls that setup_endpoint.py, the gateway's
poller/actuator and `gateway demo` make, in AWS JSON 1.1 (``X-Amz-Target: SageMaker.<Op>``), with
SigV4 checked by the runtime stand-in's verifier and every request and response checked against
botocore's own service model (a request AWS would refuse gets ValidationException; a response the
model does not allow is a stand-in bug, raised to the test)::

    with SageMakerControlStandIn(startup_delay=5.0) as cp, SageMakerStandIn(control=cp) as rt:
        sm = boto3.client("sagemaker", endpoint_url=cp.url, region_name=cp.region,
                          aws_access_key_id=cp.access_key, aws_secret_access_key=cp.secret_key)
        sm.create_endpoint_config(...ManagedInstanceScaling={"Status": "ENABLED", "MinInstanceCount": 0, ...})
        ...
        cp.copies("my-component")          # current copy count, what the runtime stand-in serves with

Served: CreateModel, DescribeModel, DeleteModel, CreateEndpointConfig, DescribeEndpointConfig,
DeleteEndpointConfig, CreateEndpoint, DescribeEndpoint, DeleteEndpoint,
UpdateEndpointWeightsAndCapacities, CreateInferenceComponent, DescribeInferenceComponent,
UpdateInferenceComponentRuntimeConfig, DeleteInferenceComponent, ListInferenceComponents.

How it models time (seconds, from ``clock``, default ``time.monotonic``):

* A new endpoint is ``Creating`` for ``startup_delay``, then ``InService``.
* Plain endpoints (variant with ``ModelName``): UpdateEndpointWeightsAndCapacities to 0 instances is a
  ValidationException, as on AWS; another count makes the endpoint ``Updating`` for ``startup_delay``.
* Endpoints whose variant has ``ManagedInstanceScaling`` host inference components. The variant's
  instances follow the copies: ``max(MinInstanceCount, ceil(copies / copies_per_instance))``, at most
  MaxInstanceCount (before any component exists: InitialInstanceCount). Adding copies makes the
  component ``Updating`` (``Creating`` when new) for ``startup_delay`` (``from_zero_delay`` when it
  had no copy); CurrentCopyCount rises when that elapses. The instances being started are counted
  in CurrentInstanceCount (and billed, as AWS bills them) ``instance_delay`` seconds after the
  request (default 0: at once). Removing copies takes effect at once.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import botocore.session

from .sagemaker_server import NO_CAPACITY, SageMakerStandIn

_MODEL = None
_MODEL_LOCK = threading.Lock()


def service_model():
    """botocore's full SageMaker model (loaded once: ~1 s, ~26 MB)."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            _MODEL = botocore.session.get_session().get_service_model("sagemaker")
        return _MODEL


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def shape_errors(value: Any, shape, path: str = "") -> list[str]:
    """Where a wire-JSON value breaks a botocore shape (types, required, enums, lengths, ranges)."""
    kind, meta, where = shape.type_name, shape.metadata, path or "input"
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        errors = [f"{path + '.' if path else ''}{k}: is required" for k in shape.required_members if k not in value]
        for k, v in value.items():
            if k not in shape.members:
                errors.append(f"{path + '.' if path else ''}{k}: unknown member")
            else:
                errors += shape_errors(v, shape.members[k], f"{path + '.' if path else ''}{k}")
        return errors
    if kind == "list":
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        errors = _bounds(len(value), meta, where, "length")
        for i, item in enumerate(value):
            errors += shape_errors(item, shape.member, f"{where}[{i}]")
        return errors
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        return [e for k, v in value.items() for e in shape_errors(k, shape.key, f"{where} key")
                + shape_errors(v, shape.value, f"{where}.{k}")]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where}: expected a string"]
        if shape.enum and value not in shape.enum:
            return [f"{where}: {value!r} is not one of {shape.enum}"]
        errors = _bounds(len(value), meta, where, "length")
        if "pattern" in meta and not errors:
            try:
                pattern = re.compile(meta["pattern"])
            except re.error:  # a Java-only construct: the length checks stand
                pattern = None
            if pattern is not None and not pattern.search(value):
                errors.append(f"{where}: {value!r} does not match {meta['pattern']}")
        return errors
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{where}: expected an integer"]
        return _bounds(value, meta, where, "value")
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: expected a number"]
        return _bounds(value, meta, where, "value")
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: expected a boolean"]
    if kind == "timestamp":  # AWS JSON: epoch seconds
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{where}: expected epoch seconds"]
    return []  # blob and the like: not used by these calls


def _bounds(n: float, meta: Mapping[str, Any], where: str, what: str) -> list[str]:
    if "min" in meta and n < meta["min"]:
        return [f"{where}: {what} {n} is below the minimum {meta['min']}"]
    if "max" in meta and n > meta["max"]:
        return [f"{where}: {what} {n} is above the maximum {meta['max']}"]
    return []


class SageMakerControlStandIn(SageMakerStandIn):
    """``POST /`` with ``X-Amz-Target: SageMaker.<Op>``; state in memory, time from ``clock``.

    Public face: ``url``, ``region``, ``access_key``/``secret_key``, ``requests`` (as every stand-in),
    ``copies(component)``, ``instances(endpoint)``; for the runtime stand-in ``knows_endpoint``,
    ``hosts_components`` and ``component_copies``. The delays and ``copies_per_instance`` are plain
    attributes a test or the demo may change at any time. A gateway finds it through
    ``AWS_ENDPOINT_URL_SAGEMAKER=<url>`` (boto3 reads it). It is a SageMakerStandIn only to share
    that class's SigV4 verifier and credentials; it serves no invocations.
    """

    def __init__(self, startup_delay: float = 0.0, from_zero_delay: float | None = None,
                 instance_delay: float = 0.0, copies_per_instance: int = 1,
                 clock: Callable[[], float] = time.monotonic, **kwargs: Any):
        super().__init__(endpoints=(), **kwargs)
        self.startup_delay, self.from_zero_delay, self.instance_delay = startup_delay, from_zero_delay, instance_delay
        self.copies_per_instance, self.clock = copies_per_instance, clock
        self._state = threading.RLock()  # handlers run on the server's loop, queries from test threads
        self._models: dict[str, dict] = {}
        self._configs: dict[str, dict] = {}
        self._endpoints: dict[str, dict] = {}
        self._components: dict[str, dict] = {}
        service_model()  # load now, not inside the first request

    # ---- what the runtime stand-in and tests read ----

    def copies(self, component: str) -> int:
        """The component's CurrentCopyCount now (0 for one that does not exist)."""
        with self._state:
            ic = self._components.get(component)
            return self._advance_component(ic)["current"] if ic else 0

    def component_copies(self, endpoint: str, component: str) -> int | None:
        """Copies serving ``component`` on ``endpoint`` now; None if it is not on that endpoint."""
        with self._state:
            ic = self._components.get(component)
            if ic is None or ic["endpoint"] != endpoint:
                return None
            return self._advance_component(ic)["current"]

    def hosts_components(self, endpoint: str) -> bool:
        """Whether the endpoint's variant uses managed instance scaling (invocations then need a component)."""
        with self._state:
            ep = self._endpoints.get(endpoint)
            return bool(ep and ep["managed"])

    def knows_endpoint(self, endpoint: str) -> bool:
        with self._state:
            return endpoint in self._endpoints

    def instances(self, endpoint: str) -> int:
        """CurrentInstanceCount of the endpoint's (first) variant now: what AWS bills."""
        with self._state:
            return self._variant_counts(self._endpoints[endpoint])[0]

    # ---- HTTP ----

    async def handle(self, req, conn):
        target = req.headers.get("x-amz-target", "")
        if req.method != "POST" or req.path != "/" or not target.startswith("SageMaker."):
            return self._json_error(conn, req, ApiError("UnknownOperationException", "", 404))
        rejected = self.check_signature(req)
        if rejected:
            return self._json_error(conn, req, ApiError(rejected[0], rejected[1], 403))
        op = target.split(".", 1)[1]
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            return self._json_error(conn, req, ApiError("UnknownOperationException", f"{op} is not served", 400))
        operation = service_model().operation_model(op)
        body = req.json if req.body else {}
        errors = shape_errors(body, operation.input_shape) if operation.input_shape else []
        if errors:
            return self._json_error(conn, req, ApiError(
                "ValidationException", f"{len(errors)} validation error(s) detected: {'; '.join(errors)}"))
        try:
            with self._state:
                result = handler(body)
        except ApiError as e:
            return self._json_error(conn, req, e)
        result = result or {}
        if operation.output_shape is not None:
            wrong = shape_errors(result, operation.output_shape)
            if wrong:
                raise AssertionError(f"stand-in answer to {op} breaks botocore's model: {wrong}")
        conn.respond(req, 200, result, content_type="application/x-amz-json-1.1",
                     headers={"x-amzn-RequestId": str(uuid.uuid4())})

    def _json_error(self, conn, req, e: ApiError):
        conn.respond(req, e.status, {"__type": e.code, "message": e.message}, content_type="application/x-amz-json-1.1",
                     headers={"x-amzn-RequestId": str(uuid.uuid4())})

    # ---- helpers ----

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    def _now_epoch(self) -> float:
        return round(time.time(), 3)

    def _find(self, table: dict, name: str, kind: str, arn_kind: str) -> dict:
        if name not in table:
            raise ApiError("ValidationException", f'Could not find {kind} "{self._arn(arn_kind, name)}".')
        return table[name]

    def _exists(self, table: dict, name: str, kind: str, arn_kind: str) -> None:
        if name in table:
            raise ApiError("ValidationException", f'Cannot create already existing {kind} "{self._arn(arn_kind, name)}".')

    def _delay(self, from_zero: bool) -> float:
        return self.from_zero_delay if from_zero and self.from_zero_delay is not None else self.startup_delay

    # ---- models ----

    def _op_CreateModel(self, body):
        name = body["ModelName"]
        self._exists(self._models, name, "model", "model")
        self._models[name] = {**body, "ModelArn": self._arn("model", name), "CreationTime": self._now_epoch()}
        self._models[name].pop("Tags", None)
        return {"ModelArn": self._models[name]["ModelArn"]}

    def _op_DescribeModel(self, body):
        return dict(self._find(self._models, body["ModelName"], "model", "model"))

    def _op_DeleteModel(self, body):
        self._find(self._models, body["ModelName"], "model", "model")
        del self._models[body["ModelName"]]

    # ---- endpoint configs ----

    def _op_CreateEndpointConfig(self, body):
        name = body["EndpointConfigName"]
        self._exists(self._configs, name, "endpoint configuration", "endpoint-config")
        for v in body["ProductionVariants"]:
            managed = v.get("ManagedInstanceScaling", {})
            if v.get("ModelName") and v["ModelName"] not in self._models:
                raise ApiError("ValidationException", f"Could not find model \"{self._arn('model', v['ModelName'])}\".")
            if not v.get("ModelName") and not body.get("ExecutionRoleArn"):
                raise ApiError("ValidationException", "ExecutionRoleArn is required for an endpoint config without "
                               "ModelName in its production variants (inference components)")
            if managed.get("Status") == "ENABLED" and managed.get("MinInstanceCount", 1) > managed.get(
                    "MaxInstanceCount", math.inf):
                raise ApiError("ValidationException", "MinInstanceCount must not exceed MaxInstanceCount")
            if not v.get("InstanceType") or not v.get("InitialInstanceCount"):
                raise ApiError("ValidationException", f"Production variant {v['VariantName']} needs InstanceType "
                               "and InitialInstanceCount >= 1")
        cfg = {k: v for k, v in body.items() if k != "Tags"}
        cfg.update(EndpointConfigArn=self._arn("endpoint-config", name), CreationTime=self._now_epoch())
        self._configs[name] = cfg
        return {"EndpointConfigArn": cfg["EndpointConfigArn"]}

    def _op_DescribeEndpointConfig(self, body):
        return dict(self._find(self._configs, body["EndpointConfigName"], "endpoint configuration", "endpoint-config"))

    def _op_DeleteEndpointConfig(self, body):
        self._find(self._configs, body["EndpointConfigName"], "endpoint configuration", "endpoint-config")
        del self._configs[body["EndpointConfigName"]]

    # ---- endpoints ----

    def _op_CreateEndpoint(self, body):
        name = body["EndpointName"]
        self._exists(self._endpoints, name, "endpoint", "endpoint")
        cfg = self._find(self._configs, body["EndpointConfigName"], "endpoint configuration", "endpoint-config")
        variant = cfg["ProductionVariants"][0]
        managed = variant.get("ManagedInstanceScaling", {}).get("Status") == "ENABLED"
        self._endpoints[name] = {
            "name": name, "config": body["EndpointConfigName"], "variant": variant, "managed": managed,
            "created": self._now_epoch(), "modified": self._now_epoch(), "phase": "Creating",
            "ready_at": self.clock() + self.startup_delay,
            "instances": variant["InitialInstanceCount"], "desired": variant["InitialInstanceCount"]}
        return {"EndpointArn": self._arn("endpoint", name)}

    def _endpoint_status(self, ep: dict) -> str:
        if ep["phase"] != "InService" and self.clock() >= ep["ready_at"]:
            ep["phase"], ep["instances"] = "InService", ep["desired"]
        return ep["phase"]

    def _variant_counts(self, ep: dict) -> tuple[int, int]:
        """(CurrentInstanceCount, DesiredInstanceCount) of the endpoint's variant now."""
        self._endpoint_status(ep)
        if not ep["managed"]:
            return ep["instances"], ep["desired"]
        ics = [self._advance_component(ic) for ic in self._components.values() if ic["endpoint"] == ep["name"]]
        if not ics:
            return ep["instances"], ep["desired"]
        scaling = ep["variant"]["ManagedInstanceScaling"]
        lo, hi = scaling.get("MinInstanceCount", 1), scaling.get("MaxInstanceCount", math.inf)
        now = self.clock()

        def need(copies: int) -> int:
            return int(max(lo, min(hi, math.ceil(copies / max(1, self.copies_per_instance)))))

        # instances being started count once instance_delay has passed since the scale-out
        counted = sum(ic["desired"] if now >= ic["changed_at"] + self.instance_delay else ic["current"] for ic in ics)
        return need(counted), need(sum(ic["desired"] for ic in ics))

    def _op_DescribeEndpoint(self, body):
        ep = self._find(self._endpoints, body["EndpointName"], "endpoint", "endpoint")
        status = self._endpoint_status(ep)
        current, desired = self._variant_counts(ep)
        v = ep["variant"]
        summary = {"VariantName": v["VariantName"], "CurrentWeight": 1.0, "DesiredWeight": 1.0,
                   "CurrentInstanceCount": current, "DesiredInstanceCount": desired}
        if v.get("ManagedInstanceScaling"):
            summary["ManagedInstanceScaling"] = v["ManagedInstanceScaling"]
        if v.get("RoutingConfig"):
            summary["RoutingConfig"] = v["RoutingConfig"]
        if status == "Creating":  # AWS lists no variant until the endpoint first comes up
            summary = None
        out = {"EndpointName": ep["name"], "EndpointArn": self._arn("endpoint", ep["name"]),
               "EndpointConfigName": ep["config"], "EndpointStatus": status, "CreationTime": ep["created"],
               "LastModifiedTime": ep["modified"]}
        if summary:
            out["ProductionVariants"] = [summary]
        return out

    def _op_DeleteEndpoint(self, body):
        name = body["EndpointName"]
        self._find(self._endpoints, name, "endpoint", "endpoint")
        if any(ic["endpoint"] == name for ic in self._components.values()):
            raise ApiError("ValidationException", f"Endpoint {name} still hosts inference components: delete them first")
        del self._endpoints[name]

    def _op_UpdateEndpointWeightsAndCapacities(self, body):
        ep = self._find(self._endpoints, body["EndpointName"], "endpoint", "endpoint")
        if self._endpoint_status(ep) != "InService":
            raise ApiError("ValidationException", f"Cannot update endpoint {ep['name']} while it is not InService")
        for change in body["DesiredWeightsAndCapacities"]:
            if change["VariantName"] != ep["variant"]["VariantName"]:
                raise ApiError("ValidationException", f"The variant {change['VariantName']} does not exist")
            count = change.get("DesiredInstanceCount")
            if count is None:
                continue
            if ep["managed"]:
                raise ApiError("ValidationException", "The instance count of a variant with managed instance "
                               "scaling follows its inference components' copies: update those instead")
            if count < 1:
                raise ApiError("ValidationException", "DesiredInstanceCount must be at least 1 for a production "
                               "variant without inference components and managed instance scaling")
            ep["desired"], ep["ready_at"], ep["phase"] = count, self.clock() + self.startup_delay, "Updating"
            ep["modified"] = self._now_epoch()
        return {"EndpointArn": self._arn("endpoint", ep["name"])}

    # ---- inference components ----

    def _advance_component(self, ic: dict) -> dict:
        if ic["ready_at"] is not None and self.clock() >= ic["ready_at"]:
            ic["current"], ic["ready_at"], ic["status"] = ic["desired"], None, "InService"
        return ic

    def _capped(self, ep: dict, ic_name: str, copies: int) -> int:
        """Copies the variant's MaxInstanceCount leaves room for, beside the endpoint's other components."""
        hi = ep["variant"]["ManagedInstanceScaling"].get("MaxInstanceCount", math.inf)
        others = sum(ic["desired"] for n, ic in self._components.items() if ic["endpoint"] == ep["name"] and n != ic_name)
        return int(max(0, min(copies, hi * max(1, self.copies_per_instance) - others)))

    def _scale(self, ic: dict, ep: dict, copies: int) -> None:
        copies, now = self._capped(ep, ic["name"], copies), self.clock()
        ic["desired"], ic["changed_at"], ic["modified"] = copies, now, self._now_epoch()
        if copies <= ic["current"]:  # scale-in: copies (and then instances) go at once
            ic["current"], ic["ready_at"], ic["status"] = copies, None, "InService"
        else:
            ic["ready_at"], ic["status"] = now + self._delay(from_zero=ic["current"] == 0), "Updating"

    def _op_CreateInferenceComponent(self, body):
        name = body["InferenceComponentName"]
        self._exists(self._components, name, "inference component", "inference-component")
        ep = self._find(self._endpoints, body["EndpointName"], "endpoint", "endpoint")
        if not ep["managed"]:
            raise ApiError("ValidationException", f"Endpoint {ep['name']} has no managed instance scaling: inference "
                           "components need an endpoint config without ModelName in its variants")
        if self._endpoint_status(ep) != "InService":
            raise ApiError("ValidationException", f"Endpoint {ep['name']} is not InService")
        variant = body.get("VariantName", ep["variant"]["VariantName"])
        if variant != ep["variant"]["VariantName"]:
            raise ApiError("ValidationException", f"The variant {variant} does not exist on endpoint {ep['name']}")
        spec = body.get("Specification", {})
        if spec.get("ModelName") and spec["ModelName"] not in self._models:
            raise ApiError("ValidationException", f"Could not find model \"{self._arn('model', spec['ModelName'])}\".")
        if "ComputeResourceRequirements" not in spec or "RuntimeConfig" not in body:
            raise ApiError("ValidationException", "Specification.ComputeResourceRequirements and RuntimeConfig are "
                           "required for a component on an instance-based endpoint")
        now = self.clock()
        self._components[name] = {
            "name": name, "endpoint": ep["name"], "variant": variant, "spec": spec, "status": "Creating",
            "current": 0, "desired": self._capped(ep, name, body["RuntimeConfig"]["CopyCount"]),
            "ready_at": now + self._delay(from_zero=True), "changed_at": now,
            "created": self._now_epoch(), "modified": self._now_epoch()}
        return {"InferenceComponentArn": self._arn("inference-component", name)}

    def _component_summary(self, ic: dict) -> dict:
        self._advance_component(ic)
        return {"InferenceComponentName": ic["name"], "InferenceComponentArn": self._arn("inference-component", ic["name"]),
                "EndpointName": ic["endpoint"], "EndpointArn": self._arn("endpoint", ic["endpoint"]),
                "VariantName": ic["variant"], "InferenceComponentStatus": ic["status"],
                "CreationTime": ic["created"], "LastModifiedTime": ic["modified"]}

    def _op_DescribeInferenceComponent(self, body):
        ic = self._find(self._components, body["InferenceComponentName"], "inference component", "inference-component")
        out = self._component_summary(ic)
        out.update(Specification=ic["spec"],
                   RuntimeConfig={"DesiredCopyCount": ic["desired"], "CurrentCopyCount": ic["current"]})
        return out

    def _op_UpdateInferenceComponentRuntimeConfig(self, body):
        ic = self._find(self._components, body["InferenceComponentName"], "inference component", "inference-component")
        self._advance_component(ic)
        if ic["status"] != "InService":
            raise ApiError("ValidationException", f"Inference component {ic['name']} is {ic['status']}: an update "
                           "is allowed once it is InService")
        self._scale(ic, self._endpoints[ic["endpoint"]], body["DesiredRuntimeConfig"]["CopyCount"])
        return {"InferenceComponentArn": self._arn("inference-component", ic["name"])}

    def _op_DeleteInferenceComponent(self, body):
        self._find(self._components, body["InferenceComponentName"], "inference component", "inference-component")
        del self._components[body["InferenceComponentName"]]

    def _op_ListInferenceComponents(self, body):
        found = [self._component_summary(ic) for ic in self._components.values()
                 if body.get("EndpointNameEquals") in (None, ic["endpoint"])
                 and body.get("NameContains", "") in ic["name"]
                 and body.get("StatusEquals") in (None, self._advance_component(ic)["status"])]
        return {"InferenceComponents": sorted(found, key=lambda s: s["CreationTime"])[:body.get("MaxResults", 100)]}


__all__ = ["NO_CAPACITY", "ApiError", "SageMakerControlStandIn", "service_model", "shape_errors"]
