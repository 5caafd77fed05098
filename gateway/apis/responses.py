"""``POST /v1/responses``: forwarded to API backends as sent, translated for SageMaker endpoints.

Usage is read from the final response (the body, or the ``response.completed`` event):
``input_tokens`` with ``input_tokens_details.cached_tokens`` at the cached price, and
``output_tokens``, which include the reasoning tokens, at the output price.
"""
from __future__ import annotations

import orjson

from routing_policies import API

from ..backends import UpstreamReply
from ..http.errors import bad_request
from ..http.limits import dumps
from .base import Api, openai_body
from .chat import check_max_tokens, check_stream
from .responses_stream import responses_events
from .responses_translate import chat_tools, from_chat, input_messages, to_chat

_FINAL = ("response.completed", "response.incomplete", "response.failed")
# Parameters whose meaning lives in OpenAI's stored state or hosted tools.
_STATEFUL = ("previous_response_id", "conversation", "prompt", "background")


def usage_from_responses(usage) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) from a Responses ``usage`` object, or None."""
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    output = usage.get("output_tokens")
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return usage["input_tokens"], output if isinstance(output, int) else 0, cached if isinstance(cached, int) else 0


def response_text(response: dict) -> str:
    parts = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            parts.append(str(item.get("name") or "") + str(item.get("arguments") or ""))
        for part in item.get("content") or () if isinstance(item.get("content"), list) else ():
            if isinstance(part, dict):
                parts.append(str(part.get("text") or part.get("refusal") or ""))
    return "".join(parts)


class ResponsesEvents:
    """Typed events; usage only on the final ``response.*`` event, never withheld."""

    @staticmethod
    def usage(parsed):
        if parsed.get("type") not in _FINAL or not isinstance(parsed.get("response"), dict):
            return None
        return usage_from_responses(parsed["response"].get("usage"))

    @staticmethod
    def usage_only(parsed):
        return False

    @staticmethod
    def texts(parsed):
        kind = parsed.get("type")
        if kind in ("response.output_text.delta", "response.function_call_arguments.delta",
                    "response.refusal.delta", "response.reasoning_text.delta",
                    "response.reasoning_summary_text.delta") and isinstance(parsed.get("delta"), str):
            yield parsed["delta"]
        elif kind == "response.output_item.added":
            item = parsed.get("item") or {}
            if isinstance(item, dict) and item.get("type") == "function_call":
                yield str(item.get("name") or "")


class ResponsesApi(Api):
    name = "responses"
    events = ResponsesEvents

    def check(self, req):
        items = req.get("input")
        if not (isinstance(items, str) or isinstance(items, list) and all(isinstance(i, dict) for i in items)):
            raise bad_request("'input' must be a string or an array of input items.", param="input")
        if req.get("instructions") is not None and not isinstance(req["instructions"], str):
            raise bad_request("'instructions' must be a string.", param="instructions")
        tools = req.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise bad_request("'tools' must be an array of objects.", param="tools")
        for i, t in enumerate(tools or ()):
            if t.get("type") == "function" and not (isinstance(t.get("name"), str) and t["name"]):
                raise bad_request(f"'tools[{i}].name' must be a non-empty string.", param=f"tools[{i}].name")
        if req.get("text") is not None and not isinstance(req["text"], dict):
            raise bad_request("'text' must be an object.", param="text")
        if req.get("store") is not None and not isinstance(req["store"], bool):
            # "yes" or 1 read as false: served on an endpoint, which stores nothing
            raise bad_request("'store' must be a boolean.", param="store")
        return check_stream(req), check_max_tokens(req, "max_output_tokens")

    def count(self, counter, req, limit=None):
        n = counter.messages(input_messages(req, strict=False), limit)
        if limit is not None and n > limit:
            return n
        return n + counter.tools(chat_tools(req.get("tools")))

    def needs_api(self, req):
        for key in _STATEFUL:
            # given at all (even "" or {}): only the API can say what it means; an endpoint would ignore it
            if req.get(key) is not None:
                return key
        if req.get("store") is True:
            return "store"
        for i, t in enumerate(req.get("tools") or ()):
            if t.get("type") != "function":
                return f"tools[{i}].type"
        return None

    def upstream_body(self, req, raw, upstream_model, stream, backend):
        if backend.kind == API:
            return openai_body(req, raw, upstream_model, stream, stream_usage=False)  # usage is always in the last event
        return dumps(to_chat(req, upstream_model))

    async def call(self, backend, body, stream, req):
        if backend.kind == API:
            return await backend.responses(body, stream)
        reply = await backend.chat(body, stream)
        if reply.status >= 300:
            return reply
        if stream:
            return UpstreamReply(reply.status, chunks=responses_events(req, reply.chunks), close=reply.close)
        try:
            completion = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return reply  # not JSON: the proxy answers 502 as for any such body
        if not isinstance(completion, dict):
            return reply
        return UpstreamReply(reply.status, orjson.dumps(from_chat(req, completion)))

    def usage(self, parsed):
        return usage_from_responses(parsed.get("usage"))

    def text(self, parsed):
        return response_text(parsed)


RESPONSES = ResponsesApi()
