"""Bounds on the work one request can cost the event loop.

Every request shares one event loop per process: a CPU-heavy step on it (tokenizing above
all) delays every other request, ``/healthz`` included. Work that grows with the body runs
in a worker thread once the body is larger than ``INLINE_WORK_MAX_BYTES`` (tiktoken releases
the GIL; Python-level walks give it back every ``sys.getswitchinterval()``, 5 ms), and
JSON that cannot be written back out is refused with a 400 naming the parameter.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from .errors import GatewayError, bad_request

# Below this, counting costs well under a millisecond (a 16 KiB single word: ~2.5 ms at worst,
# measured on the 2-vCPU CI machine): cheaper inline than the ~50 us of a thread hop.
INLINE_WORK_MAX_BYTES = 16 * 1024
# orjson parses 1,024 levels but writes only 254: a body deeper than that cannot be rewritten
# (model name, stream_options) and is refused rather than crashing the serializer.
MAX_WRITE_DEPTH = 254


async def off_loop(size: int, fn, *args):
    """``fn(*args)`` inline for small inputs (``size`` bytes), in a worker thread for larger
    ones, and in the one large-body thread (``in_large_worker``) above ``LARGE_BODY_BYTES``."""
    if size <= INLINE_WORK_MAX_BYTES:
        return fn(*args)
    if size > LARGE_BODY_BYTES:
        return await in_large_worker(fn, *args)
    return await asyncio.to_thread(fn, *args)


_large_worker: ThreadPoolExecutor | None = None


async def in_large_worker(fn, *args):
    """``fn(*args)`` in the process's one thread for large-body work (parse, check, count,
    rewrite, free), created on first use.

    One thread, not a pool: Python work holds the GIL, so more threads would not finish
    sooner, but each of them would compete with the event loop for it (with three bodies in
    three threads, a small request waited up to 270 ms; the loop waits at most a switch
    interval, 5 ms, for one). Large bodies are few at once (``LargeBodyGate``); they queue here.
    """
    global _large_worker
    if _large_worker is None:
        _large_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-large-body")
    return await asyncio.get_running_loop().run_in_executor(_large_worker, fn, *args)


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

    A body costs about three times its size while it is handled when it is text (the bytes
    arriving and joined, the parsed text; a rewrite adds a copy), up to ~15x when it is a
    million tiny messages (Python objects): docs/reliability.md has the figures. Past the
    limit the request is refused at once with a 503 (the SDKs retry it) rather than queued,
    so its bytes are never read.
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


class GcPause:
    """The cyclic garbage collector paused while large parsed bodies are alive.

    A full collection visits every item of every live list: with a million parsed messages
    alive it holds the GIL for 100-250 ms (measured), in whatever thread allocates, and the
    event loop waits that long. Reference counting still frees everything without cycles
    as usual; the collector runs again once the last large body is freed, or after
    ``max_pause_s`` of large bodies back to back, whichever comes first (then a pass may stall).
    Process-wide, as the collector is: one instance per process (``GC_PAUSE``).
    """

    def __init__(self, max_pause_s: float = 60.0):
        self.max_pause_s = max_pause_s
        self.held = 0
        self._since: float | None = None  # when this pause began; None when not paused by us

    def hold(self) -> None:
        self.held += 1
        if self._since is None and self.held == 1 and gc.isenabled():
            gc.disable()
            self._since = time.monotonic()
        elif self._since is not None and time.monotonic() - self._since > self.max_pause_s:
            gc.enable()  # a long run of large bodies: collect as usual until they are all gone
            self._since = float("inf")

    def release(self) -> None:
        self.held -= 1
        if self.held == 0 and self._since is not None:
            gc.enable()
            self._since = None


GC_PAUSE = GcPause()


def return_large_buffers_to_the_os(threshold: int = LARGE_BODY_BYTES) -> None:
    """Have glibc map every allocation of ``threshold`` bytes or more on its own (mmap), so
    that a large body's buffers go back to the OS when freed. By default glibc raises this
    threshold after the first large free (up to 32 MB) and then serves bodies from its heaps,
    which keep the memory: after eight 31 MB bodies RSS stayed at 584 MB instead of ~100.
    A fixed threshold turns that off. No-op where libc is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
