"""``GET /admin/routing`` and ``POST /admin/reload``: what the router sees and why.

Admin keys come from ``auth.admin_keys_env``. With no keys configured at all the
gateway is open and so is this view; with gateway keys but no admin keys it is
closed, so that an app's key never reads the operator's numbers.
"""
from __future__ import annotations

from decimal import Decimal

import orjson

from ..spend.accounting import API_ONLY
from ..http.asgi_io import bearer_token, send_bytes
from ..spend.cost import display_usd
from ..http.errors import GatewayError
from ..state.volume import WINDOWS_S


class AdminRoutes:
    def __init__(self, app):
        self.app = app

    def _authorize(self, scope) -> None:
        auth = self.app.config.auth
        if not auth.admin_keys and not auth.keys:
            return
        if not auth.admin_keys:
            raise GatewayError(403, "The admin API is disabled: set admin keys (auth.admin_keys_env).")
        if bearer_token(scope) not in auth.admin_keys:
            raise GatewayError(401, "Invalid or missing admin key.", code="invalid_api_key")

    async def routing(self, scope, receive, send) -> None:
        if await self._refused(scope, send):
            return
        await send_bytes(send, 200, orjson.dumps(await self.snapshot(), option=orjson.OPT_NON_STR_KEYS))

    async def reload(self, scope, receive, send) -> None:
        if await self._refused(scope, send):
            return
        ok, message = self.app.reload_config()
        await send_bytes(send, 200 if ok else 400, orjson.dumps({"reloaded": ok, "message": message}))

    async def _refused(self, scope, send) -> bool:
        """Answers an unauthorised call and says so."""
        try:
            self._authorize(scope)
        except GatewayError as e:
            await send_bytes(send, e.status, e.body())
            return True
        return False

    async def snapshot(self) -> dict:
        app = self.app
        now = app.clock()
        volume = app.store.volume()
        traffic = {}
        for model in app.config.models.values():
            traffic[model.name] = {}
            for seconds in WINDOWS_S:
                w = volume.window(now, seconds, model=model.name)
                traffic[model.name][f"{seconds}s"] = {
                    "requests": w.requests,
                    "prompt_tokens": w.prompt_tokens,
                    "completion_tokens": w.completion_tokens,
                    "requests_per_hour": w.per_hour(w.requests),
                    "prompt_tokens_per_hour": w.per_hour(w.prompt_tokens),
                    "completion_tokens_per_hour": w.per_hour(w.completion_tokens),
                }
        endpoints = {}
        for name, status in app.endpoints.items():
            plan = app.planner.plans.get(name)
            decision = plan.decision if plan else None
            endpoints[name] = {
                **status.as_dict(),  # state (unconfirmed / assumed / confirmed), status, reason, counts
                "backlog_capacity_tokens": app.live.endpoint_backlog_tokens.get(name, 0.0),
                "capacity_tokens_per_second": status.instances_in_service
                * app.config.backends[name].max_tokens_per_second,
                "dry_run": app.config.routing.dry_run,
                "recommendation": None if decision is None else {
                    "instances": decision.instances,
                    "reason": decision.reason,
                    "break_even_requests_per_hour": decision.break_even_requests_per_hour,
                    "endpoint_never_pays_off": decision.break_even_requests_per_hour is None
                    and decision.reason == "endpoint_never_pays_off",
                    "expected_requests_per_hour": decision.expected_requests_per_hour,
                    "details": dict(decision.details),
                    "decided_at": plan.decided_at,
                },
                "last_actuation": app.last_actuation.get(name),
            }
        totals = await app.store.spend_totals()
        actual = sum((usd for (backend, _), usd in totals.items() if backend != API_ONLY), Decimal(0))
        api_only = sum((usd for (backend, _), usd in totals.items() if backend == API_ONLY), Decimal(0))
        return {
            "policy": app.config.routing.policy,
            "policy_params": dict(app.config.routing.params),
            "state_store": {"kind": app.store.kind, "healthy": app.store.healthy},
            "volume": traffic,
            "endpoints": endpoints,
            "spend_usd": {f"{b}/{m}" if m else b: display_usd(usd) for (b, m), usd in sorted(totals.items())
                          if b != API_ONLY},
            "savings": {
                "actual_spend_usd": display_usd(actual),
                "api_only_spend_usd": display_usd(api_only),
                "saved_usd": display_usd(api_only - actual),
                "note": "api_only: the same requests priced at each model's API; actual: API tokens "
                        "plus endpoint instance time (shared ledger, since the ledger began)",
            },
        }
