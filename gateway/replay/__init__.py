"""Offline replay: traces through the live routing policies on a simulated clock.

* ``trace`` — read/write ``arrival_s,prompt_tokens,completion_tokens`` CSV (gzipped or not)
* ``synth`` — multi-day traces from an hourly volume shape and a real token mix
* ``simulator`` — simulated endpoint (capacity, start-up, per-second billing) + policy calls
* ``optimum`` — the hindsight optimum (dynamic programming over instance counts)
* ``report`` / ``cli`` — ``gateway replay`` and ``gateway make-trace``

Results and method: docs/replay-results.md.
"""
