"""Operational endpoints: health, readiness, metrics, the model list."""
from __future__ import annotations

import os

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..http.asgi_io import bearer_token, send_bytes
from ..http.errors import GatewayError


# What each model kind answers (see docs/apis.md); an extra field that OpenAI clients ignore.
_ENDPOINTS = {"chat": ["/v1/chat/completions", "/v1/responses", "/v1/completions"],
              "embeddings": ["/v1/embeddings"]}


class OpsRoutes:
    def __init__(self, app):
        self.app = app

    async def healthz(self, scope, receive, send) -> None:
        await send_bytes(send, 200, b'{"status":"ok"}')

    async def readyz(self, scope, receive, send) -> None:
        app = self.app
        # A Redis outage is not a reason to stop serving: deltas are buffered and land later.
        # Taking every replica out of the load balancer for it would turn it into an outage.
        # Nor is an endpoint nobody could confirm: the API serves; the state says what is known.
        ready = app.started
        body = {"ready": ready, "state_store": app.store.kind, "state_store_healthy": app.store.healthy,
                "endpoints": {n: s.as_dict() for n, s in app.endpoints.items()}}
        await send_bytes(send, 200 if ready else 503, orjson.dumps(body))

    async def metrics(self, scope, receive, send) -> None:
        status, body, content_type = self.scrape(bearer_token(scope))
        await send_bytes(send, status, body, content_type=(b"content-type", content_type))

    def scrape(self, token: str | None) -> tuple[int, bytes, bytes]:
        """(status, body, content type) of a /metrics request that carries ``token``, on either port."""
        auth = self.app.config.auth
        if auth.metrics_keys and token not in auth.metrics_keys | auth.admin_keys:
            return 401, GatewayError(401, "Invalid or missing metrics key.", code="invalid_api_key").body(), \
                b"application/json"
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            data = generate_latest(registry)
        else:
            data = generate_latest(self.app.registry)
        return 200, data, CONTENT_TYPE_LATEST.encode()

    async def models(self, scope, receive, send) -> None:
        cfg = self.app.config
        try:
            # the keys the request path takes: a virtual key was refused here (the SDK's models.list())
            grant = self.app.keys.authenticate(bearer_token(scope))
        except GatewayError as err:
            await send_bytes(send, err.status, err.body())
            return
        allowed = grant.record.models if grant is not None else None
        data = []
        for model in cfg.models.values():
            if allowed is not None and model.name not in allowed:
                continue  # a key limited to some models is shown those
            data.append({"id": model.name, "object": "model", "created": 0, "owned_by": "gateway",
                         "endpoints": _ENDPOINTS[model.kind]})
            if cfg.routing.allow_pinning:
                for route in model.routes:
                    data.append({"id": f"{route.backend}/{model.name}", "object": "model", "created": 0,
                                 "owned_by": route.backend, "endpoints": _ENDPOINTS[model.kind]})
        await send_bytes(send, 200, orjson.dumps({"object": "list", "data": data}))
