"""Budget periods on the UTC calendar: which period a moment falls in, and when it ends.

    period_id("day", now)  -> "d2026-12-01"     (the ledger key of today's spend)
    period_end("day", now) -> unix s of the next 00:00 UTC (None for "total": never resets)
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

PERIODS = ("day", "week", "month", "total")


def _start(period: str, now: float) -> datetime | None:
    t = datetime.fromtimestamp(now, timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":  # ISO weeks begin on Monday
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return None


def period_id(period: str, now: float) -> str:
    start = _start(period, now)
    return "total" if start is None else f"{period[0]}{start:%Y-%m-%d}"


def period_end(period: str, now: float) -> float | None:
    start = _start(period, now)
    if start is None:
        return None
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        end = start + timedelta(days=7)
    else:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return end.timestamp()


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
