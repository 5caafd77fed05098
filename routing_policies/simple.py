"""Policies that ignore the economics: baselines for replay and safe defaults."""
from __future__ import annotations

from typing import ClassVar

from .base import API, CapacityContext, CapacityDecision, Decision, RequestContext, is_finite_number, register
from .rules import endpoint_first, fits_context, first_usable, in_service


@register
class FirstHealthy:
    """The first backend in the model's list that is healthy and can take the request."""

    name: ClassVar[str] = "first_healthy"

    def route(self, ctx: RequestContext) -> Decision:
        for view in ctx.candidates:
            if not view.healthy:
                continue
            if not fits_context(view, ctx.prompt_tokens, ctx.max_tokens):
                continue
            if not in_service(view):
                continue
            return Decision(view.name, "first_healthy")
        return Decision(ctx.candidates[0].name, "no_healthy_backend")

    def plan_capacity(self, ctx: CapacityContext) -> CapacityDecision:
        return CapacityDecision(ctx.instances_in_service, "first_healthy_keeps_capacity")


@register
class AlwaysApi:
    """Everything to the pay-per-token API; the endpoint is recommended down to its minimum."""

    name: ClassVar[str] = "always_api"

    def route(self, ctx: RequestContext) -> Decision:
        api = first_usable(ctx, API)
        if api is None:
            return Decision(ctx.candidates[0].name, "no_healthy_api")
        return Decision(api.name, "always_api")

    def plan_capacity(self, ctx: CapacityContext) -> CapacityDecision:
        return CapacityDecision(ctx.endpoint.min_instances, "always_api")


@register
class AlwaysSelfhosted:
    """Everything to the endpoint, kept at full size; overflow and misfits go to the API."""

    name: ClassVar[str] = "always_selfhosted"

    def route(self, ctx: RequestContext) -> Decision:
        return endpoint_first(ctx)

    def plan_capacity(self, ctx: CapacityContext) -> CapacityDecision:
        return CapacityDecision(max(1, ctx.endpoint.max_instances), "always_selfhosted")


@register
class FixedInstances:
    """``instances`` always on (clamped to the endpoint's bounds), overflow and misfits to the API.

    The static schedule an operator would try first; replay reports it for every count as
    ``fixed_<k>``, and the best of those and ``always_api`` is the best static policy.
    """

    name: ClassVar[str] = "fixed"

    def __init__(self, instances: int = 1):
        # (an infinite count made int() raise OverflowError, a traceback instead of this message)
        if not is_finite_number(instances) or int(instances) != instances or instances < 0:
            raise ValueError(f"fixed: parameter instances out of range: {instances!r}")
        self.instances = int(instances)

    def route(self, ctx: RequestContext) -> Decision:
        return endpoint_first(ctx)

    def plan_capacity(self, ctx: CapacityContext) -> CapacityDecision:
        spec = ctx.endpoint
        return CapacityDecision(min(max(self.instances, spec.min_instances), spec.max_instances), "fixed")
