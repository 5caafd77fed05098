"""The demo's upstreams: the test stand-ins, answering like a real model would, sped up.

Each answer has as many completion tokens as the request's ``max_tokens`` (the driver sends
the trace's own count there) and takes a model's time to produce them, divided by the
demo's speed. The endpoint's answers also wait for its backlog: capacity tokens drain at
``instances × max_tokens_per_second`` simulated seconds, as a continuous-batching server's do.
"""
from __future__ import annotations

import contextvars
import dataclasses
import threading
from typing import Callable

from ..standins.openai_server import OpenAIStandIn
from ..standins.sagemaker_server import SageMakerStandIn

# The script of the request being answered: take_script() runs in the connection's task.
_THIS_REQUEST: contextvars.ContextVar[dict | None] = contextvars.ContextVar("demo_request_script", default=None)
_REPLY = "A stand-in answer from the gateway demo."


def _completion_tokens(req) -> int:
    body = req.json if isinstance(req.json, dict) else {}
    n = body.get("max_tokens", body.get("max_completion_tokens"))
    if n is None:
        n = (body.get("parameters") or {}).get("max_new_tokens", 16)
    return max(1, int(n)) if isinstance(n, int) else 16


class _Paced:
    """Mixin: per-request completion tokens and latency (``latency_s(tokens)`` real seconds)."""

    def latency_s(self, tokens: int) -> float:  # pragma: no cover - overridden
        return 0.0

    async def handle(self, req, conn):
        tokens = _completion_tokens(req)
        _THIS_REQUEST.set({"completion_tokens": tokens, "delay": self.latency_s(tokens), "text": _REPLY})
        await super().handle(req, conn)

    def take_script(self):
        script = super().take_script()
        changes = _THIS_REQUEST.get()
        return dataclasses.replace(script, **changes) if changes else script


class DemoOpenAI(_Paced, OpenAIStandIn):
    """An OpenAI-style API: ~0.4 s to the first token, then ~80 tokens/s (gpt-4o's order), sped up."""

    def __init__(self, speed: float, api_key: str, models):
        super().__init__(api_key=api_key, models=tuple(models))
        self.speed = speed

    def latency_s(self, tokens: int) -> float:
        return (0.4 + tokens / 80.0) / self.speed


class DemoSageMaker(_Paced, SageMakerStandIn):
    """The endpoint's runtime: ~0.2 s to the first token, ~40 tokens/s per stream, plus its backlog."""

    def __init__(self, speed: float, control, endpoint: str, capacity_tps: float, prompt_weight: float,
                 clock: Callable[[], float]):
        """``control``: the demo's control plane (``DemoControlPlane``): it says which instances serve (they
        drain the backlog), and with it this answers for the inference component as SageMaker does."""
        super().__init__(endpoints=(), region=control.region, access_key=control.access_key,
                         secret_key=control.secret_key, control=control)
        self.speed, self.capacity_tps, self.prompt_weight = speed, capacity_tps, prompt_weight
        self._instances, self._clock = control.instances_in_service, clock
        self._backlog, self._at = 0.0, None  # capacity tokens waiting, at simulated time
        self._backlog_lock = threading.Lock()

    def _queue_wait_s(self, capacity_tokens: float) -> float:
        """Simulated seconds this request waits behind the backlog (fluid queue), after adding it."""
        now, drain = self._clock(), max(1, self._instances()) * self.capacity_tps
        with self._backlog_lock:
            if self._at is not None:
                self._backlog = max(0.0, self._backlog - (now - self._at) * drain)
            self._at = now
            wait = self._backlog / drain
            self._backlog += capacity_tokens
        return wait

    async def handle(self, req, conn):
        body = req.json if isinstance(req.json, dict) else {}
        prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []) if isinstance(m, dict))
        self._pending_wait = self._queue_wait_s(_completion_tokens(req) + self.prompt_weight * prompt_chars / 4)
        await super().handle(req, conn)

    def latency_s(self, tokens: int) -> float:
        return (self._pending_wait + 0.2 + tokens / 40.0) / self.speed
