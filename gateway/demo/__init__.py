"""``gateway demo``: see routing, capacity decisions and spend in a minute, with no cloud account.

    from gateway.demo import DemoOptions, run_demo
    summary = run_demo(DemoOptions(minutes=1, speed=120))
"""
from .run import DemoError, DemoOptions, run_demo

__all__ = ["DemoError", "DemoOptions", "run_demo"]
