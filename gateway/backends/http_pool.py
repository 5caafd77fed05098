"""One pooled keep-alive aiohttp session per backend.

aiohttp rather than httpx: on this kind of machine a keep-alive POST costs about
140 µs of CPU with aiohttp and 640 µs with httpx, and the gateway's budget for a
whole request is under a millisecond.
"""
from __future__ import annotations

import asyncio

import aiohttp
import aiohttp.payload

from .base import UpstreamReply, UpstreamUnavailable


# A body above this is sent 64 KiB at a time from the bytes themselves, waiting for the socket
# between pieces. Given as bytes, the unsent rest of it (all but what the kernel takes at once)
# was copied into the transport's buffer on the loop: a copy of the body held in memory, and a
# 30 MB memcpy on the loop (aiohttp's BytesIO payload copies it too, to export its buffer).
CHUNKED_SEND_BYTES = 1024 * 1024
_PIECE = 64 * 1024


class _InPieces(aiohttp.payload.Payload):
    """``bytes`` written ``_PIECE`` at a time through memoryviews: no copy of the body."""

    def __init__(self, value: bytes):
        super().__init__(value, content_type=None)
        self._size = len(value)

    async def write(self, writer) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer, content_length: int | None) -> None:
        view = memoryview(self._value)[:content_length]
        for at in range(0, len(view), _PIECE):
            await writer.write(view[at:at + _PIECE])  # waits for the socket past its high-water mark

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.decode(encoding, errors)


class HttpPool:
    def __init__(self, max_connections: int, timeout_s: float):
        self._limit = max_connections
        # An idle limit, not a total one: a healthy stream may run for many minutes, but
        # timeout_s without a byte (or without the first one) means the upstream is stuck.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, timeout_s), sock_read=timeout_s)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=60, ttl_dns_cache=300)
            self.session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, skip_auto_headers=("User-Agent",)
            )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def post(self, url: str, body: bytes, headers: dict, stream: bool) -> UpstreamReply:
        if self.session is None:
            await self.start()
        try:
            data = _InPieces(body) if len(body) > CHUNKED_SEND_BYTES else body
            resp = await self.session.post(url, data=data, headers=headers)
        except asyncio.TimeoutError:
            raise UpstreamUnavailable("upstream timed out", timeout=True) from None
        except aiohttp.ClientError as e:
            raise UpstreamUnavailable(f"upstream unreachable ({type(e).__name__})") from None
        if not stream or resp.status >= 300:
            try:
                data = await _read(resp)
            except asyncio.TimeoutError:
                resp.release()
                raise UpstreamUnavailable("upstream timed out", timeout=True) from None
            except aiohttp.ClientError as e:
                resp.release()
                raise UpstreamUnavailable(f"upstream broke off ({type(e).__name__})") from None
            resp.release()
            return UpstreamReply(resp.status, data)
        return UpstreamReply(resp.status, chunks=_iter_chunks(resp), close=resp.close)


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    """The whole answer; a large one joined in a worker thread (bytes.join drops the GIL while it
    copies: aiohttp's own read joins on the loop, 20-50 ms for 60 MB of embeddings)."""
    if (resp.content_length or 0) <= CHUNKED_SEND_BYTES:
        return await resp.read()
    chunks = [data async for data in resp.content.iter_any()]
    return await asyncio.to_thread(b"".join, chunks)


async def _iter_chunks(resp: aiohttp.ClientResponse):
    try:
        async for data in resp.content.iter_any():
            yield data
    except asyncio.TimeoutError:
        raise UpstreamUnavailable("upstream timed out mid-stream", timeout=True) from None
    except aiohttp.ClientError as e:
        raise UpstreamUnavailable(f"upstream broke off mid-stream ({type(e).__name__})") from None
    finally:
        resp.release()
