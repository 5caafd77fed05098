"""Replay output: one summary mapping, rendered as a text table or as JSON.

Money is simulated in floats; here it is rounded to micro-dollars (JSON) or cents (text).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict

from routing_policies import TokenPrices
from routing_policies.capacity import (
    TrafficMix, break_even_requests_per_hour, endpoint_ever_pays_off,
    endpoint_usd_per_capacity_token_at_full, instance_capacity_per_hour,
)

from . import bundled
from .optimum import Optimum
from .simulator import ReplayResult, ReplaySetup
from .trace import Trace

_MONEY = ("spend_usd", "api_spend_usd", "endpoint_spend_usd")

# A price point to suggest when the endpoint never pays off: OpenAI's list price for gpt-4o,
# USD per 1M input, output tokens.
EXAMPLE_API_PRICES = ("gpt-4o", 2.50, 10.00)


def _usd(x: float) -> float:
    return round(x, 6)


def economics(trace: Trace, setup: ReplaySetup) -> dict:
    """The trace's whole-run mix priced on either side: does an instance ever pay off?

    Only requests that fit the endpoint's context window count (the others are the API's
    whatever the policy); ``context_too_long_requests`` says how many were left out.
    """
    spec = setup.endpoint
    window = spec.context_window or float("inf")
    fits = [(p, c) for p, c in zip(trace.prompt_tokens, trace.completion_tokens) if p + c <= window]
    # priced over the requests the endpoint could take: the others go to the API whatever happens
    mix = TrafficMix.from_totals(len(fits), sum(p for p, _ in fits), sum(c for _, c in fits),
                                 max(trace.span_s, 1.0), spec, setup.api_prices)
    be = break_even_requests_per_hour(spec, mix)
    per_req = mix.capacity_tokens_per_request
    peaked = load_peakedness(trace, spec, 10.0)
    pays_off = endpoint_ever_pays_off(spec, mix)
    return {
        "api_usd_per_request": round(mix.api_usd_per_request, 9),
        "capacity_tokens_per_request": round(per_req, 2),
        "api_usd_per_1m_capacity_tokens": round(mix.api_usd_per_capacity_token * 1e6, 4),
        "endpoint_usd_per_1m_capacity_tokens_at_full": round(endpoint_usd_per_capacity_token_at_full(spec) * 1e6, 4),
        "endpoint_ever_pays_off": pays_off,
        # None when it does (or no request fits): API prices, USD per 1M, at which it would
        "pays_off_at_api_prices": None if pays_off or not fits else pay_off_prices(mix, spec, setup.api_prices),
        "break_even_requests_per_hour": None if be is None else round(be, 1),
        "instance_capacity_requests_per_hour": round(instance_capacity_per_hour(spec) / per_req, 1) if per_req else None,
        "context_too_long_requests": len(trace) - len(fits),
        "load_peakedness": None if peaked is None else round(peaked, 2),
    }


def pay_off_prices(mix: TrafficMix, spec, prices: TokenPrices) -> dict | None:
    """API prices (USD per 1M input, output tokens) at which an instance would pay off on ``mix``.

    gpt-4o's (``EXAMPLE_API_PRICES``) when they are enough, a price a person knows; else the
    given prices scaled up until they are (the API's cost per capacity token grows in
    proportion to its prices), rounded up to the cent. None when the API is free.
    """
    def pays(usd_in: float, usd_out: float) -> bool:
        at = TokenPrices(usd_in / 1e6, usd_out / 1e6)  # whether it pays off depends on the mean request only
        return endpoint_ever_pays_off(spec, TrafficMix.from_totals(
            1, mix.prompt_tokens_per_request, mix.completion_tokens_per_request, 3600.0, spec, at))

    name, usd_in, usd_out = EXAMPLE_API_PRICES
    if pays(usd_in, usd_out):
        return {"name": name, "usd_per_1m_input": usd_in, "usd_per_1m_output": usd_out}
    if mix.api_usd_per_capacity_token <= 0:
        return None
    factor = 1.25 * endpoint_usd_per_capacity_token_at_full(spec) / mix.api_usd_per_capacity_token
    usd_in, usd_out = (math.ceil(x * 1e6 * factor * 100) / 100 for x in (prices.input, prices.output))
    return {"name": None, "usd_per_1m_input": usd_in, "usd_per_1m_output": usd_out} if pays(usd_in, usd_out) else None


def load_peakedness(trace: Trace, spec, bucket_s: float = 10.0) -> float | None:
    """How much burstier than Poisson the trace's endpoint load is (1.0 = Poisson).

    The variance of the capacity tokens arriving per ``bucket_s`` bucket, divided by what a
    Poisson stream with the same request sizes would give (mean × size × (1 + cv²)). The
    variance is taken around each hour's own mean, so the daily swing does not count as
    burstiness. This is the ``peakedness`` of routing_policies.capacity, measured.
    """
    window, weight = spec.context_window, spec.prompt_token_weight
    loads: dict[int, float] = {}
    n = s1 = s2 = 0.0
    for t, p, c in zip(trace.arrival_s, trace.prompt_tokens, trace.completion_tokens):
        if window is not None and p + c > window:
            continue
        x = c + weight * p
        n, s1, s2 = n + 1, s1 + x, s2 + x * x
        k = int(t // bucket_s)
        loads[k] = loads.get(k, 0.0) + x
    if n < 2 or s1 <= 0:
        return None
    size = s1 / n
    poisson_per_token = size * (1.0 + (s2 / n - size * size) / (size * size))  # size × (1 + cv²)
    per_hour, last = max(1, int(3600 // bucket_s)), int(trace.arrival_s[-1] // bucket_s) + 1
    var_sum = mean_sum = 0.0
    for h0 in range(0, last, per_hour):
        vals = [loads.get(k, 0.0) for k in range(h0, min(last, h0 + per_hour))]
        if len(vals) < 2:
            continue
        mu = sum(vals) / len(vals)
        var_sum += sum((v - mu) ** 2 for v in vals) / (len(vals) - 1) * len(vals)
        mean_sum += mu * len(vals)
    if mean_sum <= 0:
        return None
    return var_sum / (mean_sum * poisson_per_token)


def _result(r: ReplayResult, optimum: Optimum) -> dict:
    d = asdict(r)
    for key in _MONEY:
        d[key] = _usd(d[key])
    d["ratio_to_optimum"] = round(r.spend_usd / optimum.spend_usd, 4) if optimum.spend_usd > 0 else None
    d["instance_hours"] = round(r.instance_hours, 4)
    d["elapsed_s"] = round(r.elapsed_s, 2)
    return d


def summarize(trace: Trace, setup: ReplaySetup, results: list[ReplayResult], optimum: Optimum,
              sweep: bool = False, elapsed_s: float = 0.0, config: str | None = None) -> dict:
    """Everything the replay reports; ``config`` is the path of the config it loaded (for the hint)."""
    hours = Counter(int(t // 3600) for t in trace.arrival_s)
    span_h = optimum.horizon_s / 3600.0
    spec = setup.endpoint
    opt = asdict(optimum)
    opt.pop("schedule")
    for key in _MONEY:
        opt[key] = _usd(opt[key])
    opt["instance_hours"] = round(opt["instance_hours"], 4)
    opt["hours_at_instances"] = {str(k): round(v, 3) for k, v in opt.pop("hours_at").items()}
    out = {
        "trace": {
            "path": trace.name, "requests": len(trace), "hours": round(span_h, 3),
            "mean_requests_per_hour": round(len(trace) / span_h, 1),
            "peak_requests_per_hour": max(hours.values(), default=0),
            "prompt_tokens": sum(trace.prompt_tokens), "completion_tokens": sum(trace.completion_tokens),
        },
        "config": config,
        "model": setup.model,
        "api": {"backend": setup.api_name, "usd_per_1m_input": round(setup.api_prices.input * 1e6, 6),
                "usd_per_1m_output": round(setup.api_prices.output * 1e6, 6), "prices_from": setup.api_prices_from},
        "endpoint": {"backend": setup.endpoint_name, **asdict(spec), "initial_instances": setup.start_instances},
        "capacity_interval_s": setup.capacity_interval_s,
        "window_traffic": setup.window_traffic,
        "economics": economics(trace, setup),
        "results": [_result(r, optimum) for r in results],
        "optimum": opt,
        "elapsed_s": round(elapsed_s, 2),
    }
    static = [r for r in results if r.policy == "always_api" or r.policy.startswith("fixed_")]
    if static:
        best_static = min(static, key=lambda r: r.spend_usd)
        out["best_static"] = {"policy": best_static.policy, "spend_usd": _usd(best_static.spend_usd),
                              "ties": [r.policy for r in static if _usd(r.spend_usd) == _usd(best_static.spend_usd)]}
    if sweep and results:
        low = min(_usd(r.spend_usd) for r in results)
        tied = [r for r in results if _usd(r.spend_usd) == low]
        best = tied[0]
        out["best"] = {"policy": best.policy, "params": best.params, "spend_usd": low,
                       "ratio_to_optimum": _result(best, optimum)["ratio_to_optimum"],
                       "tie": len(tied) > 1, "tied_params": [r.params for r in tied]}
    out["recommendation"] = recommend(out)
    out["hint"] = pay_off_hint(out)
    return out


def recommend(summary: dict) -> str:
    """One paragraph a person can act on, from the economics and the replayed spend."""
    eco, results, opt = summary["economics"], summary["results"], summary["optimum"]
    model, ep = summary["model"], summary["endpoint"]
    lines = []
    if not eco["endpoint_ever_pays_off"]:
        lines.append(
            f"The endpoint never pays off on this traffic against {model} at these prices: a fully used "
            f"instance costs ${eco['endpoint_usd_per_1m_capacity_tokens_at_full']:.4f} per 1M capacity tokens, "
            f"the API charges ${eco['api_usd_per_1m_capacity_tokens']:.4f} for the same traffic. "
            f"Keep the endpoint at min_instances ({ep['min_instances']}) and send everything to the API "
            "(break_even does this, reason endpoint_never_pays_off)."
        )
    else:
        lines.append(
            f"One instance pays off above {eco['break_even_requests_per_hour']:,.0f} requests/hour "
            f"(it serves up to ~{eco['instance_capacity_requests_per_hour']:,.0f}); this trace averages "
            f"{summary['trace']['mean_requests_per_hour']:,.0f}"
            + (f", peaking at {summary['trace']['peak_requests_per_hour']:,} in an hour." if summary["trace"]["hours"] >= 2 else ".")
        )
    if results:
        best = min(results, key=lambda r: r["spend_usd"])
        ratio = best["ratio_to_optimum"]
        vs = f", {100 * (ratio - 1):.1f}% above the hindsight optimum (${opt['spend_usd']:,.2f})" if ratio else ""
        params = f" with {best['params']}" if best["params"] else ""
        lines.append(f"Cheapest replayed policy: {best['policy']}{params} at ${best['spend_usd']:,.2f}{vs}.")
        by_name = {r["policy"]: r for r in results}
        if "break_even" in by_name and best["policy"] != "break_even":
            be = by_name["break_even"]
            vs_opt = f" ({be['ratio_to_optimum']}x the optimum)" if be["ratio_to_optimum"] else ""
            lines.append(f"break_even spent ${be['spend_usd']:,.2f}{vs_opt}.")
    return " ".join(lines)


def pay_off_hint(summary: dict) -> str | None:
    """When the endpoint never pays off: the command that replays the same traffic at prices where it does."""
    at = summary["economics"]["pays_off_at_api_prices"]
    if at is None:
        return None
    flag = f"--api-prices {at['usd_per_1m_input']:.2f},{at['usd_per_1m_output']:.2f}"
    name = bundled.trace_name(summary["trace"]["path"])
    trace = "" if name == bundled.DEFAULT_TRACE else f" --trace {name or summary['trace']['path']}"
    config = summary.get("config")
    config = "" if config in (None, "config.yaml", bundled.BUNDLED_CONFIG) else f" --config {config}"
    whose = f"{at['name']}'s" if at["name"] else "higher"
    return (f"to see a case where the endpoint pays off, replay at {whose} API prices (USD per 1M input,output "
            f"tokens): gateway replay{trace}{config} {flag}")


def render_json(summary: dict) -> str:
    return json.dumps(summary, indent=2, sort_keys=False)


COLUMNS = (
    "columns: spend $ = API $ + endpoint $ (USD over the trace); x optimum = spend ÷ the hindsight optimum "
    "(the least any instance schedule could spend under the same model: a lower bound);",
    "  API req / endpoint req = where the requests went; refused = requests the policy sent to the API because "
    "the endpoint's backlog was full (endpoint_at_capacity);",
    "  instance-h = instance-hours billed (starting ones included); starts = instances started; "
    "fixed_k = k instances always on, overflow to the API; always_api = no endpoint at all.",
)


def render_text(summary: dict) -> str:
    t, eco, opt = summary["trace"], summary["economics"], summary["optimum"]
    api, ep = summary["api"], summary["endpoint"]
    be = eco["break_even_requests_per_hour"]
    out = [
        f"trace {t['path']}: {t['requests']:,} requests over {t['hours']:.1f} h "
        f"(mean {t['mean_requests_per_hour']:,.0f} req/h, busiest hour {t['peak_requests_per_hour']:,})",
        f"model {summary['model']}: API {api['backend']} ${api['usd_per_1m_input']}/${api['usd_per_1m_output']} per 1M "
        f"in/out{' (--api-prices)' if api.get('prices_from') == '--api-prices' else ''}; endpoint {ep['backend']} ${ep['hourly_price_usd']}/h per instance, "
        f"{ep['max_tokens_per_second']:g} capacity tok/s, {ep['min_instances']}-{ep['max_instances']} instances, "
        f"start-up {ep['startup_s']:g} s"
        + (f" ({ep['startup_from_zero_s']:g} s from none)" if ep.get("startup_from_zero_s") is not None else "")
        + f"; {ep['initial_instances']} in service at the start",
        f"break-even: {'never (the endpoint never pays off)' if be is None else f'{be:,.0f} req/h'}; "
        f"API ${eco['api_usd_per_1m_capacity_tokens']}/1M capacity tokens vs endpoint "
        f"${eco['endpoint_usd_per_1m_capacity_tokens_at_full']}/1M at full use",
        "",
    ]
    head = ("policy", "spend $", "API $", "endpoint $", "x optimum", "API req", "endpoint req",
            "refused", "instance-h", "starts")
    rows = [head]
    for r in summary["results"]:
        label = r["policy"] + (" " + ",".join(f"{k}={v}" for k, v in r["params"].items()) if r["params"] else "")
        rows.append((label, f"{r['spend_usd']:,.2f}", f"{r['api_spend_usd']:,.2f}", f"{r['endpoint_spend_usd']:,.2f}",
                     f"{r['ratio_to_optimum']:.3f}" if r["ratio_to_optimum"] else "-", f"{r['api_requests']:,}",
                     f"{r['endpoint_requests']:,}", f"{r['endpoint_refused']:,}", f"{r['instance_hours']:,.1f}",
                     f"{r['instances_started']:,}"))
    label = f"hindsight optimum ({opt['interval_s']:g} s)" if opt["source"] == "dp" else \
        f"optimum: {opt['source']} (DP {opt['dp_spend_usd']:,.2f})"
    rows.append((label, f"{opt['spend_usd']:,.2f}", f"{opt['api_spend_usd']:,.2f}",
                 f"{opt['endpoint_spend_usd']:,.2f}", "1.000", "", "", "", f"{opt['instance_hours']:,.1f}",
                 f"{opt['instances_started']:,}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for n, row in enumerate(rows):
        out.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(row)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    if "best" in summary:
        b = summary["best"]
        if b["tie"]:
            out += ["", f"tie: {len(b['tied_params'])} settings spend the same ${b['spend_usd']:,.2f} "
                        f"({b['ratio_to_optimum']}x optimum): " + "; ".join(str(p) for p in b["tied_params"])]
        else:
            out += ["", f"best: {b['policy']} {b['params']} at ${b['spend_usd']:,.2f} ({b['ratio_to_optimum']}x optimum)"]
    if "best_static" in summary:
        bs = summary["best_static"]
        out += ["", f"best static policy: {' = '.join(bs['ties'])} at ${bs['spend_usd']:,.2f}"]
    out += ["", *COLUMNS]
    out += ["", "recommendation: " + summary["recommendation"]]
    if summary.get("hint"):
        out.append("hint: " + summary["hint"])
    out.append(f"(replayed in {summary['elapsed_s']:.1f} s)")
    return "\n".join(out)


class TextProgress:
    """A one-line progress bar for stderr: ``update(done, total)``, then ``close()``."""

    def __init__(self, label: str, stream, width: int = 30):
        self.label, self.stream, self.width = label, stream, width

    def update(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        fill = int(frac * self.width)
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {frac:4.0%} {done:,}/{total:,}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
