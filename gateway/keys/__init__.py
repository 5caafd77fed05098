"""Virtual keys, teams, budgets and rate limits (admin API in ``gateway.routes.keys_admin``)."""
from .records import key_changes, team_from
from .service import Grant, KeyService, LimitError

__all__ = ["Grant", "KeyService", "LimitError", "key_changes", "team_from"]
