"""The break-even policy: run endpoint instances only while they cost less than the API.

Per request: context fit first (prompt + requested max_tokens beyond the endpoint's
context window → API), then the endpoint while it is in service and has room (an
instance in service is already paid for), the API otherwise.

Periodically (the caller's ``routing.capacity_interval_s``): the instance count that
minimises expected spend at the forecast volume (see ``capacity``), with the traffic's
burstiness measured from the traffic itself (``LoadMoments``), and two rules for changing it:

* **up** by ski rental: the policy keeps an account, per larger count, of the API spend
  that count would have saved tick by tick (time it would not have pays the account down,
  never below zero), and starts instances once that account covers ``restart_weight`` ×
  their start-up billing (``startup_s`` that serves nothing). A burst too short to repay
  a start starts nothing; a real ramp starts them within minutes. Past the first instance,
  only for a rate the watched hour has seen, unless the need has lasted and missed what a
  wrong start would waste (``_best_beyond_first``, ``_wrong_start``);
* **down** by ski rental. Keeping an instance the forecast does not need costs
  ``waste`` USD/hour (its price minus the API spend it still saves); releasing it and
  needing it again costs a *restart*: ``startup_s`` of billing, the up account it must
  build again, and the API spend, at the hour's volume, while the forecast notices the
  return and the instance starts. That spend is priced over the levels the hour's minutes
  ran at (``level_spread``), not at their mean: a third instance that only the hour's busy
  quarter needs is worth its overflow there, which the hour's average hides. The policy
  keeps an account per smaller count: what the
  extra instances cost beyond what they saved, tick by tick (time it is needed pays the
  account down, never below zero; down to one instance or more, the saving is priced over
  the hour's levels too, for the same reason), and releases them once it reaches ``restart_weight`` ×
  the restart cost, on a tick where keeping them costs more, unless the last minute says the
  current count is needed (the traffic is back while the forecast window still reads the
  gap). An instance that will be needed again soon is kept through the gap;
  traffic that stays below break-even on balance, however bursty, releases it.

Worst case (``restart_weight`` 1, the deterministic break-even rule of ski rental): over
any idle gap, whatever its length, the policy spends at most twice what the best choice
for that gap costs (keep throughout, or release at once and restart), up to one
``capacity_interval_s`` of rounding: a gap shorter than the threshold costs the same as
keeping; a longer one costs the threshold's waste (= one restart) plus the restart, where
the best choice pays at least one restart. ``tests/routing_policies/test_break_even.py``
drives an adversary against it.

When even a fully used instance costs more than the API would charge for its traffic,
the answer is ``min_instances`` with reason ``endpoint_never_pays_off`` and
``break_even_requests_per_hour=None``: the gateway says so rather than hide it.

Usage (config.yaml)::

    routing:
      policy: break_even
      params: {forecast_window_s: 300, restart_weight: 1.0}
"""
from __future__ import annotations

import math
from typing import ClassVar

from .base import (
    CapacityContext, CapacityDecision, Decision, RequestContext, VolumeWindow, is_finite_number, register,
)
from .capacity import (
    TrafficMix,
    break_even_requests_per_hour,
    costs_by_instances,
    costs_over_levels,
    endpoint_ever_pays_off,
    endpoint_usd_per_capacity_token_at_full,
    level_spread,
    measured_dispersion,
    poisson_dispersion,
)
from .rules import endpoint_first


@register
class BreakEven:
    """Cost-aware routing and capacity: see the module docstring.

    Parameters (all optional; the defaults are the ones replayed in docs/replay-results.md):

    forecast_window_s: 300 — the volume window (seconds) whose load (its requests' capacity
        tokens) forecasts the next minutes; the caller's window nearest to it is used.
    restart_weight: 1.0 — change the count once its account reaches this × what the change
        risks (1: the 2-competitive ski-rental rule; larger waits longer both ways).
    min_dwell_s: 300 — seconds after a change (or a process start) before scaling down.
    size_cv: 1.0 — the spread of request sizes (std ÷ mean): how much of a window's departure
        from the hour's tokens per request is chance (``_window_load``); and, with peakedness: 1.0,
        before the traffic's burstiness has been measured: a compound Poisson load with this spread.
    min_mix_requests: 20 — the prompt/completion mix comes from the longest window with
        at least this many requests; with fewer, from the last mix measured on that many
        (the longest window's handful if there is none yet).
    min_burst_requests: 200 — the load's burstiness is measured once the longest window holds
        this many requests (Poisson is assumed before).
    forecast_noise: 0.3 — the largest relative error (from the measured burstiness) a
        forecast window may have; a noisier one gives way to the next longer window.
    hour_headroom: 1.05 — a scale-up past the first instance is for a load at most this × the
        watched hour's (0: off); see ``_best_beyond_first``.
    """

    name: ClassVar[str] = "break_even"

    def __init__(self, forecast_window_s: float = 300.0, restart_weight: float = 1.0,
                 min_dwell_s: float = 300.0, size_cv: float = 1.0,
                 peakedness: float = 1.0, min_mix_requests: int = 20, min_burst_requests: int = 200,
                 forecast_noise: float = 0.3, hour_headroom: float = 1.05):
        given = locals()
        for key in ("forecast_window_s", "restart_weight", "min_dwell_s", "size_cv", "peakedness", "min_mix_requests",
                    "min_burst_requests", "forecast_noise", "hour_headroom"):
            if not is_finite_number(given[key]):
                raise ValueError(f"break_even: parameter {key} must be a finite number, got {given[key]!r}")
        checks = {
            "forecast_window_s": forecast_window_s > 0,
            "restart_weight": restart_weight >= 0, "min_dwell_s": min_dwell_s >= 0,
            "size_cv": size_cv >= 0,
            "peakedness": peakedness > 0, "min_mix_requests": min_mix_requests >= 1,
            "min_burst_requests": min_burst_requests >= 1, "forecast_noise": forecast_noise >= 0,
            "hour_headroom": hour_headroom >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"break_even: parameter {key} out of range: {given[key]!r}")
        self.forecast_window_s = float(forecast_window_s)
        self.restart_weight = float(restart_weight)
        self.min_dwell_s = float(min_dwell_s)
        self.size_cv = float(size_cv)
        self.peakedness = float(peakedness)
        self.min_mix_requests = int(min_mix_requests)
        self.min_burst_requests = int(min_burst_requests)
        self.forecast_noise = float(forecast_noise)
        self.hour_headroom = float(hour_headroom)

    # -- per request ---------------------------------------------------------------------
    def route(self, ctx: RequestContext) -> Decision:
        return endpoint_first(ctx)

    # -- periodic capacity ------------------------------------------------------------------
    def plan_capacity(self, ctx: CapacityContext) -> CapacityDecision:
        spec = ctx.endpoint
        lo, hi = spec.instance_bounds
        current = min(max(ctx.current_target, lo), hi)
        dwelt = ctx.now_s - ctx.last_change_s >= self.min_dwell_s
        windows = ctx.windows
        if not windows or all(w.requests <= 0 for w in windows):
            if "p_req" not in ctx.memo or not windows:
                # nothing seen yet (or not since the memo was lost): no mix to price anything with
                if current > lo and not dwelt:
                    return CapacityDecision(current, "min_dwell")
                return CapacityDecision(lo, "no_traffic")
            # an hour without a request after traffic that paid for instances: the same ski rental
            # (at the last mix) decides whether the return is near enough to keep them. An hour's
            # idle price is below one restart at gpt-4o prices and a few thousand requests/hour
            mix, measured_mix = self._last_mix(ctx), False
        else:
            mix, measured_mix = self._mix(windows, ctx)
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

        longest = max(windows, key=lambda w: w.seconds)
        # a handful of requests says little about burstiness (one clump of 30 in an hour of
        # otherwise empty buckets reads as wildly bursty): below this many, assume Poisson
        measured = measured_dispersion(longest.moments) if longest.requests >= self.min_burst_requests else None
        dispersion = measured if measured is not None else poisson_dispersion(mix, self.size_cv, self.peakedness)
        details["load_dispersion"] = dispersion
        fore = self._steady_window(windows, fore, dispersion, spec)
        rph = fore.per_hour(fore.requests)
        load = self._window_load(fore, mix, spec)
        details["forecast_window_s"] = fore.seconds
        spread = level_spread(longest.moments)
        costs = costs_by_instances(spec, mix, load, dispersion)
        # read only by the accounts of counts between one and the current one (see the loop below)
        held = costs_over_levels(spec, mix, load, dispersion, spread) if current > max(lo, 1) else costs
        best = lo + min(range(len(costs)), key=lambda i: (costs[i], i))
        details["cost_usd_per_hour_by_instances"] = dict(zip(range(lo, hi + 1), costs))

        # Ski rental both ways, one account per other count k: what staying at the current
        # count has cost beyond k, tick by tick, at the forecast volume (down to k >= 1: over the
        # hour's levels around it; never below zero; time the current count is the better one
        # pays the account down). Moving to k pays
        # once the account covers what the move risks: a start-up's billing going up; going
        # down, a restart (see the module docstring), priced at the level traffic returns at.
        hour = longest.per_hour(longest.requests)
        dt = max(0.0, ctx.now_s - ctx.memo.get("at", ctx.now_s))
        # the load traffic comes back at after a gap (capacity tokens/hour): the recent busy load,
        # forgotten over an hour (an hour's average of a busy half-hour and a gap is half what returns)
        level = max(load, _load_per_hour(longest, spec), ctx.memo.get("level", 0.0) * math.exp(-dt / 3600.0))
        # priced over the levels the hour's minutes ran at, not at their mean: overflow is convex in
        # the load, and a marginal instance earns its keep in the hour's busiest minutes
        again = costs_over_levels(spec, mix, level, dispersion, spread)
        # busy since: the last tick the watched hour's rate was below break-even. After a quiet
        # hour (a night, a gap in collection) the hour before says nothing about the return; a
        # lull of minutes is no such thing, and must not lift the cap on peaks of minutes
        quiet = be is None or hour < be
        busy = ctx.now_s if quiet else min(ctx.memo.get("busy", ctx.now_s), ctx.now_s)
        memo: dict[str, float] = {"at": ctx.now_s, "level": level, "busy": busy}
        if measured_mix or "p_req" in ctx.memo:  # (a first handful, with no mix measured yet, is not kept)
            memo.update(p_req=mix.prompt_tokens_per_request, c_req=mix.completion_tokens_per_request)
        cap = self._hour_cap(ctx, spec, longest, fore, busy, current)
        beyond = self._best_beyond_first(spec, mix, cap, load, dispersion)
        # since when the last minute has run above that cap: how long a need past it has lasted (_wrong_start)
        if cap is not None and self._window_load(min(windows, key=lambda w: w.seconds), mix, spec) > cap:
            memo["over"] = min(ctx.memo.get("over", ctx.now_s), ctx.now_s)
        persisted = ctx.now_s - memo.get("over", ctx.now_s)
        best_up = best if beyond is None else min(best, beyond)
        up = down = current
        for k in range(lo, hi + 1):
            if k == current:
                continue
            # going up is a bet on the rate now; keeping an instance that others share the load with is
            # worth its overflow over the levels the hour ran at. Not the last one: priced so, it was
            # kept longer through low-volume gaps and released anyway (docs/replay-results.md, m-mid
            # code 1,000), and pricing the up accounts so started instances for busy quarters that
            # were over by the time they served (conversation 2,500)
            c = costs if k > current or k == 0 else held
            account = max(0.0, ctx.memo.get(str(k), 0.0) + dt * (c[current - lo] - c[k - lo]) / 3600.0)  # USD
            memo[str(k)] = account
            # the start-up billing of the instances added, going up now or coming back later
            start = abs(k - current) * spec.hourly_price_usd * spec.startup_for(min(k, current)) / 3600.0  # USD
            if k > current:
                if account > 0 and account >= self.restart_weight * start and k <= best_up:
                    up = k  # the largest qualifying count up to the cheapest
                elif (best_up < k <= best and persisted >= spec.startup_for(current) + self.min_dwell_s
                      and account > 0 and account >= self.restart_weight * self._wrong_start(spec, current, k)):
                    up = k  # past the hour's rate: a peak that has missed more than starting for it could waste
            else:
                # a restart bills its start-up, needs its own account (another start-up's worth of
                # missed saving) before it starts, and loses the saving while the forecast window
                # notices the return (half of it, on average) and while the instances start
                lost_s = spec.startup_for(k) + fore.seconds / 2.0
                risk = (start * (1.0 + self.restart_weight)
                        + max(0.0, again[k - lo] - again[current - lo]) * lost_s / 3600.0)  # USD
                if (down == current and account > 0 and account >= self.restart_weight * risk
                        # only while keeping costs more: an account ripe from a gap is not spent on the tick the
                        # traffic is back, when the shorter forecast window prices the restart lower (m-mid code
                        # arrivals at 4,000 req/h: released three minutes into a return, started cold three later)
                        and c[current - lo] > c[k - lo]
                        and not self._needed_now(ctx, fore, mix, dispersion, current, k)):
                    down = k  # the smallest qualifying count
        details["accounts_usd"] = {k: v for k, v in memo.items() if k not in _NOT_ACCOUNTS}
        if up > current:
            return CapacityDecision(up, "volume_above_break_even", be, rph, details, _moved(memo, up, +1))
        if down < current and dwelt:
            return CapacityDecision(down, "idle_cost_above_restart_cost", be, rph, details, _moved(memo, down, -1))
        if best > current:
            return CapacityDecision(current, "startup_not_paid_back", be, rph, details, memo)
        if best == current:
            return CapacityDecision(current, "at_cheapest", be, rph, details, memo)
        return CapacityDecision(current, "keep_for_restart" if dwelt else "min_dwell", be, rph, details, memo)

    # -- helpers ----------------------------------------------------------------------------
    def _mix(self, windows: tuple[VolumeWindow, ...], ctx: CapacityContext) -> tuple[TrafficMix, bool]:
        """The mix to price with, and whether it was measured on ``min_mix_requests`` requests (memo-worthy)."""
        chosen = max(windows, key=lambda w: w.seconds)
        for w in sorted(windows, key=lambda w: -w.seconds):
            if w.requests >= self.min_mix_requests:
                chosen = w
                break
        if chosen.requests < self.min_mix_requests and "p_req" in ctx.memo:
            # a trickle in a quiet hour (or the first requests of a return) is a handful of token
            # counts, and priced on them a restart's risk jumps with each request: the last mix
            # measured on enough requests stands until the windows hold that many again
            return self._last_mix(ctx), False
        if chosen.requests <= 0:
            chosen = max(windows, key=lambda w: w.requests)
        return (TrafficMix.from_totals(chosen.requests, chosen.prompt_tokens, chosen.completion_tokens,
                                       chosen.seconds, ctx.endpoint, ctx.api_prices),
                chosen.requests >= self.min_mix_requests)

    def _needed_now(self, ctx: CapacityContext, fore: VolumeWindow, mix: TrafficMix, dispersion: float,
                    current: int, k: int) -> bool:
        """Whether the last minute's rate makes ``current`` instances cheaper than ``k``: a ripe release waits.

        Traffic is back (or a burst is on) while the forecast window still reads the gap, and a gap's
        account must not release the instance at the moment it pays again. Priced at the measured
        dispersion and as a Poisson load, needed if either says so: an hour that was a gap until a
        minute ago measures the return's first step as burstiness, and at that dispersion no instance
        would seem worth anything. No guard when the forecast window is the shortest one (it is the
        last minute itself). Asked only once a release qualifies: it prices two more count vectors.
        """
        recent = min(ctx.windows, key=lambda w: w.seconds)
        if recent.seconds >= fore.seconds or recent.requests <= 0:
            return False
        spec, lo = ctx.endpoint, ctx.endpoint.min_instances
        load = self._window_load(recent, mix, spec)
        for d in (dispersion, poisson_dispersion(mix, self.size_cv, self.peakedness)):
            costs = costs_by_instances(spec, mix, load, d)
            if costs[current - lo] < costs[k - lo]:
                return True
        return False

    def _window_load(self, w: VolumeWindow, mix: TrafficMix, spec) -> float:
        """The capacity tokens/hour a window's requests put on the endpoint: its request rate × their size.

        The size is the window's own tokens per request where it departs from the mix's (the hour's)
        by more than chance would, shrunk towards the mix's as much as chance explains (a James-Stein
        weight, with ``size_cv`` as the spread of request sizes). In real hours a window's request
        count and its request sizes move apart (bursts of short requests: an Azure conversation
        hour's 5-min windows run 157-299 capacity tokens per request around a mean of 231); counted
        at the hour's size such a burst looked 47 % busier than it was and a lull 23 % idler, enough
        to release an instance the hour needed. Where sizes do not follow arrivals, the window's own
        mean is noise, and taken as it is, it started instances for it (Poisson conversation: 25
        starts instead of 21).
        """
        if w.requests <= 0:
            return 0.0
        hour_size = mix.capacity_tokens_per_request
        size = w.capacity_tokens(spec) / w.requests
        delta = size - hour_size
        se2 = (hour_size * self.size_cv) ** 2 / w.requests
        keep = max(0.0, 1.0 - se2 / (delta * delta)) if delta else 0.0
        return w.per_hour(w.requests) * (hour_size + keep * delta)

    @staticmethod
    def _last_mix(ctx: CapacityContext) -> TrafficMix:
        """The mix (tokens per request) the previous decision priced with, carried in the memo."""
        return TrafficMix.from_totals(1.0, ctx.memo["p_req"], ctx.memo["c_req"], 3600.0, ctx.endpoint, ctx.api_prices)

    def _hour_cap(self, ctx: CapacityContext, spec, longest: VolumeWindow, fore: VolumeWindow, busy: float,
                  current: int) -> float | None:
        """The highest load (capacity tokens/hour) a scale-up past the first instance is priced at.

        ``hour_headroom`` × the rate of the hour the gateway has watched; None when the rule is off or
        no instance runs (see ``_best_beyond_first``).
        """
        if self.hour_headroom <= 0 or current < 1:
            return None
        watched = min(longest.seconds, max(ctx.now_s - busy, fore.seconds))
        return self.hour_headroom * longest.capacity_tokens(spec) / watched * 3600.0

    @staticmethod
    def _best_beyond_first(spec, mix: TrafficMix, cap: float | None, load: float, dispersion: float) -> int | None:
        """The cheapest count for a scale-up past the first instance: at a rate the hour has seen (``cap``).

        An added instance serves overflow, and overflow the watched hour's rate does not show
        (within ``hour_headroom``) is a peak of minutes: over by the time the instance is in
        service ``startup_s`` later, while it is billed through its start and the dwell. A ramp
        lifts the hour's rate too, later. The first instance is exempt: all traffic rides on it,
        and after a quiet night the hour's rate says nothing about the morning. The hour is the
        part the gateway has watched (``longest.seconds``: a process that started 10 minutes ago
        has seen 10 minutes) since traffic was last below break-even (``busy``): after a gap of
        an hour the return's own rate counts, not the gap's. A new level at an hour's start is
        no peak of minutes, but the hour's rate lags it: the plan loop lets such a need through
        once it has lasted and missed enough (``_wrong_start``); the memo's ``over`` says since
        when the last minute has run above the cap.
        None when the forecast is within that headroom (or the rule is off: ``cap`` None).
        """
        if cap is None or cap >= load:
            return None
        costs = costs_by_instances(spec, mix, cap, dispersion)
        return spec.min_instances + min(range(len(costs)), key=lambda i: (costs[i], i))

    def _steady_window(self, windows: tuple[VolumeWindow, ...], fore: VolumeWindow, dispersion: float,
                       spec) -> VolumeWindow:
        """The forecast window, or a longer one when bursts make it too noisy to act on.

        A window holding L capacity tokens of a load with variance = mean × dispersion
        measures its rate to a relative error of √(dispersion ÷ L), L being what it holds or,
        if more, what it should hold at the longest window's rate (an empty window that should
        have held plenty is news: the traffic stopped). Poisson-like traffic passes at the
        forecast window and follows ramps;
        bursty traffic (gaps of minutes) would otherwise scale on every burst and gap, so it
        is judged on a longer window.
        """
        longest = max(windows, key=lambda w: w.seconds)
        hourly = _load_per_hour(longest, spec) / 3600.0  # capacity tokens/s
        for w in sorted(windows, key=lambda w: w.seconds):
            expected = max(hourly * w.seconds, w.capacity_tokens(spec))
            if w.seconds >= fore.seconds and expected > 0 and (dispersion / expected) ** 0.5 <= self.forecast_noise:
                return w
        return longest

    def _wrong_start(self, spec, current: int, k: int) -> float:
        """USD that going from ``current`` to ``k`` instances wastes if the peak it is for ends as they start.

        Their billing through the start-up and the dwell, then through the release's own ski rental: an
        account of ``restart_weight`` × a restart's risk, at least (1 + ``restart_weight``) start-ups'
        billing. A need above the watched hour's rate (``_best_beyond_first``) starts them once its
        missed saving covers this (ski rental again: a peak that ends then costs at most this much
        more than the best choice for it) and the last minute has run above that rate for a start-up
        plus a dwell (a peak of ten minutes at 1.5× the 1→2 threshold misses this much in six: the
        instance would serve after it). Without the cap, peaks of minutes had started a second
        instance 48 times in 14 days (conversation 2,500); without this escape, a new level at an
        hour's start went without the instances it needed for 25 minutes (m-mid conversation
        8,000, hour 146: 12.59 USD where three instances cost 4.22).
        """
        startup = spec.startup_for(current)
        held_s = startup + self.min_dwell_s + self.restart_weight * (1.0 + self.restart_weight) * startup
        return (k - current) * spec.hourly_price_usd * held_s / 3600.0

    @staticmethod
    def _nearest(windows: tuple[VolumeWindow, ...], seconds: float) -> VolumeWindow:
        return min(windows, key=lambda w: (abs(w.seconds - seconds), w.seconds))


# memo keys that are no count's account: the last tick's time, the level traffic returns at, busy
# since, the last mix measured on enough requests (prompt and completion tokens per request), to
# price an hour without traffic or a trickle at, and since when the last minute has run above the
# hour's cap
_NOT_ACCOUNTS = frozenset(("at", "level", "busy", "p_req", "c_req", "over"))


def _load_per_hour(w: VolumeWindow, spec) -> float:
    """The capacity tokens/hour a window's requests put on the endpoint."""
    return w.per_hour(w.capacity_tokens(spec))


def _moved(memo: dict[str, float], to: int, direction: int) -> dict[str, float]:
    """The accounts after moving to ``to``: those further the same way keep what they hold beyond it.

    An account is a sum of cost differences, and (current − k) = (current − to) + (to − k):
    a ramp that already earned the first step keeps its claim on the next one. (Going down to
    one instance or more, the last instance's account is priced at the forecast alone and the
    others over the hour's levels, so there the split is an approximation.)
    """
    base = memo.get(str(to), 0.0)
    out: dict[str, float] = {}
    for key, value in memo.items():
        if key in _NOT_ACCOUNTS:
            out[key] = value
        elif (int(key) - to) * direction > 0:
            out[key] = max(0.0, value - base)
    return out
