"""``POST /v1/chat/completions``: every backend speaks it (SageMaker through its codec)."""
from __future__ import annotations

from ..http.errors import bad_request
from .base import Api


def check_chat(req: dict) -> tuple[bool, int | None]:
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array.", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"'messages[{i}]' must be an object with a 'role'.", param=f"messages[{i}]")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"'messages[{i}].content' must be a string or an array.", param=f"messages[{i}].content")
        for key, kind, what in (("name", str, "a string"), ("tool_calls", list, "an array"),
                                ("function_call", dict, "an object")):
            if m.get(key) is not None and not isinstance(m[key], kind):
                raise bad_request(f"'messages[{i}].{key}' must be {what}.", param=f"messages[{i}].{key}")
    for key in ("tools", "functions"):
        value = req.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
            raise bad_request(f"'{key}' must be an array of objects.", param=key)
    stream = check_stream(req)
    max_tokens = check_max_tokens(req, "max_completion_tokens", "max_tokens")
    so = req.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise bad_request("'stream_options' must be an object.", param="stream_options")
    return stream, max_tokens


def check_stream(req: dict) -> bool:
    stream = req.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", param="stream")
    return bool(stream)


def check_max_tokens(req: dict, *keys: str) -> int | None:
    value = next((req[k] for k in keys if req.get(k) is not None), None)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise bad_request(f"'{keys[-1]}' must be a positive integer.", param=keys[-1])
    return value


def chat_text(parsed: dict) -> str:
    parts = []
    for choice in parsed.get("choices") or ():
        msg = choice.get("message") or {} if isinstance(choice, dict) else {}
        if isinstance(msg.get("content"), str):
            parts.append(msg["content"])
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") or {}
            parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(parts)


class ChatApi(Api):
    name = "chat"

    def check(self, req):
        return check_chat(req)

    def count(self, counter, req, limit=None):
        return counter.chat(req, limit)

    async def call(self, backend, body, stream, req):
        return await backend.chat(body, stream)

    def text(self, parsed):
        return chat_text(parsed)


CHAT = ChatApi()
