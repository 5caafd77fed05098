"""Pure routing decisions (no I/O): see ``base`` for the interface.

Importing the package registers every built-in policy by name.
"""
from . import break_even, simple  # noqa: F401  (registers policies)
from .base import (
    API,
    ENDPOINT,
    BackendView,
    CapacityContext,
    CapacityDecision,
    Decision,
    EndpointSpec,
    LoadMoments,
    RequestContext,
    RoutingPolicy,
    TokenPrices,
    VolumeWindow,
    build_policy,
    policy_names,
    register,
)

__all__ = [
    "API", "ENDPOINT", "BackendView", "CapacityContext", "CapacityDecision", "Decision",
    "EndpointSpec", "LoadMoments", "RequestContext", "RoutingPolicy", "TokenPrices", "VolumeWindow",
    "build_policy", "policy_names", "register",
]
