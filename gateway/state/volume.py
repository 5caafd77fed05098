"""Sliding-window traffic counts in fixed buckets (requests, prompt and completion tokens).

Buckets are ``BUCKET_S`` wide and keyed by ``int(now // BUCKET_S)``; a window of
``seconds`` sums the buckets that start inside ``[now - seconds, now]``: on a bucket
boundary exactly the last ``seconds`` (what the replay counts from exact timestamps),
in between up to one bucket less. The same bucket numbers are used as Redis keys, so
every replica agrees on which bucket a second belongs to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from routing_policies import LoadMoments, VolumeWindow

BUCKET_S = 10
HORIZON_S = 3600  # the longest window anyone reads
WINDOWS_S = (60, 300, 3600)
MOMENT_BUCKETS_S = (10, 60)  # bucket sizes of the load moments the capacity policy gets (multiples of BUCKET_S)

Key = tuple[str, str]  # (backend, model)
# Derived rows share the buckets under a model key that no client model has: they are
# summed only when asked for by that exact key (see ``fitting_key``).
DERIVED = "\x1e"


def fitting_key(model: str, endpoint: str) -> str:
    """The rows counting ``model``'s requests that fit ``endpoint``'s context window."""
    return f"{DERIVED}fits:{endpoint}:{model}"
Counts = list  # [requests, prompt_tokens, completion_tokens]


def bucket_of(now: float) -> int:
    return int(now // BUCKET_S)


def first_bucket(now: float, seconds: float) -> int:
    """The oldest bucket of the last ``seconds``: the first that starts at or after ``now - seconds``.

    At least the current one. (Counting ``seconds // BUCKET_S`` buckets back from the current
    one instead left the oldest whole bucket out on a boundary, where the current one has not
    begun: a 60-s window of 50 s, and an hour of load moments missing its first bucket.)
    """
    return min(bucket_of(now), math.ceil((now - seconds) / BUCKET_S - 1e-9))


@dataclass
class VolumeBuckets:
    """bucket number -> (backend, model) -> [requests, prompt, completion].

    ``since`` (unix s) is when watching began (this process, or with shared state the
    first replica still syncing): traffic before it is unknown, not zero, so windows end
    there. A fresh gateway's hour holds minutes; read as an hour, they said a tenth of the
    rate and ten times the burstiness, and capacity started late.
    """

    buckets: dict[int, dict[Key, Counts]] = field(default_factory=dict)
    since: float | None = None

    def watched(self, now: float) -> None:
        """Note that traffic is being watched from ``now`` on, unless it already was."""
        if self.since is None:
            self.since = now

    def span(self, now: float, seconds: float, watched_only: bool = True) -> float:
        """The part of the last ``seconds`` that was watched (whole buckets, or from ``since``; at least 1 s).

        ``watched_only=False``: the whole window's span, watched or not."""
        if not watched_only:
            return max(now - first_bucket(now, seconds) * BUCKET_S, 1.0)
        start = self._first(now, seconds) * BUCKET_S
        if self.since is not None:
            start = max(start, self.since)
        return max(now - start, 1.0)

    def _first(self, now: float, seconds: float) -> int:
        first = first_bucket(now, seconds)
        return first if self.since is None else min(bucket_of(now), max(first, bucket_of(self.since)))

    def add(self, bucket: int, key: Key, requests: float, prompt: float, completion: float) -> None:
        row = self.buckets.setdefault(bucket, {}).get(key)
        if row is None:
            self.buckets[bucket][key] = [requests, prompt, completion]
        else:
            row[0] += requests
            row[1] += prompt
            row[2] += completion

    def prune(self, now: float) -> None:
        oldest = bucket_of(now) - HORIZON_S // BUCKET_S - 1
        for b in [b for b in self.buckets if b < oldest]:
            del self.buckets[b]

    def _rows(self, now: float, seconds: float, backend: str | None, models: tuple[str, ...] | None):
        """(bucket, [requests, prompt, completion]) of the matching rows of the last ``seconds``.

        ``models`` None: every client model's rows (not the derived ones); else exactly these keys.
        """
        for b in range(self._first(now, seconds), bucket_of(now) + 1):
            for (kb, km), row in self.buckets.get(b, {}).items():
                if (backend is None or kb == backend) and (km in models if models is not None
                                                            else not km.startswith(DERIVED)):
                    yield b, row

    def loads(self, now: float, seconds: float, weight: float, backend: str | None = None,
              models: tuple[str, ...] | None = None) -> dict[int, float]:
        """Capacity tokens (completion + ``weight`` × prompt) per bucket of the last ``seconds``."""
        out: dict[int, float] = {}
        for b, row in self._rows(now, seconds, backend, models):
            out[b] = out.get(b, 0.0) + row[2] + weight * row[1]
        return {b: x for b, x in out.items() if x}

    def window(self, now: float, seconds: float, backend: str | None = None, model: str | None = None,
               watched_only: bool = True) -> VolumeWindow:
        """Traffic of the last ``seconds`` (whole buckets, the current one included).

        ``watched_only=False``: the span is the whole window even before ``since`` (chargeback
        shares the window's instance time among the requests seen in it, watched or not)."""
        r = p = c = 0.0
        for _, row in self._rows(now, seconds, backend, None if model is None else (model,)):
            r += row[0]
            p += row[1]
            c += row[2]
        # the current bucket is partly elapsed: measure the window by what has elapsed
        return VolumeWindow(seconds=self.span(now, seconds, watched_only), requests=r, prompt_tokens=p,
                            completion_tokens=c)


def load_moments(loads: dict[int, float], now: float, seconds: float) -> tuple[LoadMoments, ...]:
    """``LoadMoments`` of per-bucket loads over the complete aligned buckets inside ``[now - seconds, now)``.

    One per size in ``MOMENT_BUCKETS_S``; the replay's simulator computes the same from its trace.
    """
    out = []
    for size in MOMENT_BUCKETS_S:
        group = size // BUCKET_S
        first = math.ceil((now - seconds) / size - 1e-9)
        last = int(now // size)  # exclusive: the open one is not complete
        sums: dict[int, float] = {}
        for b, x in loads.items():
            g = b // group
            if first <= g < last:
                sums[g] = sums.get(g, 0.0) + x
        count = max(0, last - first)
        steps = sum((sums.get(g + 1, 0.0) - sums.get(g, 0.0)) ** 2 for g in range(first, last - 1))
        out.append(LoadMoments(float(size), count, sum(sums.values()), sum(v * v for v in sums.values()), steps))
    return tuple(out)
