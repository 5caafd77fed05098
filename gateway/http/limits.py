"""Bounds on the work one request can cost the event loop.

Every request shares one event loop per process: a CPU-heavy step on it (tokenizing above
all) delays every other request, ``/healthz`` included. Work that grows with the body runs
in a worker thread once the body is larger than ``INLINE_WORK_MAX_BYTES`` (tiktoken releases
the GIL; Python-level walks give it back every ``sys.getswitchinterval()``, 5 ms), and
JSON that cannot be written back out is refused with a 400 naming the parameter.
"""
from __future__ import annotations

import asyncio

import orjson

from .errors import GatewayError, bad_request

# Below this, counting costs well under a millisecond (a 16 KiB single word: ~2.5 ms at worst,
# measured on the 2-vCPU CI machine): cheaper inline than the ~50 us of a thread hop.
INLINE_WORK_MAX_BYTES = 16 * 1024
# orjson parses 1,024 levels but writes only 254: a body deeper than that cannot be rewritten
# (model name, stream_options) and is refused rather than crashing the serializer.
MAX_WRITE_DEPTH = 254


async def off_loop(size: int, fn, *args):
    """``fn(*args)`` inline for small inputs (``size`` bytes), in a worker thread for large ones."""
    if size <= INLINE_WORK_MAX_BYTES:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def depth(value, stop: int = MAX_WRITE_DEPTH + 1) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion; stops at ``stop``."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if deepest >= stop:
            return deepest
        todo.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def too_deep(req: dict):
    """The 400 for a request object too deep to serialise, naming its deepest parameter."""
    param = max(req, key=lambda k: depth(req[k]), default=None)
    return bad_request(f"'{param}' is nested too deeply: a request may be at most {MAX_WRITE_DEPTH} levels "
                       "of JSON deep.", param=param, code="nested_too_deep")


def dumps(req: dict) -> bytes:
    """``orjson.dumps`` of a request object, or the 400 that says which parameter is too deep."""
    try:
        return orjson.dumps(req)
    except orjson.JSONEncodeError:
        if depth(req) > MAX_WRITE_DEPTH:
            raise too_deep(req) from None
        raise


LARGE_BODY_BYTES = 1024 * 1024


class LargeBodyGate:
    """At most ``limit`` requests with a body over ``LARGE_BODY_BYTES`` handled at once.

    A body costs up to about four times its size while it is handled (the bytes, the parsed
    object, a rewritten copy, the upstream's buffer): eight 31 MB bodies once took a worker to
    1.1 GB. Past the limit the request is refused at once with a 503 (the SDKs retry it)
    rather than queued, so its bytes are never read.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def admit(self) -> None:
        if self.held >= self.limit:
            raise GatewayError(503, f"Too many large requests in flight (over {LARGE_BODY_BYTES // 1024} KiB each, "
                               f"{self.limit} at once); retry shortly.", type="server_error", code="server_busy")
        self.held += 1

    def release(self) -> None:
        self.held -= 1
