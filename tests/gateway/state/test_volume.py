"""gateway/state/volume.py: bucketed sliding windows (pure, no I/O)."""
from __future__ import annotations

import pytest

from gateway.state.volume import BUCKET_S, HORIZON_S, WINDOWS_S, VolumeBuckets, bucket_of

T0 = 1_700_000_000.0  # a bucket boundary (unix s), so offsets below read as seconds into it
assert T0 % BUCKET_S == 0


def test_bucket_of_is_floor_of_10s():
    assert BUCKET_S == 10
    assert bucket_of(T0) == bucket_of(T0 + 9.999) == int(T0) // 10
    assert bucket_of(T0 + 10) == bucket_of(T0) + 1
    assert bucket_of(T0 - 0.001) == bucket_of(T0) - 1


def test_add_accumulates_per_bucket_and_backend_model():
    a = VolumeBuckets()
    a.add(7, ("openai", "m"), 1, 100, 10)
    a.add(7, ("openai", "m"), 1, 50, 5)
    a.add(7, ("openai", "m"), 2, 1, 1)
    a.add(8, ("sagemaker", "m"), 1, 3, 4)
    assert a.buckets == {7: {("openai", "m"): [4, 151, 16]}, 8: {("sagemaker", "m"): [1, 3, 4]}}


def test_window_sums_whole_buckets_and_measures_elapsed_span():
    v = VolumeBuckets()
    now = T0 + 4.0  # 4 s into the current bucket
    for age_s in range(0, 120):  # one request per second for the last two minutes
        v.add(bucket_of(now - age_s), ("openai", "m"), 1, 10, 2)
    w = v.window(now, 60)
    # 6 buckets: the current one (4 s elapsed: ages 0..4 -> 5 requests) + 5 full ones (50)
    assert w.requests == 55 and w.prompt_tokens == 550 and w.completion_tokens == 110
    assert w.seconds == pytest.approx(54.0)
    assert w.per_hour(w.requests) == pytest.approx(55 * 3600 / 54)


def test_window_ignores_older_and_future_buckets():
    v = VolumeBuckets()
    now = T0 + 5
    v.add(bucket_of(now) - 6, ("a", "m"), 100, 0, 0)  # just outside a 60 s window
    v.add(bucket_of(now) + 1, ("a", "m"), 100, 0, 0)  # a clock ahead of ours
    v.add(bucket_of(now) - 5, ("a", "m"), 1, 0, 0)
    assert v.window(now, 60).requests == 1


def test_window_filters_by_backend_and_model():
    v = VolumeBuckets()
    v.add(bucket_of(T0), ("openai", "small"), 1, 10, 1)
    v.add(bucket_of(T0), ("openai", "large"), 2, 20, 2)
    v.add(bucket_of(T0), ("sagemaker", "small"), 4, 40, 4)
    assert v.window(T0 + 1, 60).requests == 7
    assert v.window(T0 + 1, 60, backend="openai").requests == 3
    assert v.window(T0 + 1, 60, model="small").requests == 5
    assert v.window(T0 + 1, 60, backend="sagemaker", model="large").requests == 0


def test_short_window_is_the_current_bucket_and_never_zero_seconds():
    v = VolumeBuckets()
    v.add(bucket_of(T0), ("a", "m"), 3, 0, 0)
    v.add(bucket_of(T0) - 1, ("a", "m"), 5, 0, 0)
    w = v.window(T0, 5)  # at the very start of a bucket nothing of it has elapsed
    assert w.requests == 3 and w.seconds == 1.0  # clamped: a rate never divides by zero


@pytest.mark.parametrize("seconds", WINDOWS_S)
def test_prune_keeps_every_window_intact(seconds):
    v = VolumeBuckets()
    now = T0 + 7
    for age_s in range(0, HORIZON_S + 600, BUCKET_S):
        v.add(bucket_of(now - age_s), ("a", "m"), 1, 0, 0)
    before = v.window(now, seconds)
    v.prune(now)
    assert v.window(now, seconds) == before
    assert min(v.buckets) >= bucket_of(now) - HORIZON_S // BUCKET_S - 1  # bounded: ~362 buckets
    assert len(v.buckets) <= HORIZON_S // BUCKET_S + 2


def test_prune_drops_everything_once_past_the_horizon():
    v = VolumeBuckets()
    v.add(bucket_of(T0), ("a", "m"), 1, 0, 0)
    v.prune(T0 + HORIZON_S + 2 * BUCKET_S)
    assert v.buckets == {}
    assert v.window(T0 + HORIZON_S + 2 * BUCKET_S, 3600).requests == 0


def test_on_a_bucket_boundary_a_window_is_the_whole_last_seconds():
    # the replay counts [now - seconds, now) from exact timestamps; on a boundary whole buckets
    # hold exactly that (the current bucket has not begun), so nothing of the oldest is left out
    v = VolumeBuckets()
    now = T0 + 60
    v.add(bucket_of(T0), ("a", "m"), 1, 10, 2)  # [T0, T0 + 10): inside the last 60 s
    v.add(bucket_of(T0) - 1, ("a", "m"), 100, 0, 0)  # ends at T0: outside
    w = v.window(now, 60)
    assert (w.seconds, w.requests, w.prompt_tokens) == (60.0, 1, 10)
    assert v.loads(now, 60, 0.5) == {bucket_of(T0): 2 + 0.5 * 10}
    # a second later that bucket is partly outside: whole buckets only, so 51 s
    assert v.window(now + 1, 60).requests == 0 and v.window(now + 1, 60).seconds == 51.0
