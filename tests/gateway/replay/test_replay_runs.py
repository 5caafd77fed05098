"""The replay's passes side by side in worker processes give what they give one after another."""
from __future__ import annotations

import dataclasses

from gateway.config import load_config
from gateway.replay import bundled
from gateway.replay.runs import run_all
from gateway.replay.simulator import default_horizon, setup_from_config
from gateway.replay.trace import read_trace
from routing_policies import TokenPrices

RUNS = [("break_even", {}), ("always_api", {}), ("fixed", {"instances": 1}), ("fixed", {"instances": 2})]


def test_parallel_passes_equal_the_sequential_ones():
    setup = setup_from_config(load_config(bundled.BUNDLED_CONFIG))
    setup = dataclasses.replace(setup, api_prices=TokenPrices(2.5e-6, 10e-6))  # gpt-4o: instances start
    trace = read_trace(bundled.trace_path("azure-code"))
    horizon = default_horizon(trace, 60.0)
    one, opt_one = run_all(trace, setup, RUNS, horizon_s=horizon, optimum_interval_s=60.0, jobs=1)
    two, opt_two = run_all(trace, setup, RUNS, horizon_s=horizon, optimum_interval_s=60.0, jobs=2,
                           parallel_min_requests=0)
    assert [r.policy for r in two] == ["break_even", "always_api", "fixed_1", "fixed_2"]
    for a, b in zip(one, two, strict=True):
        assert dataclasses.replace(a, elapsed_s=0.0) == dataclasses.replace(b, elapsed_s=0.0)
    assert opt_one == opt_two
    assert sum(r.instances_started for r in two) > 0  # the passes did something to compare
