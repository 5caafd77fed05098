"""``GET /``: a self-contained status page, and ``GET /status.json``, the figures it draws.

    status = StatusRoutes(app)          # app: the GatewayApp (config, store, planner, endpoints)
    await status.history.sample(now)    # from the app's tick: one point every SAMPLE_S, an hour kept
    routes[("GET", "/")] = status.page
    routes[("GET", "/status.json")] = status.data
"""
from .history import SAMPLE_S, StatusHistory
from .routes import StatusRoutes

__all__ = ["SAMPLE_S", "StatusHistory", "StatusRoutes"]
