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

``synthesize_from_arrivals`` keeps real burstiness instead: every hour of the shape takes
the arrival times of a real one-hour trace (the Azure code hour: 73 % empty seconds, gaps of
minutes), thinned at random to the hour's count, or replicated whole (with a random rest)
when the hour needs more. Token pairs come either with those arrivals (the real trace's own)
or sampled from another trace.

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


# a year of hours: more than any shape a replay can take (traces end within MAX_ARRIVAL_S)
MAX_SHAPE_HOURS = 366 * 24


def read_hourly(path: str, model: str | None = None) -> list[float]:
    """Requests per hour, hour 0 first, for ``model`` (the file's first model when None)."""
    try:
        # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"model", "hour", "requests"} - set(reader.fieldnames or ())
            if missing:
                raise TraceError(f"{path}: line 1: missing column(s) {', '.join(sorted(missing))}")
            rows = list(reader)
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:  # (a gzipped file reads as such)
        raise TraceError(f"{path}: not a readable CSV: {e}") from None
    if not rows:
        raise TraceError(f"{path}: no rows")
    model = model or rows[0]["model"]
    by_hour: dict[int, float] = {}
    for n, row in enumerate(rows, start=2):
        if row["model"] != model:
            continue
        try:
            hour, requests = int(row["hour"]), float(row["requests"])
        except (TypeError, ValueError):  # (TypeError: a short row's missing field is None)
            raise TraceError(f"{path}: line {n}: hour and requests must be numbers") from None
        # an hour of 10^8 built a list of 10^8 hours; NaN, infinite or negative requests built an empty
        # hour, a size error that blamed --scale, or lowered the hours around it
        if not 0 <= hour < MAX_SHAPE_HOURS:
            raise TraceError(f"{path}: line {n}: hour must be 0 to {MAX_SHAPE_HOURS - 1}, got {hour}")
        if not (math.isfinite(requests) and requests >= 0):
            raise TraceError(f"{path}: line {n}: requests must be a number >= 0, got {row['requests']!r}")
        by_hour[hour] = requests
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


def synthesize_from_arrivals(hourly: list[float], arrivals: Trace, pairs: list[tuple[int, int]] | None = None, *,
                             scale: float | None = None, peak_per_hour: float | None = None,
                             mean_per_hour: float | None = None, seed: int = 0, rotate: bool = False,
                             name: str = "<synthetic>") -> Trace:
    """Each hour of ``hourly`` filled with ``arrivals``' own arrival times (offsets within its first hour,
    stretched so that the recorded span fills the hour: see the comment below).

    Give exactly one of ``scale``, ``peak_per_hour`` or ``mean_per_hour``. An hour that expects
    N requests keeps a random N of the real hour's M arrivals (N <= M), or N // M copies of all
    of them plus a random rest, so clumps and gaps stay where the real trace has them. The
    hour's count is the expectation rounded at random (no systematic bias). ``pairs=None``
    keeps each arrival's own tokens; otherwise pairs are drawn from ``pairs``. ``rotate``
    shifts each hour's pattern by a random offset (circularly), so hours do not repeat it.
    """
    if sum(x is not None for x in (scale, peak_per_hour, mean_per_hour)) != 1:
        raise ValueError("give exactly one of scale, peak_per_hour or mean_per_hour")
    base = arrivals.arrival_s[0] if len(arrivals) else 0.0
    hour = [(t - base, p, c) for t, p, c in zip(arrivals.arrival_s, arrivals.prompt_tokens, arrivals.completion_tokens)
            if t - base < 3600.0]
    if not hourly or not hour or (pairs is not None and not pairs):
        raise ValueError("need a non-empty hourly shape, arrival trace and token sample")
    # A real "hour" is rarely 3,600 s of data (Azure conversation: 3,502 s, code: 3,436 s). Laid
    # on the clock as it is, it would end every synthetic hour in a silence no real traffic has
    # (98 and 164 s, 336 times in 14 days), and a capacity policy would be judged on those holes.
    # So the recorded span, plus one mean gap between arrivals, is stretched to the hour: the
    # clock runs 3-5 % slow, and every clump and gap keeps its place and its shape.
    span = hour[-1][0] + hour[-1][0] / len(hour)
    stretch = 3600.0 / span if 0.0 < span < 3600.0 else 1.0
    hour = [(t * stretch, p, c) for t, p, c in hour]
    total = sum(hourly)
    if peak_per_hour is not None or mean_per_hour is not None:
        ref = max(hourly) if peak_per_hour is not None else total / len(hourly)
        if ref <= 0:
            raise ValueError("the hourly shape has no traffic")
        scale = (peak_per_hour if peak_per_hour is not None else mean_per_hour) / ref
    if scale < 0:
        raise ValueError("need scale >= 0")
    rng = random.Random(seed)
    m = len(hour)
    rows = []
    for h, volume in enumerate(hourly):
        expected = volume * scale
        count = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
        copies, rest = divmod(count, m)
        chosen = [i for _ in range(copies) for i in range(m)] + rng.sample(range(m), rest)
        shift = rng.random() * 3600.0 if rotate else 0.0
        for i in chosen:
            t, p, c = hour[i]
            if pairs is not None:
                p, c = pairs[rng.randrange(len(pairs))]
            rows.append((round(h * 3600.0 + (t + shift) % 3600.0, 6), p, c))
    rows.sort()
    return Trace(array("d", (r[0] for r in rows)), array("q", (r[1] for r in rows)),
                 array("q", (r[2] for r in rows)), name)
