"""Builds the policy's inputs from live state and asks the policy.

Candidate views are rebuilt on every state tick (about once a second), not per
request: a request only looks up its model's tuple and calls ``policy.route``.
"""
from __future__ import annotations

from routing_policies import API, ENDPOINT, BackendView, Decision, RequestContext
from routing_policies.admission import FluidBacklog

from ..endpoint.state import EndpointStatus
from .inputs import endpoint_spec, token_prices
from ..state.volume import BUCKET_S

# How far back the backlog is rebuilt from the volume buckets: it drains within max_queue_s
# of full throughput, so a few times that is enough (and bounded work per refresh).
BACKLOG_HISTORY_S = 300


class LiveRouting:
    def __init__(self, config, policy, store, endpoints: dict[str, EndpointStatus], health):
        self.config = config
        self.policy = policy
        self.store = store
        self.endpoints = endpoints
        self.health = health
        self._views: dict[tuple[str, str | None], tuple[BackendView, ...]] = {}
        self.endpoint_backlog_tokens: dict[str, float] = {}
        self.refresh(0.0)

    def set_policy(self, policy) -> None:
        self.policy = policy

    def refresh(self, now: float) -> None:
        """Recompute endpoint load and every model's candidate views."""
        volume = self.store.volume()
        for name, status in self.endpoints.items():
            spec = endpoint_spec(self.config.backends[name])
            drain = (status.instances_in_service if status.serving else 0) * spec.max_tokens_per_second
            self.endpoint_backlog_tokens[name] = backlog_from_buckets(
                volume.loads(now, BACKLOG_HISTORY_S, spec.prompt_token_weight, backend=name), now, drain)
        views = {}
        for model in self.config.models.values():
            all_views = tuple(self._view(route) for route in model.routes)
            views[(model.name, None)] = all_views
            for v in all_views:
                views[(model.name, v.name)] = (v,)
        self._views = views

    def _view(self, route) -> BackendView:
        cfg = self.config.backends[route.backend]
        if cfg.type == "openai":
            return BackendView(
                name=cfg.name, kind=API, healthy=self.health.usable(cfg.name),
                prices=token_prices(cfg.prices[route.upstream_model]),
            )
        status = self.endpoints[cfg.name]
        return BackendView(
            name=cfg.name, kind=ENDPOINT, healthy=status.healthy and self.health.usable(cfg.name),
            context_window=cfg.context_window,
            instances_in_service=status.instances_in_service if status.serving else 0,
            capacity_tps=cfg.max_tokens_per_second,
            backlog_tokens=self.endpoint_backlog_tokens.get(cfg.name, 0.0),
            queue_s=cfg.max_queue_s,
        )

    def candidates(self, model: str, pinned: str | None) -> tuple[BackendView, ...]:
        return self._views[(model, pinned)]

    def decide(self, model: str, pinned: str | None, prompt_tokens: int, max_tokens: int | None, now: float,
               prompt_tokens_is_bound: bool = False) -> Decision:
        views = self._views[(model, pinned)]
        if pinned is not None:
            return Decision(pinned, "pinned")
        return self.policy.route(RequestContext(model, prompt_tokens, max_tokens, views, now,
                                                prompt_tokens_is_bound=prompt_tokens_is_bound))


def backlog_from_buckets(loads: dict[int, float], now: float, drain_tps: float) -> float:
    """The endpoint's fluid backlog (``routing_policies.admission``) rebuilt from its per-bucket load.

    Each bucket's capacity tokens enter at the bucket's start and drain at ``drain_tps``; the
    replay applies the same rule request by request. Shared buckets make every replica see
    the same backlog, its own requests included.
    """
    backlog = FluidBacklog()
    for b in sorted(loads):
        backlog.advance(b * BUCKET_S, drain_tps)
        backlog.add(loads[b])
    return backlog.advance(now, drain_tps)
