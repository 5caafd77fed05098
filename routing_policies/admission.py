"""When an endpoint takes one more request: the fluid backlog of a continuous-batching server.

A continuous-batching server (TGI, vLLM, LMI) does not serve requests one 10-s slot at a
time: it holds many in flight and spends its throughput on all of them, a long decode
over many seconds. What it can take is bounded by the *work it already holds*: the
capacity tokens (completion + ``prompt_token_weight`` × prompt) admitted and not yet
processed, which drain at ``instances × max_tokens_per_second`` while there is any.

Rule (the replay's simulator, its hindsight optimum and the live router all use it): the
endpoint takes a request while that backlog is below ``instances × max_tokens_per_second
× queue_s``, i.e. while everything it holds can be finished within ``queue_s`` seconds at
full throughput. Work-conserving service means every admitted request is done within
about ``queue_s`` plus its own size ÷ throughput. docs/capacity-model.md says why this
replaced charging each request's whole size to the 10 s it arrived in.

Usage::

    backlog = FluidBacklog()
    backlog.advance(now_s, drain_tps=instances * spec.max_tokens_per_second)
    if backlog.tokens < limit:          # limit = instances × tokens/s × queue_s
        backlog.add(capacity_tokens)
"""
from __future__ import annotations


class FluidBacklog:
    """Capacity tokens an endpoint holds (in flight or queued) at time ``at_s``."""

    __slots__ = ("tokens", "at_s")

    def __init__(self, tokens: float = 0.0, at_s: float = 0.0):
        self.tokens = tokens
        self.at_s = at_s

    def advance(self, now_s: float, drain_tps: float) -> float:
        """Drain what ``drain_tps`` processed since the last call; returns the backlog."""
        dt = now_s - self.at_s
        if dt > 0:
            self.tokens = max(0.0, self.tokens - drain_tps * dt)
            self.at_s = now_s
        return self.tokens

    def add(self, capacity_tokens: float) -> None:
        self.tokens += capacity_tokens


def backlog_limit(instances: int, tokens_per_second: float, queue_s: float) -> float:
    """Backlog (capacity tokens) below which the endpoint still takes requests."""
    return instances * tokens_per_second * queue_s


def has_room(backlog_tokens: float, instances: int, tokens_per_second: float, queue_s: float) -> bool:
    return instances > 0 and backlog_tokens < backlog_limit(instances, tokens_per_second, queue_s)
