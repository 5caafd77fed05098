"""What the proxy needs to know about one generation API."""
from __future__ import annotations

from ..http.json_pieces import spliced
from ..http.limits import dumps
from ..spend.cost import usage_from_openai
from ..sse_tap import ChatEvents, SseTap


def openai_body(req: dict, raw: bytes, upstream_model: str, stream: bool, stream_usage: bool) -> bytes:
    """The client's bytes, unless the model name changes or a stream must be asked for usage.

    A body parsed in pieces (large) has the changed members spliced into its bytes; a small
    one is serialised again (under 128 KiB: about a millisecond at most)."""
    changes = {}
    if req.get("model") != upstream_model:
        changes["model"] = upstream_model
    if stream and stream_usage:
        so = req.get("stream_options") or {}
        if not so.get("include_usage"):
            changes["stream_options"] = {**so, "include_usage": True}
    if not changes:
        return raw
    out = spliced(raw, req, changes)
    return out if out is not None else dumps({**req, **changes})


class Api:
    """Defaults are chat completions'; an API overrides what differs."""

    name = "chat"  # the access log's ``kind``
    model_kind = "chat"  # the config ``kind`` of models that serve it
    events = ChatEvents  # how its stream's events carry usage and text

    def check(self, req: dict) -> tuple[bool, int | None]:
        """(stream, max output tokens) of a request, or a 400 naming the bad parameter."""
        raise NotImplementedError

    def count(self, counter, req: dict, limit: int | None = None) -> int:
        """Prompt tokens, offline; with ``limit`` it may stop once above it (see TokenCounter.text)."""
        raise NotImplementedError

    def needs_api(self, req: dict) -> str | None:
        """The parameter that only an API backend can serve (then routing is pinned to one), or None."""
        return None

    def upstream_body(self, req: dict, raw: bytes, upstream_model: str, stream: bool, backend) -> bytes:
        return openai_body(req, raw, upstream_model, stream, stream_usage=True)

    async def call(self, backend, body: bytes, stream: bool, req: dict):
        raise NotImplementedError

    def usage(self, parsed: dict):
        """(prompt, completion, cached) of a plain answer, or None (see usage_from_openai)."""
        return usage_from_openai(parsed.get("usage"))

    def text(self, parsed: dict) -> str:
        """The generated text of a plain answer, to count when the upstream gave no usage."""
        raise NotImplementedError

    def tap(self, req: dict) -> SseTap:
        so = req.get("stream_options") or {}
        return SseTap(strip_usage=not so.get("include_usage"), reader=self.events)
