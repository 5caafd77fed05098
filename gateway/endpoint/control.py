"""Reads a SageMaker endpoint's state from the control plane and, when allowed, resizes it.

Both talk to the ``sagemaker`` control-plane API with a botocore client, in a worker thread
(it blocks), from the once-a-second tick, never from the request path::

    poller = EndpointPoller(cfg, app.endpoints[cfg.name])        # DescribeEndpoint every 15 s
    actuator = CapacityActuator(cfg, app.endpoints[cfg.name], dry_run=config.routing.dry_run)

    async def tick(now):
        await poller.poll(now)                                   # no-op until due; never raises
        result = await actuator.apply(decision.instances, decision.reason, now)  # never raises
        # result.target is the recommendation (export it); result.action says what was done

With ``inference_component_name`` in the backend's config the poller also reads
``DescribeInferenceComponent`` (copies) and the actuator sets the component's copy count
with ``UpdateInferenceComponentRuntimeConfig`` (0 included: managed instance scaling then
releases the instances); instance counts convert to copies by ``copies_per_instance``.

The client follows the standard credential chain and honours
``AWS_ENDPOINT_URL_SAGEMAKER`` (botocore reads it itself). ``cfg.endpoint_url`` is the
*runtime* URL and is deliberately not used here.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..config import SageMakerBackendConfig
from .state import EndpointStatus

log = logging.getLogger("gateway.endpoint_control")

_DESCRIBE = "DescribeEndpoint"
_UPDATE = "UpdateEndpointWeightsAndCapacities"
_DESCRIBE_IC = "DescribeInferenceComponent"
_UPDATE_IC = "UpdateInferenceComponentRuntimeConfig"


def instances_for(copies: int, cfg: SageMakerBackendConfig) -> int:
    """Instances that hold ``copies`` copies of the component (what managed scaling runs)."""
    return math.ceil(copies / cfg.copies_per_instance)


def warn_plain_scale_to_zero(cfg: SageMakerBackendConfig) -> bool:
    """At start-up: min_instances 0 on a plain endpoint is a recommendation the gateway cannot apply."""
    if cfg.min_instances != 0 or cfg.inference_component_name:
        return False
    log.warning("backends.%s.min_instances: 0 on endpoint %s, which has no inference_component_name: a plain "
                "SageMaker endpoint cannot be resized to 0 instances (UpdateEndpointWeightsAndCapacities answers "
                "ValidationException), so 0 stays a recommendation (an actuation to 0 fails); set "
                "backends.%s.inference_component_name (deploy/sagemaker/setup_endpoint.py --inference-component) "
                "to scale to zero, or min_instances: 1", cfg.name, cfg.endpoint_name, cfg.name)
    return True


# botocore's SageMaker model cut down to the calls made here, and its endpoints.json to the
# services these clients use (scripts/trim_aws_model.py): the full model costs ~26 MB per
# process once loaded and endpoints.json ~7 MB; the cut ones well under 1 MB together.
AWS_MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "aws_models")


def sagemaker_client(region: str) -> Any:
    """A botocore ``sagemaker`` client, imported here because importing it costs ~0.3 s.

    botocore's own client rather than boto3's wrapper of it: the calls and errors are the same,
    and boto3's import holds another ~2 MB per process for resources nothing here uses."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.insert(0, AWS_MODELS_DIR)
    # Bounded: a hung or unreachable control plane must not hold the worker thread (or an
    # actuation, or shutdown, which waits for the thread) for long: ~2 s per connection attempt.
    config = Config(connect_timeout=2, read_timeout=10, retries={"mode": "standard", "max_attempts": 3})
    return session.create_client("sagemaker", region_name=region, config=config)


def _describe_error(e: Exception) -> str:
    """Error code and AWS's message only: never the client, request or credentials."""
    response = getattr(e, "response", None)  # botocore ClientError
    err = response.get("Error") if isinstance(response, dict) else None
    if err:
        return f"{err.get('Code', type(e).__name__)}: {err.get('Message', '')}".strip()
    return f"{type(e).__name__}: {e}"


# ClientError codes: the caller's identity may not call DescribeEndpoint, or AWS does not
# accept the credentials at all: not hiccups, the operator has to act (polls go on meanwhile).
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "NotAuthorized",
                     "AuthorizationError"})
_REJECTED = frozenset({"UnrecognizedClientException", "InvalidClientTokenId", "InvalidAccessKeyId",
                       "SignatureDoesNotMatch", "InvalidSignatureException", "IncompleteSignature",
                       "ExpiredToken", "ExpiredTokenException", "RequestExpired", "MissingAuthenticationToken"})
NO_CREDENTIALS = "no AWS credentials"


def unconfirmed_reason(e: Exception) -> str:
    """Why a ``DescribeEndpoint`` did not answer, in the words an operator acts on."""
    from botocore import exceptions as bx  # cheap here: the client that raised this loaded botocore

    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return NO_CREDENTIALS
    if isinstance(e, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ReadTimeoutError)):
        return "control plane unreachable"
    response = getattr(e, "response", None)
    err = (response.get("Error") if isinstance(response, dict) else None) or {}
    code, message = str(err.get("Code", "")), str(err.get("Message", "")).lower()
    if code in _DENIED or "not authorized" in message:
        return "not authorized to DescribeEndpoint"
    if code in _REJECTED:
        return "AWS credentials rejected"
    if "throttl" in code.lower():
        return "DescribeEndpoint throttled"
    return "DescribeEndpoint failed"


def log_unconfirmed(cfg: SageMakerBackendConfig, status: EndpointStatus) -> None:
    """The one operational line that says an endpoint is not confirmed, and what follows from it."""
    where = f"endpoint {cfg.endpoint_name} (backend {cfg.name})"
    detail = f" ({status.last_error})" if status.last_error else ""
    if status.charged:
        log.warning("%s not confirmed: %s%s; assuming %d instance(s) in service, routed to and charged "
                    "(assumed_instances), until DescribeEndpoint answers", where, status.reason, detail,
                    status.instances_in_service)
    else:
        log.warning("%s unconfirmed: %s%s; not routed to and not charged until DescribeEndpoint answers. "
                    "If this deployment may invoke the endpoint but not describe it, set "
                    "backends.%s.assumed_instances", where, status.reason, detail, cfg.name)


class _Control:
    """One lazily created control-plane client, used from one worker thread at a time."""

    def __init__(self, cfg: SageMakerBackendConfig, status: EndpointStatus, client_factory: Callable[[], Any] | None):
        self.cfg, self.status = cfg, status
        status.inference_component = cfg.inference_component_name
        self._factory = client_factory or (lambda: sagemaker_client(cfg.region))
        self._client_obj: Any = None
        self._busy = False

    def _client(self) -> Any:  # runs in the worker thread: client creation blocks too
        if self._client_obj is None:
            self._client_obj = self._factory()
        return self._client_obj

    def _set_error(self, op: str, e: Exception) -> str:
        message = f"{op}: {_describe_error(e)}"
        if message != self.status.last_error:  # once per new error, not every poll
            log.warning("endpoint %s: %s", self.cfg.endpoint_name, message)
        self.status.last_error = message
        return message

    def _clear_error(self, op: str) -> None:
        if self.status.last_error and self.status.last_error.startswith(op + ":"):
            self.status.last_error = None


class EndpointPoller(_Control):
    """Keeps ``status`` in line with ``DescribeEndpoint`` for the configured variant.

    Call ``await poll(now)`` every tick; it calls AWS only every ``interval_s`` seconds
    and never two calls at once. Until a call answers the endpoint stays unconfirmed
    (or assumed, see ``EndpointStatus``) and ``reason`` says why ("no AWS credentials",
    "not authorized to DescribeEndpoint", ...), logged once per reason. Once one has
    answered, an error (throttling, network, expired credentials) keeps the last known
    status and counts and ``last_error`` says why: a control-plane hiccup is not a reason
    to stop routing to a serving endpoint. "Not found" is an answer: nothing serves there.
    """

    def __init__(self, cfg: SageMakerBackendConfig, status: EndpointStatus,
                 client_factory: Callable[[], Any] | None = None, interval_s: float = 15.0):
        super().__init__(cfg, status, client_factory)
        self.interval_s = interval_s
        self._last_attempt: float | None = None

    def due(self, now: float) -> bool:
        return not self._busy and (self._last_attempt is None or now - self._last_attempt >= self.interval_s)

    def _describe(self) -> dict:
        desc = self._client().describe_endpoint(EndpointName=self.cfg.endpoint_name)
        if self.cfg.inference_component_name:  # same thread, same tick: counts from one moment
            try:
                desc["_component"] = self._client().describe_inference_component(
                    InferenceComponentName=self.cfg.inference_component_name)
            except Exception as e:  # noqa: BLE001 — reported by _apply_component
                desc["_component_error"] = e
        return desc

    def _apply_component(self, desc: dict) -> None:
        """Copies from DescribeInferenceComponent; only instances that hold a copy serve."""
        st, cfg = self.status, self.cfg
        st.inference_component = cfg.inference_component_name
        billed = st.instances_in_service  # the variant's CurrentInstanceCount, just read
        error = desc.get("_component_error")
        if error is not None:
            self._set_error(_DESCRIBE_IC, error)
            if "Could not find inference component" in _describe_error(error):
                st.copies = st.desired_copies = 0
                st.component_status = "NotFound"
        else:
            ic = desc["_component"]
            runtime = ic.get("RuntimeConfig", {})
            st.copies = int(runtime.get("CurrentCopyCount", 0))
            st.desired_copies = int(runtime.get("DesiredCopyCount", st.copies))
            st.component_status = ic.get("InferenceComponentStatus")
            self._clear_error(_DESCRIBE_IC)
        st.instances_billed = billed
        st.instances_in_service = min(billed, instances_for(st.copies, cfg))
        st.desired_instances = instances_for(st.desired_copies, cfg)

    def _unconfirmed(self, e: Exception, reason: str) -> None:
        """No answer, and none before: the state stays unconfirmed (or assumed) and says why, once."""
        st = self.status
        st.last_error = f"{_DESCRIBE}: {_describe_error(e)}"
        if reason != st.reason:
            st.reason = reason
            log_unconfirmed(self.cfg, st)

    async def poll(self, now: float) -> bool:
        """Poll if due; True if AWS was asked (whether or not it answered)."""
        if not self.due(now):
            return False
        self._busy, self._last_attempt = True, now
        try:
            desc = await asyncio.to_thread(self._describe)
        except Exception as e:  # noqa: BLE001 — any failure is reported, none stops the tick
            reason = unconfirmed_reason(e)
            if reason == NO_CREDENTIALS:
                self._client_obj = None  # credentials are resolved with the client: look again next time
            if "Could not find endpoint" in _describe_error(e):
                # Known not to exist (unlike a throttled or unreachable control plane): nothing
                # serves there and nothing is billed, so neither routing nor accrual may assume it.
                self._set_error(_DESCRIBE, e)
                self.status.status, self.status.healthy = "NotFound", False
                self.status.instances_in_service = self.status.desired_instances = 0
                self.status.instances_billed = self.status.copies = self.status.desired_copies = 0
                self.status.polled_at = now
            elif self.status.confirmed:
                self._set_error(_DESCRIBE, e)  # the last answer stands
            else:
                self._unconfirmed(e, reason)
            return True
        finally:
            self._busy = False
        st = self.status
        variants = desc.get("ProductionVariants", [])
        variant = next((v for v in variants if v.get("VariantName") == self.cfg.variant_name), None)
        if not st.confirmed:
            log.info("endpoint %s (backend %s) confirmed by DescribeEndpoint: %s", self.cfg.endpoint_name,
                     self.cfg.name, desc.get("EndpointStatus"))
        st.status = desc.get("EndpointStatus", st.status)
        st.healthy = st.status in ("InService", "Updating")
        st.polled_at, st.reason = now, None
        if variant is None:
            st.last_error = f"{_DESCRIBE}: no variant {self.cfg.variant_name!r} on endpoint {self.cfg.endpoint_name!r}"
            return True
        st.instances_in_service = int(variant.get("CurrentInstanceCount", st.billed_instances))
        st.desired_instances = int(variant.get("DesiredInstanceCount", st.desired_instances))
        self._clear_error(_DESCRIBE)
        if self.cfg.inference_component_name:
            self._apply_component(desc)
        return True


@dataclass(frozen=True)
class ActuationResult:
    """What ``CapacityActuator.apply`` did (or, in dry run, would do). Counts are instances."""

    requested: int  # what the capacity decision asked for
    target: int  # requested, clamped to [min_instances, max_instances]: the recommendation
    current: int  # DesiredInstanceCount before this call
    action: str  # "none" (already there) | "would_update" (dry run) | "updated" | "held" | "failed"
    reason: str  # the decision's reason; for held/failed, why
    dry_run: bool
    at: float  # epoch seconds

    def as_dict(self) -> dict:
        return asdict(self)


class CapacityActuator(_Control):
    """Applies a capacity decision with ``UpdateEndpointWeightsAndCapacities`` (with an inference
    component: ``UpdateInferenceComponentRuntimeConfig``, copies = instances x copies_per_instance), if allowed.

    With ``dry_run`` (the default in config) it never calls AWS and only reports what it
    would do. Otherwise it changes the variant's instance count when the target differs,
    the endpoint is ``InService`` (not ``Updating``, and polled at least once), and the
    last attempt is ``cooldown_s`` seconds old, so a flapping decision cannot thrash the
    endpoint (each resize takes minutes and bills the new instances from their start).
    """

    def __init__(self, cfg: SageMakerBackendConfig, status: EndpointStatus, dry_run: bool,
                 client_factory: Callable[[], Any] | None = None, cooldown_s: float = 300.0):
        super().__init__(cfg, status, client_factory)
        self.dry_run = dry_run
        self.cooldown_s = cooldown_s
        warn_plain_scale_to_zero(cfg)
        self._last_attempt: float | None = None
        self.last_result: ActuationResult | None = None

    async def apply(self, target_instances: int, reason: str, now: float) -> ActuationResult:
        cfg, st = self.cfg, self.status
        # Zero only when min_instances is 0. Real SageMaker accepts DesiredInstanceCount=0 only for
        # endpoints with managed instance scaling (inference components); any other endpoint answers
        # ValidationException, which ends up in last_error like any other failure.
        target = max(cfg.min_instances, min(cfg.max_instances, int(target_instances)))
        current = st.desired_instances

        def done(action: str, why: str = reason) -> ActuationResult:
            self.last_result = ActuationResult(int(target_instances), target, current, action, why, self.dry_run, now)
            return self.last_result

        if target == current:
            return done("none")
        if st.status != "InService":
            return done("held", f"endpoint is {st.status}, not InService")
        if cfg.inference_component_name and st.component_status != "InService":
            return done("held", f"inference component is {st.component_status or 'not described'}, not InService")
        if self.dry_run:
            return done("would_update")
        if self._busy:
            return done("held", "an update call is in flight")
        if self._last_attempt is not None and now - self._last_attempt < self.cooldown_s:
            return done("held", f"cooldown: last change {now - self._last_attempt:.0f}s ago, < {self.cooldown_s:.0f}s")
        self._busy, self._last_attempt = True, now  # failures start the cooldown too: no retry every tick
        op = _UPDATE_IC if cfg.inference_component_name else _UPDATE
        copies = target * cfg.copies_per_instance
        try:
            await asyncio.to_thread(self._update if op == _UPDATE else self._update_copies, target, copies)
        except Exception as e:  # noqa: BLE001 — reported, never raised into the tick
            return done("failed", self._set_error(op, e))
        finally:
            self._busy = False
        self._clear_error(op)
        # What AWS reports right after the call; the next poll replaces it with the real state.
        st.desired_instances = target
        if op == _UPDATE:
            log.info("endpoint %s: DesiredInstanceCount %d -> %d (%s)", cfg.endpoint_name, current, target, reason)
            st.status = "Updating"
            return done("updated")
        log.info("inference component %s: copies %d -> %d (%s)", cfg.inference_component_name, st.desired_copies,
                 copies, reason)
        st.desired_copies = copies
        if copies < st.copies:  # copies being removed serve nothing from now on
            st.copies = copies
            st.instances_in_service = min(st.instances_in_service, instances_for(copies, cfg))
        else:
            st.component_status = "Updating"
        return done("updated")

    def _update(self, target: int, copies: int) -> None:
        self._client().update_endpoint_weights_and_capacities(
            EndpointName=self.cfg.endpoint_name,
            DesiredWeightsAndCapacities=[{"VariantName": self.cfg.variant_name, "DesiredInstanceCount": target}])

    def _update_copies(self, target: int, copies: int) -> None:
        self._client().update_inference_component_runtime_config(
            InferenceComponentName=self.cfg.inference_component_name, DesiredRuntimeConfig={"CopyCount": copies})
