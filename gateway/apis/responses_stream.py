"""A chat completions stream as the Responses event sequence the OpenAI SDK expects.

``response.created`` → ``response.in_progress`` → per output item ``output_item.added`` →
(``content_part.added`` → ``output_text.delta``… → ``output_text.done`` → ``content_part.done``)
or (``function_call_arguments.delta``… → ``function_call_arguments.done``) →
``output_item.done`` … → ``response.completed`` (or ``response.incomplete``) carrying usage.
Events go out as the container's chunks arrive, not at the end.
"""
from __future__ import annotations

import uuid

import orjson

from ..backends import UpstreamUnavailable
from .responses_translate import finish, function_item, message_item, new_ids, response_shell, responses_usage


class _Synth:
    def __init__(self, req: dict):
        self.req = req
        self.seq = 0
        self.response_id, self.item_id = new_ids()
        self.shell = response_shell(req, self.response_id, "in_progress")
        self.output: list[dict] = []  # finished items, by output index
        self.text: str | None = None  # the open message item's text so far
        self.text_index = -1
        self.calls: dict[int, dict] = {}  # chat tool-call index → open function_call item
        self.finish_reason = None
        self.usage = None

    def event(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> bytes:
        return (self.event("response.created", response=dict(self.shell))
                + self.event("response.in_progress", response=dict(self.shell)))

    def _index(self) -> int:
        return len(self.output) + (self.text is not None) + len(self.calls)

    def content(self, delta: str) -> bytes:
        out = b""
        if self.text is None:
            self.text_index = self._index()
            self.text = ""
            out += self.event("response.output_item.added", output_index=self.text_index,
                              item={**message_item(self.item_id, "", "in_progress"), "content": []})
            out += self.event("response.content_part.added", item_id=self.item_id, output_index=self.text_index,
                              content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                     "logprobs": []})
        self.text += delta
        return out + self.event("response.output_text.delta", item_id=self.item_id, output_index=self.text_index,
                                content_index=0, delta=delta, logprobs=[])

    def close_text(self) -> bytes:
        if self.text is None:
            return b""
        item = message_item(self.item_id, self.text)
        part = item["content"][0]
        out = (self.event("response.output_text.done", item_id=self.item_id, output_index=self.text_index,
                          content_index=0, text=self.text, logprobs=[])
               + self.event("response.content_part.done", item_id=self.item_id, output_index=self.text_index,
                            content_index=0, part=part)
               + self.event("response.output_item.done", output_index=self.text_index, item=item))
        self.output.append(item)
        self.text = None
        return out

    def tool_call(self, call: dict) -> bytes:
        out = b""
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            out += self.close_text()  # the text came first: it is done
            item = function_item(str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"), str(fn.get("name") or ""),
                                 "", "in_progress")
            item["output_index"] = self._index()
            self.calls[index] = item
            added = {k: v for k, v in item.items() if k != "output_index"}
            out += self.event("response.output_item.added", output_index=item["output_index"], item=added)
        elif fn.get("name"):
            item["name"] += str(fn["name"])
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out += self.event("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=item["output_index"], delta=args)
        return out

    def close_calls(self) -> bytes:
        out = b""
        for index in sorted(self.calls):
            item = self.calls[index]
            at = item.pop("output_index")
            item["status"] = "completed"
            out += self.event("response.function_call_arguments.done", item_id=item["id"], output_index=at,
                              name=item["name"], arguments=item["arguments"])
            out += self.event("response.output_item.done", output_index=at, item=item)
            self.output.append(item)
        self.calls.clear()
        return out

    def chunk(self, parsed: dict) -> bytes:
        if parsed.get("error") is not None:
            raise UpstreamUnavailable("endpoint stream failed")
        if isinstance(parsed.get("usage"), dict):
            self.usage = parsed["usage"]
        out = b""
        for choice in parsed.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self.content(delta["content"])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out += self.tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        out = self.close_text() + self.close_calls()
        final = {**self.shell, "output": self.output, "usage": responses_usage(self.usage)}
        finish(final, self.finish_reason)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return out + self.event(kind, response=final)


async def responses_events(req: dict, chat_chunks):
    """Responses SSE bytes from a chat completions SSE byte stream."""
    synth = _Synth(req)
    head = synth.start()  # sent with the container's first bytes: time to first byte stays the container's
    pending = b""
    async for data in chat_chunks:
        pending += data
        *events, pending = pending.split(b"\n\n")
        out, head = head, b""
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]" or not payload:
                    continue
                try:
                    parsed = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise UpstreamUnavailable("endpoint stream was not JSON") from None
                if isinstance(parsed, dict):
                    out += synth.chunk(parsed)
        if out:
            yield out
    yield head + synth.end()
