"""Small raw-ASGI helpers for the hot path (no framework objects per request)."""
from __future__ import annotations

import asyncio

from .errors import GatewayError

MAX_BODY_BYTES = 32 * 1024 * 1024
# Above this the pieces are joined in a worker thread: bytes.join drops the GIL while it copies,
# and 30 MB of copying (page faults included) held the loop for up to 30 ms.
JOIN_OFF_LOOP_BYTES = 1024 * 1024
SEND_PIECE_BYTES = 256 * 1024

JSON = (b"content-type", b"application/json")
TIMED_OUT = "gateway.read_timed_out"  # set in the ASGI scope when the body's deadline passed (http.protocol)


async def read_body(receive, limit: int = MAX_BODY_BYTES) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise GatewayError(400, "client disconnected before the request body was complete")
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, "client disconnected before the request body was complete")
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise GatewayError(413, f"request body is larger than {limit} bytes")
        chunks.append(part)
    if size > JOIN_OFF_LOOP_BYTES:
        return await asyncio.to_thread(b"".join, chunks)
    return b"".join(chunks)


async def send_bytes(send, status: int, body: bytes, headers: list | None = None, content_type=JSON) -> None:
    h = [content_type, (b"content-length", str(len(body)).encode())]
    if headers:
        h.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": h})
    if len(body) <= SEND_PIECE_BYTES:
        await send({"type": "http.response.body", "body": body})
        return
    # a large answer in pieces, each awaited (the server waits for the socket past its high-water
    # mark): written whole, the unsent rest was copied into the transport's buffer on the loop
    view = memoryview(body)
    for at in range(0, len(body), SEND_PIECE_BYTES):
        await send({"type": "http.response.body", "body": bytes(view[at:at + SEND_PIECE_BYTES]),
                    "more_body": at + SEND_PIECE_BYTES < len(body)})


async def send_error(send, err: GatewayError, headers: list | None = None) -> None:
    await send_bytes(send, err.status, err.body(), headers)


def content_length(scope) -> int | None:
    value = header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def header(scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


def bearer_token(scope) -> str | None:
    """The key from ``Authorization: Bearer`` (or ``api-key``, as Azure-style clients send)."""
    value = header(scope, b"authorization")
    if value is not None:
        scheme, _, token = value.decode("latin-1").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    value = header(scope, b"api-key")
    return value.decode("latin-1") if value is not None else None
