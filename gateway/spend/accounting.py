"""Everything recorded once a request is over: cost, metrics, live volume, ledger, access log.

One place so that a streamed, a plain, a failed and an abandoned request are all
counted the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from .cost import Usage, api_cost, display_usd, endpoint_share
from ..routing.inputs import endpoint_spec, reference_price_spec
from ..state.volume import fitting_key

_HOUR = Decimal(3600)
API_ONLY = "(api-only)"  # ledger line: what the same traffic would have cost on the API alone
CHARGEBACK_WINDOW_S = 60  # a request pays its share of the endpoint cost of the last minute


def endpoint_charge_cap(hourly_price_usd: Decimal, instances: int) -> Decimal:
    """The most one request can be charged on an endpoint running ``instances`` (USD).

    ``Accounting.cost_of`` charges ``share × per-second cost × window``, with the share at most
    1 (``endpoint_share``) and the window at most ``CHARGEBACK_WINDOW_S``: one request pays at
    most the whole window's instance time. Budgets reserve this for endpoint routes.
    """
    return hourly_price_usd * instances * CHARGEBACK_WINDOW_S / _HOUR


@dataclass(slots=True)
class RequestRecord:
    """Filled in as the request goes; ``finish`` reads it."""

    request_id: str
    model: str  # the client-facing model name
    kind: str  # chat | embeddings
    started: float  # perf_counter
    stream: bool = False
    backend: str = ""
    upstream_model: str = ""
    reason: str = ""
    prompt_tokens_counted: int | None = None  # tiktoken's count; None while not needed (see proxy)
    count_prompt: Callable[[], int] | None = None  # counts it when it is needed after all
    status: int = 0
    usage: Usage | None = None
    upstream_s: float = 0.0  # time spent waiting on the upstream
    ttft_s: float | None = None
    client_gone: bool = False
    error: str | None = None
    cost: Decimal | None = field(default=None)
    settled: bool = False
    finished: bool = False  # counted in metrics and the access log (a crash handler checks it)
    body_bytes: int = 0  # of the client's request: decides whether counting it runs off the loop
    large_body: bool = False  # holds a place in the proxy's LargeBodyGate
    parsed: object = None  # a large body's JSON object, freed piece by piece off the loop at the end
    grant: object = None  # gateway.keys.Grant of a virtual key (settled by the proxy)
    tag: str | None = None  # x-gateway-tags value from the configured set

    def prompt_tokens(self) -> int:
        """The counted prompt tokens, counting now if that was deferred."""
        if self.prompt_tokens_counted is None:
            self.prompt_tokens_counted = self.count_prompt() if self.count_prompt is not None else 0
        return self.prompt_tokens_counted


class Accounting:
    def __init__(self, config, metrics, store, access_log, endpoints, clock=time.time):
        self.config = config
        self.metrics = metrics
        self.store = store
        self.access_log = access_log
        self.endpoints = endpoints
        self.clock = clock
        self._api_only_children: dict[str, object] = {}
        self.reindex_prices()

    def reindex_prices(self) -> None:
        """The API a model would use if there were no endpoint (for the savings counterfactual),
        the context windows of the endpoints that serve it, and the endpoints' economics."""
        self._reference_prices = {}
        self._endpoint_specs = {name: endpoint_spec(b) for name, b in self.config.backends.items()
                                if b.type == "sagemaker"}
        self._endpoint_windows = {
            model.name: [(r.backend, self.config.backends[r.backend].context_window) for r in model.routes
                         if self.config.backends[r.backend].type == "sagemaker"]
            for model in self.config.models.values()
        }
        for model in self.config.models.values():
            spec = reference_price_spec(self.config, model)
            if spec is not None:
                self._reference_prices[model.name] = spec

    def cost_of(self, rec: RequestRecord, now: float) -> Decimal:
        cfg = self.config.backends[rec.backend]
        usage = rec.usage
        if cfg.type == "openai":
            return api_cost(cfg.prices[rec.upstream_model], usage)
        status = self.endpoints[rec.backend]
        per_second = cfg.hourly_price_usd * status.instances_in_service / _HOUR
        w = self.store.volume().window(now, CHARGEBACK_WINDOW_S, backend=rec.backend, watched_only=False)
        spec = self._endpoint_specs[rec.backend]
        mine = spec.capacity_tokens(usage.prompt_tokens, usage.completion_tokens)
        window = w.capacity_tokens(spec)
        # the window's span can pass CHARGEBACK_WINDOW_S by float rounding (first_bucket's 1e-9):
        # capped, so that endpoint_charge_cap is a bound to the nano-dollar
        return endpoint_share(per_second, min(w.seconds, CHARGEBACK_WINDOW_S), mine, window)

    def settle(self, rec: RequestRecord) -> None:
        """Count the request's traffic and price it (before headers that carry the cost go out)."""
        if rec.settled:
            return
        rec.settled = True
        if rec.usage is None or not rec.backend:
            return
        now = self.clock()
        usage = rec.usage
        self.store.record(rec.backend, rec.model, usage.prompt_tokens, usage.completion_tokens, now)
        # The capacity planner sizes an endpoint for the traffic it could take: what fits it.
        for endpoint, window in self._endpoint_windows.get(rec.model, ()):
            if usage.prompt_tokens + usage.completion_tokens <= window:
                self.store.record(rec.backend, fitting_key(rec.model, endpoint), usage.prompt_tokens,
                                  usage.completion_tokens, now)
        rec.cost = self.cost_of(rec, now)

    def finish(self, rec: RequestRecord) -> None:
        if rec.finished:
            return
        self.settle(rec)
        now = self.clock()
        total_s = time.perf_counter() - rec.started
        backend = rec.backend or "none"
        m = self.metrics.route(backend, rec.model)
        m.status(rec.status).inc()
        m.duration.observe(total_s)
        m.overhead.observe(max(0.0, total_s - rec.upstream_s))
        if rec.ttft_s is not None:
            m.ttft.observe(rec.ttft_s)
        usage = rec.usage
        if usage is not None and rec.cost is not None:
            m.prompt.inc(usage.prompt_tokens - usage.cached_tokens)
            if usage.cached_tokens:
                m.cached.inc(usage.cached_tokens)
            m.completion.inc(usage.completion_tokens)
            cost = rec.cost
            m.attributed.inc(float(cost))
            if self.config.backends[rec.backend].type == "openai":
                m.spend.inc(float(cost))
                self.store.add_spend(rec.backend, rec.model, cost)
            ref = self._reference_prices.get(rec.model)
            if ref is not None:
                counterfactual = api_cost(ref, usage)
                self._api_only(rec.model).inc(float(counterfactual))
                self.store.add_spend(API_ONLY, rec.model, counterfactual)
        if rec.reason:
            m.reason(rec.reason).inc()
        entry = {
            "ts": round(now, 3),
            "request_id": rec.request_id,
            "kind": rec.kind,
            "model": rec.model,
            "backend": rec.backend,
            "upstream_model": rec.upstream_model,
            "route_reason": rec.reason,
            "status": rec.status,
            "stream": rec.stream,
            "prompt_tokens": usage.prompt_tokens if usage else rec.prompt_tokens_counted,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "cached_tokens": usage.cached_tokens if usage else 0,
            "usage_source": ("upstream" if usage.from_upstream else "counted") if usage else None,
            "cost_usd": display_usd(rec.cost) if rec.cost is not None else None,
            "duration_ms": round(total_s * 1000, 3),
            "upstream_ms": round(rec.upstream_s * 1000, 3),
            "ttft_ms": round(rec.ttft_s * 1000, 3) if rec.ttft_s is not None else None,
        }
        if rec.grant is not None:
            entry["key_alias"], entry["team"] = rec.grant.record.alias, rec.grant.record.team
        if rec.tag is not None:
            entry["tag"] = rec.tag
        if rec.client_gone:
            entry["client_disconnected"] = True
        if rec.error:
            entry["error"] = rec.error
        self.access_log.write(entry)
        rec.finished = True

    def _api_only(self, model: str):
        c = self._api_only_children.get(model)
        if c is None:
            c = self._api_only_children[model] = self.metrics.api_only_cost.labels(model)
        return c
