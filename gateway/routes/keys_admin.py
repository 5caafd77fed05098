"""``/admin/keys`` and ``/admin/teams``: virtual keys and team budgets (admin key required).

Paths and handlers only; the logic is in ``gateway.keys``.
"""
from __future__ import annotations

import orjson

from ..http.asgi_io import read_body, send_bytes
from ..http.errors import GatewayError, bad_request
from ..keys import key_changes, team_from
from .admin import AdminRoutes

PREFIX = "/admin/keys/"


class KeyAdminRoutes:
    def __init__(self, app):
        self.app = app
        self._auth = AdminRoutes(app)

    @property
    def keys(self):
        return self.app.keys

    async def keys_collection(self, scope, receive, send) -> None:
        await self._run(scope, receive, send, self._keys_collection)

    async def key_item(self, scope, receive, send) -> None:
        await self._run(scope, receive, send, self._key_item)

    async def teams(self, scope, receive, send) -> None:
        await self._run(scope, receive, send, self._teams)

    async def _run(self, scope, receive, send, handle) -> None:
        auth = self.app.config.auth
        if not auth.admin_keys:
            # never open, not even on a keyless gateway: whoever makes keys decides who spends
            err = GatewayError(403, f"Managing keys needs an admin key: set {auth.admin_keys_env}.")
            await send_bytes(send, err.status, err.body())
            return
        if await self._auth._refused(scope, send):
            return
        try:
            status, body = await handle(scope, receive)
        except GatewayError as e:
            await send_bytes(send, e.status, e.body())
            return
        await send_bytes(send, status, orjson.dumps(body))

    async def _json(self, receive):
        raw = await read_body(receive, 64 * 1024)
        try:
            return orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise bad_request("We could not parse the JSON body of your request.", code="invalid_json") from None

    async def _keys_collection(self, scope, receive):
        if scope["method"] == "POST":
            secret, rec = await self.keys.create_key(key_changes(await self._json(receive), creating=True))
            return 201, {"key": secret, **self.keys.describe(rec)}
        await self.keys.refresh()
        return 200, {"data": [self.keys.describe(r) for _, r in sorted(self.keys.keys.items())]}

    async def _key_item(self, scope, receive):
        alias = scope["path"][len(PREFIX):]
        method = scope["method"]
        if method == "GET":
            await self.keys.refresh()
            return 200, self.keys.describe(self.keys._known(alias))
        if method == "PATCH":
            rec = await self.keys.update_key(alias, key_changes(await self._json(receive), creating=False))
            return 200, self.keys.describe(rec)
        if method == "DELETE":
            await self.keys.revoke_key(alias)
            return 200, {"alias": alias, "revoked": True}
        raise GatewayError(405, f"Method {method} not allowed.")

    async def _teams(self, scope, receive):
        if scope["method"] == "POST":
            team = team_from(await self._json(receive))
            await self.keys.put_team(team)
            return 201, self.keys.describe_team(team)
        await self.keys.refresh()
        return 200, {"data": [self.keys.describe_team(t) for _, t in sorted(self.keys.teams.items())]}
