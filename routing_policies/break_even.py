"""The break-even policy: run endpoint instances only while they cost less than the API.

Per request: context fit first (prompt + requested max_tokens beyond the endpoint's
context window → API), then the endpoint while it is in service and below capacity
(an instance in service is already paid for), the API otherwise.

Periodically (the caller's ``routing.capacity_interval_s``): the instance count that
minimises expected spend (see ``capacity``), with two brakes against flapping:

* up: only when the expected saving over ``payback_s`` seconds exceeds what the new
  instances cost while they start (``startup_s`` of billing that serves nothing);
* down: only after ``min_dwell_s`` since the last change, and only if even the
  recent volume inflated by ``1 / (1 − hysteresis)`` still favours fewer instances,
  i.e. the volume stayed below the break-even threshold × (1 − hysteresis) over every
  window from ``forecast_window_s`` to ``max(forecast_window_s, min_dwell_s)``, counting
  each window's requests at the upper end of their noise (``noise_z``, ``peakedness``).

When even a fully used instance costs more than the API would charge for its traffic,
the answer is ``min_instances`` with reason ``endpoint_never_pays_off`` and
``break_even_requests_per_hour=None``: the gateway says so rather than hide it.

Usage (config.yaml)::

    routing:
      policy: break_even
      params: {hysteresis: 0.15, min_dwell_s: 900, forecast_window_s: 300}
"""
from __future__ import annotations

from typing import ClassVar

from .base import (
    CapacityContext, CapacityDecision, Decision, RequestContext, VolumeWindow, register,
)
from .capacity import (
    TrafficMix,
    break_even_requests_per_hour,
    cheapest_instances,
    endpoint_ever_pays_off,
    endpoint_usd_per_capacity_token_at_full,
)
from .rules import endpoint_first


@register
class BreakEven:
    """Cost-aware routing and capacity: see the module docstring.

    Parameters (all optional; the defaults are the ones replayed in docs/replay-results.md):

    forecast_window_s: 300 — the volume window (seconds) whose rate forecasts the next
        minutes; the caller's window nearest to it is used. Shorter reacts to spikes
        that end before an instance is up; longer lags the daily ramp.
    hysteresis: 0.15 — scale down only when the volume is below the break-even threshold
        by this fraction (0 ≤ h < 1).
    min_dwell_s: 900 — seconds after a change before scaling down again.
    payback_s: 1800 — seconds over which a scale-up must recover its start-up billing.
    burst_window_s: 10 — seconds over which the router measures endpoint load (bursts
        shorter than this are smoothed by the endpoint, longer ones overflow).
    size_cv: 1.0 — coefficient of variation of request size (capacity tokens; the Azure
        2023 traces have 0.7–1.0); larger means burstier load, so more instances for the
        same mean volume.
    peakedness: 1.5 — load variance over the Poisson variance (clumped arrivals, sliding
        load window); see ``capacity``. 1 is pure Poisson.
    noise_z: 2.0 — before scaling down, the measured request count N is raised to
        N + noise_z × √(N × peakedness): a quiet five minutes is not yet a trend.
    min_mix_requests: 20 — the prompt/completion mix comes from the longest window with
        at least this many requests (the longest window otherwise).
    """

    name: ClassVar[str] = "break_even"

    def __init__(self, forecast_window_s: float = 300.0, hysteresis: float = 0.15,
                 min_dwell_s: float = 900.0, payback_s: float = 1800.0, burst_window_s: float = 10.0,
                 size_cv: float = 1.0, peakedness: float = 1.5, noise_z: float = 2.0,
                 min_mix_requests: int = 20):
        checks = {
            "forecast_window_s": forecast_window_s > 0, "hysteresis": 0 <= hysteresis < 1,
            "min_dwell_s": min_dwell_s >= 0, "payback_s": payback_s > 0,
            "burst_window_s": burst_window_s > 0, "size_cv": size_cv >= 0, "peakedness": peakedness > 0,
            "noise_z": noise_z >= 0,
            "min_mix_requests": min_mix_requests >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"break_even: parameter {key} out of range: {locals()[key]!r}")
        self.forecast_window_s = float(forecast_window_s)
        self.hysteresis = float(hysteresis)
        self.min_dwell_s = float(min_dwell_s)
        self.payback_s = float(payback_s)
        self.burst_window_s = float(burst_window_s)
        self.size_cv = float(size_cv)
        self.peakedness = float(peakedness)
        self.noise_z = float(noise_z)
        self.min_mix_requests = int(min_mix_requests)

    # -- per request ---------------------------------------------------------------------
    def route(self, ctx: RequestContext) -> Decision:
        return endpoint_first(ctx)

    # -- periodic capacity ------------------------------------------------------------------
    def plan_capacity(self, ctx: CapacityContext) -> CapacityDecision:
        spec = ctx.endpoint
        lo, hi = spec.min_instances, max(spec.min_instances, spec.max_instances)
        current = min(max(ctx.current_target, lo), hi)
        dwelt = ctx.now_s - ctx.last_change_s >= self.min_dwell_s
        windows = ctx.windows
        if not windows or all(w.requests <= 0 for w in windows):
            if current > lo and not dwelt:
                return CapacityDecision(current, "min_dwell")
            return CapacityDecision(lo, "no_traffic")

        mix = self._mix(windows, ctx)
        fore = self._nearest(windows, self.forecast_window_s)
        rph = fore.per_hour(fore.requests)
        be = break_even_requests_per_hour(spec, mix)
        details = {
            "api_usd_per_capacity_token": mix.api_usd_per_capacity_token,
            "endpoint_usd_per_capacity_token_at_full": endpoint_usd_per_capacity_token_at_full(spec),
            "api_usd_per_request": mix.api_usd_per_request,
        }
        if not endpoint_ever_pays_off(spec, mix):
            return CapacityDecision(lo, "endpoint_never_pays_off", None, rph, details)

        cap_per_req = mix.capacity_tokens_per_request
        best, costs = self._cheapest(spec, mix, rph * cap_per_req)
        details["cost_usd_per_hour_by_instances"] = dict(zip(range(lo, hi + 1), costs))
        if best > current:
            saving = costs[current - lo] - costs[best - lo]  # USD/hour
            startup = (best - current) * spec.hourly_price_usd * spec.startup_s / 3600.0  # USD
            if saving * self.payback_s / 3600.0 > startup:
                return CapacityDecision(best, "volume_above_break_even", be, rph, details)
            return CapacityDecision(current, "startup_not_paid_back", be, rph, details)
        if best < current:
            if not dwelt:
                return CapacityDecision(current, "min_dwell", be, rph, details)
            recent = self._upper_rate(windows, fore)
            down, _ = self._cheapest(spec, mix, recent * cap_per_req / (1.0 - self.hysteresis))
            if down < current:
                return CapacityDecision(down, "volume_below_break_even", be, rph, details)
            return CapacityDecision(current, "hysteresis", be, rph, details)
        return CapacityDecision(current, "at_cheapest", be, rph, details)

    # -- helpers ----------------------------------------------------------------------------
    def _upper_rate(self, windows: tuple[VolumeWindow, ...], fore: VolumeWindow) -> float:
        """Requests/hour that the recent volume is confidently below (Poisson upper bound).

        Windows from the forecast window up to ``max(forecast_window_s, min_dwell_s)``: the
        volume has to have stayed low, and a count of N requests is only known to
        ±√(N × peakedness) (√N for Poisson arrivals; clumped arrivals are noisier).
        """
        horizon = max(self.forecast_window_s, self.min_dwell_s)
        rates = [
            w.per_hour(w.requests + self.noise_z * (w.requests * self.peakedness) ** 0.5)
            for w in windows if w is fore or fore.seconds <= w.seconds <= horizon
        ]
        return max(rates)

    def _cheapest(self, spec, mix, volume_per_hour):
        return cheapest_instances(spec, mix, volume_per_hour, self.burst_window_s, self.size_cv, self.peakedness)

    def _mix(self, windows: tuple[VolumeWindow, ...], ctx: CapacityContext) -> TrafficMix:
        chosen = max(windows, key=lambda w: w.seconds)
        for w in sorted(windows, key=lambda w: -w.seconds):
            if w.requests >= self.min_mix_requests:
                chosen = w
                break
        if chosen.requests <= 0:
            chosen = max(windows, key=lambda w: w.requests)
        return TrafficMix.from_totals(chosen.requests, chosen.prompt_tokens, chosen.completion_tokens,
                                      chosen.seconds, ctx.endpoint, ctx.api_prices)

    @staticmethod
    def _nearest(windows: tuple[VolumeWindow, ...], seconds: float) -> VolumeWindow:
        return min(windows, key=lambda w: (abs(w.seconds - seconds), w.seconds))
