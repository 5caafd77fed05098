"""Replays a trace through the gateway with the official ``openai`` client, sped up.

Arrivals are the trace's own (looped when the demo outlasts it), thinned at random to the
wanted volume: ``rate_per_hour`` simulated requests an hour, times ``shape(progress)``
(progress 0 → 1 over the demo), so that the volume can cross the break-even line and fall
back. Each request carries the trace's prompt length (as text) and its completion length (as
``max_tokens``, which the stand-ins answer with). What the gateway says about each request
(backend, reason, ``x-gateway-cost-usd``) is kept in ``outcomes``.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Iterator

import openai

from ..replay.trace import Trace

MAX_IN_FLIGHT = 256  # beyond this the driver falls behind the trace rather than pile up sockets


@dataclass(frozen=True)
class Outcome:
    sim_t: float  # simulated seconds since the demo began
    status: int  # HTTP status; 0: no answer (connection error)
    backend: str
    reason: str
    cost_usd: Decimal | None  # x-gateway-cost-usd
    prompt_tokens: int
    completion_tokens: int


def default_shape(progress: float) -> float:
    """Full volume for the first 60 % of the demo, a tenth of it after: scale up, then down."""
    return 1.0 if progress < 0.6 else 0.1


def schedule(trace: Trace, rate_per_hour: float, total_sim_s: float, shape: Callable[[float], float] = default_shape,
             seed: int = 1) -> Iterator[tuple[float, int, int]]:
    """(simulated seconds from the start, prompt tokens, completion tokens), in order."""
    if not len(trace) or trace.span_s <= 0:
        return
    rng = random.Random(seed)
    t0, span = trace.arrival_s[0], trace.span_s
    trace_rate = len(trace) / span * 3600
    offset = 0.0
    while True:
        for a, p, c in zip(trace.arrival_s, trace.prompt_tokens, trace.completion_tokens):
            t = offset + (a - t0)
            if t >= total_sim_s:
                return
            if rng.random() < min(1.0, rate_per_hour * shape(t / total_sim_s) / trace_rate):
                yield t, int(p), int(c)
        offset += span + 1.0


class TrafficDriver:
    """``await driver.run(stop)``: sends the schedule on time (real = simulated / speed) until done or stopped."""

    def __init__(self, base_url: str, api_key: str, model: str, speed: float,
                 arrivals: Iterator[tuple[float, int, int]]):
        self.model, self.speed, self._arrivals = model, speed, arrivals
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
        self.outcomes: list[Outcome] = []
        self.recent: deque[Outcome] = deque(maxlen=8)
        self.sent = 0
        self.behind_s = 0.0  # how late the last request left, real seconds (the machine is too slow)
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def run(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        tasks: set[asyncio.Task] = set()
        try:
            for sim_t, prompt, completion in self._arrivals:
                delay = start + sim_t / self.speed - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                if stop.is_set():
                    break
                self.behind_s = max(0.0, -delay)
                await self._in_flight.acquire()
                task = asyncio.ensure_future(self._one(sim_t, prompt, completion))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=30)
        finally:
            for task in tasks:
                task.cancel()
            await self.client.close()

    async def _one(self, sim_t: float, prompt: int, completion: int) -> None:
        self.sent += 1
        try:
            raw = await self.client.chat.completions.with_raw_response.create(
                model=self.model, max_tokens=max(1, completion),
                messages=[{"role": "user", "content": "the" + " the" * max(0, prompt - 8)}],
            )
            h = raw.headers
            cost = h.get("x-gateway-cost-usd")
            out = Outcome(sim_t, raw.status_code, h.get("x-gateway-backend", ""), h.get("x-gateway-route-reason", ""),
                          Decimal(cost) if cost is not None else None, int(h.get("x-gateway-prompt-tokens") or 0),
                          int(h.get("x-gateway-completion-tokens") or 0))
        except openai.APIStatusError as e:
            h = e.response.headers
            out = Outcome(sim_t, e.status_code, h.get("x-gateway-backend", ""), h.get("x-gateway-route-reason", ""),
                          Decimal(h["x-gateway-cost-usd"]) if "x-gateway-cost-usd" in h else None, 0, 0)
        except openai.APIConnectionError as e:  # no HTTP answer: say what the transport saw
            cause = e.__cause__
            out = Outcome(sim_t, 0, "", f"no answer: {type(cause or e).__name__}", None, 0, 0)
        finally:
            self._in_flight.release()
        self.outcomes.append(out)
        self.recent.append(out)

    def by_backend(self) -> dict[str, dict]:
        """Requests, per-request cost sum (USD) and reasons, per backend, from what the gateway answered."""
        out: dict[str, dict] = {}
        for o in self.outcomes:
            row = out.setdefault(o.backend or "(none)", {"requests": 0, "ok": 0, "cost_usd": Decimal(0),
                                                          "reasons": Counter()})
            row["requests"] += 1
            row["ok"] += 200 <= o.status < 300
            row["cost_usd"] += o.cost_usd or 0
            row["reasons"][o.reason] += 1
        return out
