"""The document behind the status page (``GET /status.json``): live figures and the last hour.

Spend comes from the ledger only (API tokens as billed, endpoint instance time), so the
page shows what ``/admin/routing`` and Prometheus show, never a figure computed for show.
"""
from __future__ import annotations

from decimal import Decimal

from ..spend.accounting import API_ONLY
from ..spend.cost import display_usd
from ..state.volume import WINDOWS_S


def _reason_counts(metrics) -> dict[str, float]:
    """Routing decisions by reason, this process's counters (``gateway_route_decisions_total``)."""
    out: dict[str, float] = {}
    for family in metrics.route_decisions.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                out[s.labels["reason"]] = out.get(s.labels["reason"], 0.0) + s.value
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


async def status_document(app) -> dict:
    now = app.clock()
    volume = app.store.volume()
    traffic = {}
    for seconds in WINDOWS_S:
        w = volume.window(now, seconds)
        traffic[f"{seconds}s"] = {"requests": w.requests, "requests_per_hour": round(w.per_hour(w.requests), 1)}
    totals = await app.store.spend_totals()
    spend: dict[str, Decimal] = {}
    for (backend, _model), usd in totals.items():
        spend[backend] = spend.get(backend, Decimal(0)) + usd
    api_only = spend.pop(API_ONLY, Decimal(0))
    actual = sum(spend.values(), Decimal(0))
    backends = {}
    for name, cfg in app.config.backends.items():
        w = volume.window(now, 3600, backend=name)
        backends[name] = {"type": cfg.type, "requests_1h": w.requests,
                          "spend_usd": display_usd(spend.get(name, Decimal(0)))}
    endpoints = {}
    for name, status in app.endpoints.items():
        cfg = app.config.backends[name]
        plan = app.planner.plans.get(name)
        decision = plan.decision if plan else None
        endpoints[name] = {
            **status.as_dict(),
            "instance_type": cfg.instance_type,
            "hourly_price_usd": str(cfg.hourly_price_usd),
            "min_instances": cfg.min_instances, "max_instances": cfg.max_instances,
            "dry_run": app.config.routing.dry_run,
            "recommended_instances": None if decision is None else decision.instances,
            "recommendation_reason": None if decision is None else decision.reason,
            "break_even_requests_per_hour": None if decision is None else decision.break_even_requests_per_hour,
            "expected_requests_per_hour": None if decision is None else decision.expected_requests_per_hour,
            "last_actuation": app.last_actuation.get(name),
        }
    return {
        "now": now,
        "policy": app.config.routing.policy,
        "traffic": traffic,
        "backends": backends,
        "endpoints": endpoints,
        "spend": {"actual_usd": display_usd(actual), "api_only_usd": display_usd(api_only),
                  "saved_usd": display_usd(api_only - actual)},
        "reasons": _reason_counts(app.metrics),
        "history": {"sample_s": app.status.history.sample_s, "points": app.status.history.as_list(now)},
    }
