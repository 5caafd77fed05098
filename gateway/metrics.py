"""The gateway's Prometheus metrics, built on a registry the app passes in.

Label children are cached per (backend, model): ``labels()`` hashes and locks on
every call, and the hot path records ~8 samples per request.
"""
from __future__ import annotations

from functools import cached_property

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter(
            "gateway_requests", "Proxied requests by outcome.", ("backend", "model", "status"), registry=registry
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens by kind (prompt, cached_prompt, completion).", ("backend", "model", "kind"),
            registry=registry,
        )
        self.spend = Counter(
            "gateway_spend_usd",
            "Money spent, USD: API tokens as billed; an endpoint's instance time (model label empty).",
            ("backend", "model"), registry=registry,
        )
        self.attributed = Counter(
            "gateway_attributed_cost_usd",
            "Per-request cost for chargeback, USD: API cost, or a request's share of endpoint time.",
            ("backend", "model"), registry=registry,
        )
        self.api_only_cost = Counter(
            "gateway_api_only_cost_usd",
            "What the same traffic would have cost on the model's API alone, USD (for savings).",
            ("model",), registry=registry,
        )
        self.route_decisions = Counter(
            "gateway_route_decisions", "Routing decisions by reason.", ("backend", "model", "reason"), registry=registry
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Whole request time as the client sees it.", ("backend", "model"),
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "Time to the first streamed content byte.", ("backend", "model"),
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds", "Time spent in the gateway itself (not waiting on the upstream).", ("backend",),
            buckets=_OVERHEAD_BUCKETS, registry=registry,
        )
        self.endpoint_instances = Gauge(
            "gateway_endpoint_instances", "Endpoint instances in service.", ("backend",), registry=registry,
            multiprocess_mode="max",
        )
        self.recommended_instances = Gauge(
            "gateway_endpoint_recommended_instances", "Instances the capacity decision recommends.",
            ("backend", "reason"), registry=registry, multiprocess_mode="max",
        )
        self.break_even_rph = Gauge(
            "gateway_break_even_requests_per_hour", "Volume above which the endpoint is cheaper (NaN: never).",
            ("backend",), registry=registry, multiprocess_mode="max",
        )
        self.volume_rph = Gauge(
            "gateway_volume_requests_per_hour", "Recent request volume, all replicas, by window.",
            ("model", "window"), registry=registry, multiprocess_mode="max",
        )
        self.key_spend = Counter(
            "gateway_key_spend_usd", "Cost of requests made with each virtual key, USD.", ("key_alias", "team"),
            registry=registry,
        )
        self.tag_spend = Counter(
            "gateway_tag_spend_usd", "Cost of virtual-key requests by x-gateway-tags value (configured set), USD.",
            ("tag",), registry=registry,
        )
        self.budget_remaining = Gauge(
            "gateway_budget_remaining_usd", "Budget left in the current period, all replicas, USD.",
            ("scope", "name"), registry=registry, multiprocess_mode="min",
        )
        self._per_route: dict[tuple[str, str], "RouteMetrics"] = {}

    def route(self, backend: str, model: str) -> "RouteMetrics":
        m = self._per_route.get((backend, model))
        if m is None:
            m = self._per_route[(backend, model)] = RouteMetrics(self, backend, model)
        return m


class RouteMetrics:
    """Children for one (backend, model), each resolved on first use and kept.

    Lazily, so that a series exists only once something was counted in it: rejected
    requests (backend "none") get no token or spend series, an endpoint no per-model spend.
    """

    def __init__(self, m: GatewayMetrics, backend: str, model: str):
        self._m, self.backend, self.model = m, backend, model
        self._status: dict[int, object] = {}
        self._reason: dict[str, object] = {}

    @cached_property
    def prompt(self):
        return self._m.tokens.labels(self.backend, self.model, "prompt")

    @cached_property
    def cached(self):
        return self._m.tokens.labels(self.backend, self.model, "cached_prompt")

    @cached_property
    def completion(self):
        return self._m.tokens.labels(self.backend, self.model, "completion")

    @cached_property
    def spend(self):
        return self._m.spend.labels(self.backend, self.model)

    @cached_property
    def attributed(self):
        return self._m.attributed.labels(self.backend, self.model)

    @cached_property
    def duration(self):
        return self._m.duration.labels(self.backend, self.model)

    @cached_property
    def ttft(self):
        return self._m.ttft.labels(self.backend, self.model)

    @cached_property
    def overhead(self):
        return self._m.overhead.labels(self.backend)

    def status(self, code: int):
        c = self._status.get(code)
        if c is None:
            c = self._status[code] = self._m.requests.labels(self.backend, self.model, str(code))
        return c

    def reason(self, reason: str):
        c = self._reason.get(reason)
        if c is None:
            c = self._reason[reason] = self._m.route_decisions.labels(self.backend, self.model, reason)
        return c
