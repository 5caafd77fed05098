"""Builds the policy's inputs from live state and asks the policy.

Candidate views are rebuilt on every state tick (about once a second), not per
request: a request only looks up its model's tuple and calls ``policy.route``.
"""
from __future__ import annotations

from routing_policies import API, ENDPOINT, BackendView, Decision, RequestContext

from .endpoint_state import EndpointStatus
from .policy_inputs import endpoint_spec, token_prices

LOAD_WINDOW_S = 20  # seconds behind an endpoint's current load: the open volume bucket and the one before


class LiveRouting:
    def __init__(self, config, policy, store, endpoints: dict[str, EndpointStatus], health):
        self.config = config
        self.policy = policy
        self.store = store
        self.endpoints = endpoints
        self.health = health
        self._views: dict[tuple[str, str | None], tuple[BackendView, ...]] = {}
        self.endpoint_load_tps: dict[str, float] = {}
        self.refresh(0.0)

    def set_policy(self, policy) -> None:
        self.policy = policy

    def refresh(self, now: float) -> None:
        """Recompute endpoint load and every model's candidate views."""
        volume = self.store.volume()
        for name in self.endpoints:
            w = volume.window(now, LOAD_WINDOW_S, backend=name)
            tokens = endpoint_spec(self.config.backends[name]).capacity_tokens(w.prompt_tokens, w.completion_tokens)
            self.endpoint_load_tps[name] = tokens / w.seconds
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
            load_tps=self.endpoint_load_tps.get(cfg.name, 0.0),
        )

    def candidates(self, model: str, pinned: str | None) -> tuple[BackendView, ...]:
        return self._views[(model, pinned)]

    def decide(self, model: str, pinned: str | None, prompt_tokens: int, max_tokens: int | None, now: float) -> Decision:
        views = self._views[(model, pinned)]
        if pinned is not None:
            return Decision(pinned, "pinned")
        return self.policy.route(RequestContext(model, prompt_tokens, max_tokens, views, now))
