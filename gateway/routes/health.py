"""Passive backend health: a backend that could not be reached is skipped for a while."""
from __future__ import annotations

import time


class BackendHealth:
    """``failures_to_trip`` unreachable calls in a row take a backend out for ``cooldown_s`` seconds."""

    def __init__(self, failures_to_trip: int = 2, cooldown_s: float = 5.0, clock=time.monotonic):
        self._trip = failures_to_trip
        self._cooldown = cooldown_s
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._down_until: dict[str, float] = {}

    def failed(self, backend: str) -> None:
        n = self._failures.get(backend, 0) + 1
        self._failures[backend] = n
        if n >= self._trip:
            self._down_until[backend] = self._clock() + self._cooldown

    def succeeded(self, backend: str) -> None:
        if self._failures.get(backend):
            self._failures[backend] = 0
            self._down_until.pop(backend, None)

    def usable(self, backend: str) -> bool:
        until = self._down_until.get(backend)
        return until is None or self._clock() >= until
