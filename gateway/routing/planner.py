"""The periodic capacity decision for each endpoint, from shared live volume.

Every ``routing.capacity_interval_s`` it builds the same ``CapacityContext`` the
replay builds, asks the policy, exports the recommendation, and hands it to the
actuator (which does nothing in ``dry_run``). The previous target and the time it
changed are kept here, so the policy stays stateless.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dataclasses import replace

from routing_policies import CapacityContext, CapacityDecision, VolumeWindow

from .inputs import endpoint_spec, models_served_by, reference_api_prices
from ..state.volume import WINDOWS_S, fitting_key, load_moments

log = logging.getLogger("gateway.capacity")


@dataclass
class PlanState:
    target: int
    # None until the first decision, which takes its own time: a process that just started
    # has no traffic history (in-process state), so min_dwell_s runs from the start and an
    # endpoint is not scaled down on a restart's empty windows.
    last_change_s: float | None
    decision: CapacityDecision | None = None
    decided_at: float | None = None
    memo: dict = field(default_factory=dict)  # the policy's own carried state (CapacityDecision.memo)


def sum_windows(volume, now: float, models, endpoint: str, weight: float = 0.0) -> tuple[VolumeWindow, ...]:
    """Traffic of these models that fits ``endpoint``'s context window, whichever backend served it.

    Requests too long for the endpoint go to the API whatever its size: counting them
    would size (and pay for) instances that could never serve them. The replay counts the same.
    Each window covers only the part that was watched (``VolumeBuckets.since``), as the replay's
    do from the trace's start.
    The longest window carries the load's ``LoadMoments`` (``weight``: the endpoint's prompt weight).
    """
    out = []
    keys = tuple(fitting_key(model.name, endpoint) for model in models)
    for seconds in WINDOWS_S:
        r = p = c = 0.0
        span = float(seconds)
        for key in keys:
            w = volume.window(now, seconds, model=key)
            r, p, c, span = r + w.requests, p + w.prompt_tokens, c + w.completion_tokens, w.seconds
        out.append(VolumeWindow(span, r, p, c))
    longest = volume.span(now, WINDOWS_S[-1])  # the watched part of the hour
    moments = load_moments(volume.loads(now, longest, weight, models=keys), now, longest)
    out[-1] = replace(out[-1], moments=moments)
    return tuple(out)


class CapacityPlanner:
    def __init__(self, config, policy, store, endpoints, metrics):
        self.config = config
        self.policy = policy
        self.store = store
        self.endpoints = endpoints
        self.metrics = metrics
        self.plans = {name: PlanState(status.instances_in_service, None) for name, status in endpoints.items()}
        self._next_at = 0.0
        self._exported_reason: dict[str, str] = {}

    def due(self, now: float) -> bool:
        return now >= self._next_at

    def plan(self, now: float) -> dict[str, CapacityDecision]:
        self._next_at = now + self.config.routing.capacity_interval_s
        volume = self.store.volume()
        decisions = {}
        for name, status in self.endpoints.items():
            models = models_served_by(self.config, name)
            prices = next((p for p in (reference_api_prices(self.config, m) for m in models) if p), None)
            if prices is None:
                continue  # nothing to compare against: the endpoint is the only way to serve these models
            plan = self.plans[name]
            if plan.last_change_s is None:
                plan.last_change_s = now
            spec = endpoint_spec(self.config.backends[name])
            ctx = CapacityContext(
                now_s=now, endpoint=spec, api_prices=prices,
                windows=sum_windows(volume, now, models, name, spec.prompt_token_weight),
                instances_in_service=status.instances_in_service,
                current_target=plan.target, last_change_s=plan.last_change_s, memo=plan.memo,
            )
            decision = self.policy.plan_capacity(ctx)
            plan.memo = dict(decision.memo)
            if decision.instances != plan.target:
                log.info("capacity %s: %d -> %d instances (%s)", name, plan.target, decision.instances,
                         decision.reason)
                plan.target, plan.last_change_s = decision.instances, now
            plan.decision, plan.decided_at = decision, now
            decisions[name] = decision
            self._export(name, decision, ctx, models, volume, now)
        return decisions

    def _export(self, name: str, decision: CapacityDecision, ctx: CapacityContext, models, volume, now) -> None:
        m = self.metrics
        previous = self._exported_reason.get(name)
        if previous is not None and previous != decision.reason:
            m.recommended_instances.remove(name, previous)  # one series per endpoint: the current reason
        self._exported_reason[name] = decision.reason
        m.recommended_instances.labels(name, decision.reason).set(decision.instances)
        m.endpoint_instances.labels(name).set(ctx.instances_in_service)
        be = decision.break_even_requests_per_hour
        m.break_even_rph.labels(name).set(float("nan") if be is None else be)
        for model in models:
            for seconds, label in zip(WINDOWS_S, ("1m", "5m", "1h")):
                w = volume.window(now, seconds, model=model.name)
                m.volume_rph.labels(model.name, label).set(w.per_hour(w.requests))
