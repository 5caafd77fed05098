"""Build a multi-day per-request trace from an hourly volume shape and a real token mix.

The shared per-request traces cover about an hour each; day/night switching needs
days. This takes the *shape* of an hourly volume series (ServeGen's
``servegen_hourly.csv``: model, hour, requests), scales it, and draws arrivals as a
Poisson process whose rate follows that shape (linearly interpolated between hour
midpoints, held constant per ``slice_s`` slice, so there are no steps at the top of
each hour). Each request takes a (prompt_tokens, completion_tokens) pair sampled, with
replacement, from a real trace, so the joint token distribution is the real one.

Arrivals are plain Poisson by default, which is smoother than real traffic (the Azure
code hour has 73 % empty seconds and 67 requests in its busiest second). With
``burst_mean`` > 1 they come in clumps instead: clumps arrive as a Poisson process and
each holds a geometric number of requests (mean ``burst_mean``) spread uniformly over
``burst_spread_s`` seconds; the volume per hour is unchanged.

Deterministic: the same inputs and seed give the same trace (and the same file bytes).

Usage::

    hourly = read_hourly("/work/shared/traces/servegen_hourly.csv", "m-large")
    tokens = read_trace("/work/shared/traces/normalized/azure2023_conv.csv.gz").pairs()
    trace = synthesize(hourly[:7 * 24], tokens, peak_per_hour=9000, seed=1)
"""
from __future__ import annotations

import csv
import math
import random
from array import array

from .trace import Trace, TraceError


def read_hourly(path: str, model: str | None = None) -> list[float]:
    """Requests per hour, hour 0 first, for ``model`` (the file's first model when None)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"model", "hour", "requests"} - set(reader.fieldnames or ())
            if missing:
                raise TraceError(f"{path}: line 1: missing column(s) {', '.join(sorted(missing))}")
            rows = list(reader)
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    if not rows:
        raise TraceError(f"{path}: no rows")
    model = model or rows[0]["model"]
    by_hour: dict[int, float] = {}
    for n, row in enumerate(rows, start=2):
        if row["model"] != model:
            continue
        try:
            by_hour[int(row["hour"])] = float(row["requests"])
        except ValueError:
            raise TraceError(f"{path}: line {n}: hour and requests must be numbers") from None
    if not by_hour:
        models = sorted({r["model"] for r in rows})
        raise TraceError(f"{path}: no rows for model {model!r} (have: {', '.join(models)})")
    return [by_hour.get(h, 0.0) for h in range(max(by_hour) + 1)]


def rate_at(hourly: list[float], t_s: float) -> float:
    """Requests/second at ``t_s``: linear between hour midpoints, flat before the first/after the last."""
    x = t_s / 3600.0 - 0.5
    if x <= 0:
        return hourly[0] / 3600.0
    k = int(x)
    if k >= len(hourly) - 1:
        return hourly[-1] / 3600.0
    f = x - k
    return (hourly[k] * (1.0 - f) + hourly[k + 1] * f) / 3600.0


def synthesize(hourly: list[float], pairs: list[tuple[int, int]], *, scale: float | None = None,
               peak_per_hour: float | None = None, seed: int = 0, slice_s: float = 60.0,
               burst_mean: float = 1.0, burst_spread_s: float = 1.0, name: str = "<synthetic>") -> Trace:
    """A trace spanning ``len(hourly)`` hours; give exactly one of ``scale`` or ``peak_per_hour``.

    ``scale`` multiplies the hourly volumes; ``peak_per_hour`` scales them so the
    busiest hour expects that many requests. ``burst_mean`` > 1 clumps the arrivals.
    """
    if (scale is None) == (peak_per_hour is None):
        raise ValueError("give exactly one of scale or peak_per_hour")
    if not hourly or not pairs:
        raise ValueError("need a non-empty hourly shape and token sample")
    if peak_per_hour is not None:
        peak = max(hourly)
        if peak <= 0:
            raise ValueError("the hourly shape has no traffic")
        scale = peak_per_hour / peak
    if scale < 0 or slice_s <= 0 or burst_mean < 1 or burst_spread_s < 0:
        raise ValueError("need scale >= 0, slice_s > 0, burst_mean >= 1, burst_spread_s >= 0")
    if burst_mean > 1:
        return _clumped(hourly, pairs, scale, seed, slice_s, burst_mean, burst_spread_s, name)
    shape = [h * scale for h in hourly]
    rng = random.Random(seed)
    expo, pick, n_pairs = rng.expovariate, rng.randrange, len(pairs)
    arrival, prompt, completion = array("d"), array("q"), array("q")
    end = len(shape) * 3600.0
    start = 0.0
    while start < end:
        stop = min(end, start + slice_s)
        lam = rate_at(shape, (start + stop) / 2.0)
        if lam > 0:
            t = start + expo(lam)
            while t < stop:
                p, c = pairs[pick(n_pairs)]
                arrival.append(round(t, 6))
                prompt.append(p)
                completion.append(c)
                t += expo(lam)
        start = stop
    return Trace(arrival, prompt, completion, name)


def _clumped(hourly, pairs, scale, seed, slice_s, burst_mean, spread_s, name) -> Trace:
    shape = [h * scale for h in hourly]
    rng = random.Random(seed)
    expo, pick, uniform, n_pairs = rng.expovariate, rng.randrange, rng.random, len(pairs)
    log_q = math.log(1.0 - 1.0 / burst_mean)  # geometric clump size on 1, 2, ... with mean burst_mean
    rows = []
    end = len(shape) * 3600.0
    start = 0.0
    while start < end:
        stop = min(end, start + slice_s)
        lam = rate_at(shape, (start + stop) / 2.0) / burst_mean  # clumps per second
        if lam > 0:
            t = start + expo(lam)
            while t < stop:
                size = 1 + int(math.log(1.0 - uniform()) / log_q)
                for _ in range(size):
                    at = t + spread_s * uniform()
                    if at < end:
                        rows.append((round(at, 6), *pairs[pick(n_pairs)]))
                t += expo(lam)
        start = stop
    rows.sort()
    return Trace(array("d", (r[0] for r in rows)), array("q", (r[1] for r in rows)),
                 array("q", (r[2] for r in rows)), name)
