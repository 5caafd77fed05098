"""The routing interface: numbers in, a decision out.

Everything here is pure: no I/O, no clock reads (time arrives as ``now_s``), no
imports from ``gateway``. The live gateway and the offline replay build the same
frozen contexts and call the same policy objects, so a policy that wins in replay
is exactly the code that runs in production.

Usage::

    policy = build_policy("break_even", {"hysteresis": 0.15})
    decision = policy.route(RequestContext(...))
    decision.backend, decision.reason      # -> "sagemaker", "endpoint_in_service"
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Protocol

API = "api"  # pay per token (OpenAI-compatible API)
ENDPOINT = "endpoint"  # pay per instance-second (SageMaker real-time endpoint)


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """API prices in USD per token (not per 1M): what one more token costs."""

    input: float
    output: float
    cached_input: float | None = None

    def request_cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return self.input * prompt_tokens + self.output * completion_tokens


@dataclass(frozen=True, slots=True)
class BackendView:
    """One candidate backend for a request, as the gateway sees it right now.

    ``kind`` is API or ENDPOINT. For an endpoint, ``instances_in_service`` is what
    is running (and paid for) now, ``capacity_tps`` is per instance in capacity
    tokens/second (see ``EndpointSpec.capacity_tokens``), ``backlog_tokens`` is the
    work it holds now (capacity tokens admitted and not yet processed) and ``queue_s``
    how many seconds of full throughput it may hold (see ``admission``).
    """

    name: str
    kind: str
    healthy: bool = True
    prices: TokenPrices | None = None  # API only
    context_window: int | None = None  # endpoint only (tokens)
    instances_in_service: int = 0
    capacity_tps: float = 0.0
    backlog_tokens: float = 0.0
    queue_s: float = 30.0

    @property
    def capacity_total_tps(self) -> float:
        return self.instances_in_service * self.capacity_tps


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Per-request input. ``candidates`` keeps the model's configured order."""

    model: str
    prompt_tokens: int  # exact, or an upper bound (see prompt_tokens_is_bound)
    max_tokens: int | None
    candidates: tuple[BackendView, ...]
    now_s: float = 0.0
    expected_completion_tokens: float = 0.0  # recent mean for this model, tokens
    # True when prompt_tokens is only an upper bound (a body's byte length): it proves a fit where
    # it is below a window, and nothing where it is above. The caller counts whenever that would
    # change the backend (an endpoint in service); an endpoint out of service is then reported
    # as such, which is true whatever the count.
    prompt_tokens_is_bound: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    backend: str
    reason: str


@dataclass(frozen=True, slots=True)
class LoadMoments:
    """How the endpoint load varies: capacity tokens per aligned ``bucket_s`` bucket.

    Over the ``count`` complete buckets of a window: ``total`` = Σ load, ``squares`` = Σ load²,
    ``step_squares`` = Σ (load of a bucket − load of the one before)² over the ``count − 1``
    neighbouring pairs. Gives the policy the traffic's own burstiness instead of an assumed one.
    """

    bucket_s: float
    count: int
    total: float
    squares: float
    step_squares: float = 0.0

    @property
    def dispersion(self) -> float | None:
        """Variance ÷ mean of the per-bucket load (capacity tokens) around its local level; None without data.

        The variance is the Allan variance, Σ steps² ÷ 2(count − 1): what changes from one
        bucket to the next. A level that moves slowly (the daily ramp, a busy half-hour and then
        nothing) is not burstiness; clumps and gaps of a minute are.
        """
        if self.count < 2 or self.total <= 0:
            return None
        return self.allan_variance / (self.total / self.count)

    @property
    def allan_variance(self) -> float:
        """Σ steps² ÷ 2(count − 1): the bucket-to-bucket part of the load's variance (0 under 2 buckets)."""
        return self.step_squares / (2.0 * (self.count - 1)) if self.count >= 2 else 0.0


@dataclass(frozen=True, slots=True)
class VolumeWindow:
    """Traffic seen over the last ``seconds`` (all replicas together).

    ``moments`` (capacity-token load per bucket, a few bucket sizes) is filled on the
    longest window only; see ``LoadMoments``.
    """

    seconds: float
    requests: float
    prompt_tokens: float
    completion_tokens: float
    moments: tuple[LoadMoments, ...] = ()

    def per_hour(self, value: float) -> float:
        return value * 3600.0 / self.seconds if self.seconds > 0 else 0.0

    def capacity_tokens(self, spec: EndpointSpec) -> float:
        """The endpoint capacity the window's requests use (``EndpointSpec.capacity_tokens`` of its totals)."""
        return spec.capacity_tokens(self.prompt_tokens, self.completion_tokens)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """Static economics of a self-hosted endpoint.

    ``max_tokens_per_second`` is per instance, in capacity tokens: one completion
    token counts 1, one prompt token counts ``prompt_token_weight`` (prefill is
    far cheaper per token than decoding on a GPU).
    """

    hourly_price_usd: float  # per instance
    max_tokens_per_second: float  # per instance, capacity tokens
    prompt_token_weight: float = 0.0
    min_instances: int = 0
    max_instances: int = 1
    startup_s: float = 300.0  # provisioning delay, billed
    context_window: int | None = None
    queue_s: float = 30.0  # seconds of full throughput the endpoint may hold as backlog (see admission)
    startup_from_zero_s: float | None = None  # the delay when none runs (None: startup_s), billed

    @property
    def instance_bounds(self) -> tuple[int, int]:
        """The lowest and highest instance count (a max_instances below min_instances is min_instances)."""
        return self.min_instances, max(self.min_instances, self.max_instances)

    def startup_for(self, running: int) -> float:
        """Seconds until added instances serve, when ``running`` instances already do."""
        if running <= 0 and self.startup_from_zero_s is not None:
            return self.startup_from_zero_s
        return self.startup_s

    def capacity_tokens(self, prompt_tokens: float, completion_tokens: float) -> float:
        return completion_tokens + self.prompt_token_weight * prompt_tokens


@dataclass(frozen=True, slots=True)
class CapacityContext:
    """Input of the periodic capacity decision for one endpoint.

    ``windows`` are the traffic of the models this endpoint could serve, shortest
    window first; ``current_target`` and ``last_change_s`` are the previous
    decision's, and ``memo`` the previous decision's ``memo``, carried by the caller so
    that the policy stays a pure function (live and replay carry them the same way).
    """

    now_s: float
    endpoint: EndpointSpec
    api_prices: TokenPrices
    windows: tuple[VolumeWindow, ...]
    instances_in_service: int
    current_target: int
    last_change_s: float
    memo: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CapacityDecision:
    instances: int
    reason: str
    break_even_requests_per_hour: float | None = None  # None: the endpoint never pays off
    expected_requests_per_hour: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)
    memo: Mapping[str, float] = field(default_factory=dict)  # handed back in the next CapacityContext


class RoutingPolicy(Protocol):
    """A policy: one per-request decision and one periodic capacity decision."""

    name: ClassVar[str]

    def route(self, ctx: RequestContext) -> Decision: ...

    def plan_capacity(self, ctx: CapacityContext) -> CapacityDecision: ...


_REGISTRY: dict[str, Callable[..., RoutingPolicy]] = {}


def register(cls):
    """Class decorator: make a policy buildable by its ``name`` from config."""
    _REGISTRY[cls.name] = cls
    return cls


def policy_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def policy_parameters(name: str) -> tuple[str, ...]:
    """The keyword parameters a policy's constructor takes (what ``routing.params`` may set)."""
    import inspect

    params = inspect.signature(_REGISTRY[name]).parameters.values()
    return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def is_finite_number(value: Any) -> bool:
    """A parameter a policy can range-check: an int or float, not a bool, NaN, infinity or a string.

    ("1e308" from YAML, NaN or infinity passed or failed the range checks by accident, or failed them
    with a Python error instead of the parameter's name.)
    """
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def build_policy(name: str, params: Mapping[str, Any] | None = None) -> RoutingPolicy:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(policy_names())}") from None
    return factory(**dict(params or {}))
