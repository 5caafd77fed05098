"""The simulated endpoint's admission rule, shared by the simulator and the hindsight optimum.

The endpoint takes a request when the capacity tokens it admitted over the last
``window_s`` seconds plus this request fit in its budget (instances × tokens/s ×
window). One class, so that the optimum and the policies are judged by the same rule.
"""
from __future__ import annotations

from collections import deque


class SlidingLoad:
    """Capacity tokens admitted in the last ``window_s`` seconds (``load``)."""

    __slots__ = ("window_s", "load", "_times", "_caps")

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.load = 0.0
        self._times: deque[float] = deque()
        self._caps: deque[float] = deque()

    def advance(self, now: float) -> None:
        """Forget what was admitted ``window_s`` or more seconds before ``now``."""
        times, edge = self._times, now - self.window_s
        while times and times[0] <= edge:
            times.popleft()
            self.load -= self._caps.popleft()
        if not times:
            self.load = 0.0  # no float drift left behind by the subtractions

    def admit(self, now: float, cap: float, budget: float) -> bool:
        """Take ``cap`` capacity tokens at ``now`` if they fit in ``budget``."""
        if self.load + cap > budget:
            return False
        self.load += cap
        self._times.append(now)
        self._caps.append(cap)
        return True
