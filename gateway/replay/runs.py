"""Run a replay's simulations and its optimum: one after another, or side by side on several CPUs.

Each simulation is independent (its own policy, memo and simulated endpoint over the same
trace), so a default replay (``break_even``, ``always_api``, ``fixed_1`` … ``fixed_4`` and
the optimum: seven passes over the trace) is spread over worker processes when the trace is
large enough for that to pay for starting them. Workers are spawned, not forked: the caller
may hold threads (a test runner, a server), and a fork copies their locks mid-use.

Usage::

    results, optimum = run_all(trace, setup, [("break_even", {}), ("fixed", {"instances": 1})],
                               horizon_s=h, optimum_interval_s=60.0, jobs=2)
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from routing_policies import build_policy

from .optimum import Optimum, hindsight_optimum
from .simulator import ReplayResult, ReplaySetup, simulate
from .trace import Trace

# below this many requests a pass takes under a second or two: starting workers would cost more
PARALLEL_MIN_REQUESTS = 200_000

Bar = Callable[[str], "object | None"]  # label -> a progress bar with update(done, total) and close(), or None


def default_jobs() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _simulate(trace: Trace, setup: ReplaySetup, name: str, params: dict, horizon_s: float,
              bar=None) -> ReplayResult:
    policy = build_policy(name, params)
    result = simulate(trace, policy, setup, horizon_s=horizon_s, params=params,
                      progress=bar.update if bar is not None else None)
    if name == "fixed":
        result.policy, result.params = f"fixed_{policy.instances}", {}
    return result


def run_all(trace: Trace, setup: ReplaySetup, runs: list[tuple[str, dict]], *, horizon_s: float,
            optimum_interval_s: float, jobs: int | None = None, bar: Bar | None = None,
            parallel_min_requests: int = PARALLEL_MIN_REQUESTS) -> tuple[list[ReplayResult], Optimum]:
    """Every run's result, in the order given, and the hindsight optimum (before ``floor_with``).

    Policies must build (``build_policy``): the caller checks that first, to name a bad one.
    With ``jobs`` > 1 and a large trace the passes run in that many worker processes and
    ``bar`` gets one label for all of them, counting finished passes: each result is the same
    either way.
    """
    jobs = default_jobs() if jobs is None else max(1, jobs)
    if jobs > 1 and len(trace) >= parallel_min_requests:
        try:
            with ProcessPoolExecutor(max_workers=min(jobs, len(runs) + 1),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                # the optimum is the longest single pass: submitted first so that it does not finish last
                optimum = pool.submit(hindsight_optimum, trace, setup, optimum_interval_s, horizon_s)
                futures = [pool.submit(_simulate, trace, setup, name, params, horizon_s) for name, params in runs]
                if bar is not None:  # one line for all the passes: a bar per worker would interleave
                    progress = bar(f"{len(futures) + 1} passes")
                    for done, _ in enumerate(as_completed([optimum, *futures]), 1):
                        progress.update(done, len(futures) + 1)
                    progress.close()
                return [f.result() for f in futures], optimum.result()
        except BrokenProcessPool:
            # a worker could not start (a spawned process re-imports __main__, which a program read
            # from stdin does not have): the same passes, one after another
            pass
    results = []
    for name, params in runs:
        progress = bar(name) if bar is not None else None
        results.append(_simulate(trace, setup, name, params, horizon_s, progress))
        if progress is not None:
            progress.close()
    return results, hindsight_optimum(trace, setup, optimum_interval_s, horizon_s)
