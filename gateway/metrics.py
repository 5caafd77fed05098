"""The gateway's Prometheus metrics, built on a registry the app passes in.

Label children are cached per (backend, model): ``labels()`` hashes and locks on
every call, and the hot path records ~8 samples per request.
"""
from __future__ import annotations

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
        self._per_route: dict[tuple[str, str], "RouteMetrics"] = {}

    def route(self, backend: str, model: str) -> "RouteMetrics":
        m = self._per_route.get((backend, model))
        if m is None:
            m = self._per_route[(backend, model)] = RouteMetrics(self, backend, model)
        return m


class RouteMetrics:
    """Pre-resolved children for one (backend, model)."""

    __slots__ = ("_m", "backend", "model", "prompt", "cached", "completion", "spend", "attributed", "duration",
                 "ttft", "overhead", "_status", "_reason")

    def __init__(self, m: GatewayMetrics, backend: str, model: str):
        self._m, self.backend, self.model = m, backend, model
        self.prompt = m.tokens.labels(backend, model, "prompt")
        self.cached = m.tokens.labels(backend, model, "cached_prompt")
        self.completion = m.tokens.labels(backend, model, "completion")
        self.spend = m.spend.labels(backend, model)
        self.attributed = m.attributed.labels(backend, model)
        self.duration = m.duration.labels(backend, model)
        self.ttft = m.ttft.labels(backend, model)
        self.overhead = m.overhead.labels(backend)
        self._status: dict[int, object] = {}
        self._reason: dict[str, object] = {}

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
