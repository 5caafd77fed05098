"""``GET /`` (the page, no figures in it) and ``GET /status.json`` (the figures, admin key).

The page is static and holds nothing secret, so a browser can load it without a header;
the figures it fetches are the operator's, so ``/status.json`` answers to the admin key
exactly as ``/admin/routing`` does (open only when no key of any kind is configured). The
page sends the key as ``Authorization: Bearer`` when it was given in the URL fragment
(``/#key=...``, which browsers never send to the server) or typed into the page.
"""
from __future__ import annotations

import os

import orjson

from ..http.asgi_io import send_bytes
from ..routes.admin import AdminRoutes
from .history import StatusHistory
from .snapshot import status_document

_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
_HTML = (b"content-type", b"text/html; charset=utf-8")
# No script, style, image or connection from anywhere but this page and this gateway.
_CSP = (b"content-security-policy", b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class StatusRoutes:
    def __init__(self, app):
        self.app = app
        self.history = StatusHistory(app)
        self._admin = AdminRoutes(app)
        with open(_PAGE, "rb") as f:
            self._html = f.read()

    async def page(self, scope, receive, send) -> None:
        await send_bytes(send, 200, self._html, [_CSP, (b"cache-control", b"no-store")], content_type=_HTML)

    async def data(self, scope, receive, send) -> None:
        if await self._admin._refused(scope, send):
            return
        body = orjson.dumps(await status_document(self.app), option=orjson.OPT_NON_STR_KEYS)
        await send_bytes(send, 200, body, [(b"cache-control", b"no-store")])
