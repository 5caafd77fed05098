"""The demo's clock: epoch seconds that run ``speed`` times faster than the wall clock.

The gateway, the endpoint's billing and start-up, and the traffic all read it, so that a
trace replayed 60 times faster looks to the break-even model like traffic at its real rate.
"""
from __future__ import annotations

import time


class SpedUpClock:
    """``clock()`` → simulated epoch seconds; starts at the real time it is made::

        clock = SpedUpClock(60)      # one real second is one simulated minute
        clock.real_s(360)            # 6.0: a 6-min start-up takes 6 real seconds
    """

    def __init__(self, speed: float):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self.start_epoch, self._mono0 = time.time(), time.monotonic()

    def __call__(self) -> float:
        return self.start_epoch + (time.monotonic() - self._mono0) * self.speed

    def elapsed_s(self) -> float:
        """Simulated seconds since the clock was made."""
        return (time.monotonic() - self._mono0) * self.speed

    def real_s(self, simulated_s: float) -> float:
        return simulated_s / self.speed
