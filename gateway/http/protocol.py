"""uvicorn's httptools protocol with deadlines for reading a request.

uvicorn times out idle keep-alive connections but not a request that is arriving: a
client sending its headers or body a byte at a time holds a connection (and, for the
body, a request task) for as long as it likes. Here a request's headers must be complete
``server.header_timeout_s`` after its first byte (or after the connection opened) and its
body ``server.body_timeout_s`` after its headers; past that the client gets an
OpenAI-shaped 408 and the connection is closed. The limits are read from the running
app's config on every request, so a reload applies them.

Nor does uvicorn's httptools protocol cap a request's head: a 20 MB header line was read
whole (1.3 s, growing the URL or value by concatenation on the loop) and half a million
headers were all listed. Here a head still unfinished after ``MAX_HEAD_BYTES`` gets an
OpenAI-shaped 431 and the connection is closed (uvicorn's h11 protocol caps it at 16 KiB).
It is counted in whole reads that hold no end of a head or body, so a head that ends
within one read (up to 256 KiB) passes: the bound is 64 KiB plus one read.

    uvicorn.run(app, http=DeadlineHttpToolsProtocol, ...)
"""
from __future__ import annotations

import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .asgi_io import TIMED_OUT
from ..config import ServerConfig
from .errors import GatewayError

log = logging.getLogger("gateway")
_DEFAULTS = ServerConfig()
# Request line and headers: nginx's default is 32 KiB in all, Node's 16 KiB; keys and cookies fit.
MAX_HEAD_BYTES = 64 * 1024


def _gateway(app):
    """The gateway app (it has ``config.server``) inside whatever middleware uvicorn wrapped around it."""
    for _ in range(8):
        if isinstance(getattr(getattr(app, "config", None), "server", None), ServerConfig):
            return app
        app = getattr(app, "app", None)
    return None


def _server_config(app) -> ServerConfig:
    gw = _gateway(app)
    return gw.config.server if gw is not None else _DEFAULTS


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._read_deadline = None
        self._head_bytes = 0  # of the request whose headers are arriving; None once they are complete
        self._head_ended = False
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        in_head, self._head_ended = self._head_bytes is not None, False
        super().data_received(data)
        # counted after the parser saw it, and only a piece that was all head: one that ended a
        # head or a body may carry the rest of a request (and the start of the next one)
        if in_head and not self._head_ended and self._head_bytes is not None:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._head_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_deadline is None:  # a keep-alive connection's next request
            self._arm("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._head_bytes, self._head_ended = None, True
        self._disarm()
        self._arm("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_bytes = 0
        self._disarm()

    def _head_too_large(self) -> None:
        self._disarm()
        log.info("closed a connection from %s: request head over %d bytes", self._peer(), MAX_HEAD_BYTES)
        gw = _gateway(self.app)
        if gw is not None and hasattr(gw, "metrics"):
            gw.metrics.route("none", "").status(431).inc()  # no handler runs for it: counted here
        body = GatewayError(431, f"The request line and headers exceed {MAX_HEAD_BYTES // 1024} KiB.",
                            code="request_header_fields_too_large").body()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        cfg = _server_config(self.app)
        seconds = cfg.header_timeout_s if phase == "headers" else cfg.body_timeout_s
        self._read_deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _expired(self, phase: str, seconds: float) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        # INFO, not WARNING: a flood of slow clients must not flood the log; the count is in /metrics
        log.info("closed a connection from %s: request %s not complete after %g s", self._peer(), phase, seconds)
        cycle = self.cycle if phase == "body" else None
        gw = _gateway(self.app)
        if cycle is None and gw is not None and hasattr(gw, "metrics"):
            # no handler runs for a request whose headers never came: counted here (a body
            # timeout is counted by the handler that was waiting for it)
            gw.metrics.route("none", "").status(408).inc()
        if cycle is not None:
            cycle.scope[TIMED_OUT] = phase  # the handler waiting for the body records a 408
        if cycle is None or not cycle.response_started:
            err = GatewayError(408, f"The request's {phase} did not arrive within {seconds:g} s.",
                               code="request_timeout")
            body = err.body()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: " + str(len(body)).encode()
                                 + b"\r\n\r\n" + body)
        self.transport.close()  # the waiting handler sees a disconnect; what it sends then goes nowhere

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "?"
