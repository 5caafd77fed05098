"""A poller for the isolation tests: how long does a small request wait while big ones run?"""
from __future__ import annotations

import threading
import time

import httpx


class Timed:
    """Polls a request from a thread while something else is in flight; keeps the slowest answer.

    ``send(client) -> status``: e.g. ``lambda c: c.get(url + "/healthz").status_code``.
    """

    def __init__(self, send):
        self.send, self.slowest, self.polls, self.failures = send, 0.0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=60) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                status = self.send(c)
                self.slowest = max(self.slowest, time.monotonic() - t0)
                self.polls += 1
                if status != 200:
                    self.failures.append(status)
                time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)


def healthz(url: str) -> Timed:
    return Timed(lambda c: c.get(f"{url}/healthz").status_code)
