"""Live routing: the policy's inputs from config and shared state, the per-request decision
(``LiveRouting``) and the periodic capacity decision (``CapacityPlanner``)."""
from .live import LiveRouting
from .planner import CapacityPlanner

__all__ = ["CapacityPlanner", "LiveRouting"]
