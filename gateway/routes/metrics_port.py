"""``/metrics`` on a port of its own (``metrics.listen``), served by the same process.

Prometheus (or a ServiceMonitor) can then reach the metrics on an address that is not the
one apps call, and the main port can stop answering them (``metrics.on_main_port: false``).
aiohttp's low-level server is already a dependency (the upstream client) and is imported
only when this is configured, so the default start-up carries none of it.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("gateway")


class MetricsPort:
    """``await MetricsPort(scrape, "127.0.0.1", 9464).start()``; ``await close()`` at shutdown.

    ``scrape(token)`` gives (status, body, content type), as ``OpsRoutes.scrape`` does.
    """

    def __init__(self, scrape, host: str, port: int):
        self.scrape, self.host, self.port = scrape, host, port
        self._server = None

    async def start(self) -> None:
        import asyncio

        from aiohttp import web

        async def handle(request):
            if request.path != "/metrics":
                return web.Response(status=404, content_type="application/json",
                                    text='{"error":{"message":"Only /metrics is served on this port.",'
                                         '"type":"invalid_request_error","param":null,"code":null}}')
            if request.method not in ("GET", "HEAD"):
                return web.Response(status=405, headers={"Allow": "GET"})
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            status, body, content_type = self.scrape(token.strip() if scheme.lower() == "bearer" else None)
            return web.Response(status=status, body=body, headers={"Content-Type": content_type.decode()})

        loop = asyncio.get_running_loop()
        try:
            # several workers (--workers: PROMETHEUS_MULTIPROC_DIR set) share the port; any of
            # them answers with every worker's samples merged
            self._server = await loop.create_server(web.Server(handle), self.host, self.port,
                                                    reuse_port=bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")))
        except OSError as e:
            raise RuntimeError(f"cannot listen on metrics.listen {self.host}:{self.port}: {e.strerror or e}") from None
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
