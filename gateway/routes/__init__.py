"""The non-proxy routes: health and readiness, metrics (``ops``) and the admin API (``admin``)."""
from .admin import AdminRoutes
from .health import BackendHealth
from .ops import OpsRoutes

__all__ = ["AdminRoutes", "BackendHealth", "OpsRoutes"]
