"""Wire formats of the container behind a SageMaker endpoint, to and from OpenAI's.

``messages``: the container speaks the OpenAI chat API itself (TGI, vLLM and LMI
``messages`` API), so bodies pass through; streams arrive as AWS event-stream
``PayloadPart`` frames whose payloads, joined, are the container's SSE bytes.
``tgi``: the classic ``{"inputs", "parameters"}`` API; chat messages are folded
into one prompt with a plain role-tagged template, answers are rebuilt as OpenAI
chat completions.
"""
from __future__ import annotations

import time
import uuid

import orjson

from ..http import json_pieces
from ..http.errors import bad_request, error_body
from ..http.limits import off_loop
from .base import UpstreamUnavailable


async def event_stream_payloads(chunks):
    """Yield the payload bytes of each ``PayloadPart``; raise on an exception frame."""
    from botocore.eventstream import EventStreamBuffer

    buf = EventStreamBuffer()
    async for data in chunks:
        buf.add_data(data)
        for message in buf:
            headers = message.headers
            if headers.get(":message-type") == "exception" or headers.get(":message-type") == "error":
                kind = headers.get(":exception-type") or headers.get(":error-code") or "ModelStreamError"
                raise UpstreamUnavailable(f"endpoint stream failed: {kind}")
            if message.payload:
                yield message.payload


class MessagesCodec:
    def encode_request(self, body: bytes) -> bytes:
        return body

    def decode_response(self, raw: bytes, request_body: bytes) -> bytes:
        return raw

    def decode_stream(self, chunks, request_body: bytes):
        return event_stream_payloads(chunks)

    def error_reply(self, status: int, raw: bytes) -> tuple[int, bytes]:
        """An AWS error as the status and OpenAI-shaped body the client should see.

        A 424 ModelError carries the container's own answer: a 4xx there is the client's
        request (passed on with its status), a 5xx the model server failing. Any other 400
        is SageMaker refusing the gateway's call (unknown endpoint, bad configuration):
        nothing the client can fix, so it is a 502.
        """
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            return status, error_body(f"SageMaker endpoint returned HTTP {status}", "upstream_error")
        if isinstance(parsed.get("error"), dict):
            return status, raw  # the container's own OpenAI-shaped error
        original = parsed.get("OriginalStatusCode")
        if status == 424 and isinstance(original, int):
            message = parsed.get("OriginalMessage") or parsed.get("message") or ""
            try:
                inner = orjson.loads(message)
            except (orjson.JSONDecodeError, TypeError):
                inner = None
            if isinstance(inner, dict) and isinstance(inner.get("error"), dict):
                return (original if 400 <= original < 500 else 502), orjson.dumps(inner)
            kind = "invalid_request_error" if 400 <= original < 500 else "upstream_error"
            return (original if 400 <= original < 500 else 502), error_body(f"model server: {message}", kind)
        msg = parsed.get("message") or parsed.get("Message")
        text = f"SageMaker endpoint: {msg}" if msg else f"SageMaker endpoint returned HTTP {status}"
        return (502 if status == 400 else status), error_body(text, "upstream_error")


_TGI_PARAMS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
               "temperature": "temperature", "top_p": "top_p", "stop": "stop", "seed": "seed",
               "frequency_penalty": "frequency_penalty"}  # TGI's own, same -2..2 scale as OpenAI's


def _tgi_prompt(messages) -> str:
    parts = []
    for m in messages if isinstance(messages, list) else ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"<|{m.get('role', 'user')}|>\n{content or ''}")
    parts.append("<|assistant|>\n")
    return "\n".join(parts)


def _tgi_inputs(req: dict) -> str:
    """A legacy completion's prompt goes to TGI as it is (no template); chat messages are folded."""
    if "messages" in req or "prompt" not in req:
        return _tgi_prompt(req.get("messages"))
    prompt = req["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("This model's endpoint takes one text 'prompt' (not token ids or several prompts).",
                          param="prompt")
    return prompt


def _is_completions(request: dict) -> bool:
    return "prompt" in request and "messages" not in request


def _completion(request: dict, text: str, finish: str, completion_tokens: int | None) -> dict:
    if _is_completions(request):
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        kind, prefix = "text_completion", "cmpl"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        kind, prefix = "chat.completion", "chatcmpl"
    out = {
        "id": f"{prefix}-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": request.get("model", ""),
        "choices": [choice],
    }
    if completion_tokens is not None:
        out["usage"] = {"completion_tokens": completion_tokens}
    return out


class TgiCodec(MessagesCodec):
    def encode_request(self, body: bytes) -> bytes:
        req = json_pieces.loads(body)  # a large body: in pieces (this runs in the large-body thread)
        params = {"details": True}
        for src, dst in _TGI_PARAMS.items():
            if req.get(src) is not None:
                params[dst] = req[src]
        if isinstance(params.get("stop"), str):
            params["stop"] = [params["stop"]]
        # OpenAI's greedy (temperature 0) and no-cut (top_p 1) are what TGI does without them; TGI
        # answers 422 to either value ("must be strictly positive", "must be < 1.0").
        if params.get("temperature") == 0:
            del params["temperature"]
        if isinstance(params.get("top_p"), (int, float)) and params["top_p"] >= 1:
            del params["top_p"]
        return orjson.dumps({"inputs": _tgi_inputs(req), "parameters": params, "stream": bool(req.get("stream"))})

    def decode_response(self, raw: bytes, request_body: bytes) -> bytes:
        parsed = orjson.loads(raw)
        item = parsed[0] if isinstance(parsed, list) and parsed else parsed
        details = item.get("details") or {}
        finish = "length" if details.get("finish_reason") == "length" else "stop"
        return orjson.dumps(_completion(json_pieces.loads(request_body), item.get("generated_text", ""), finish,
                                        details.get("generated_tokens")))

    async def decode_stream(self, chunks, request_body: bytes):
        request = await off_loop(len(request_body), json_pieces.loads, request_body)
        legacy = _is_completions(request)
        head = {"id": f"{'cmpl' if legacy else 'chatcmpl'}-{uuid.uuid4().hex[:24]}",
                "object": "text_completion" if legacy else "chat.completion.chunk",
                "created": int(time.time()), "model": request.get("model", "")}
        pending = b""
        first = True
        async for payload in event_stream_payloads(chunks):
            pending += payload
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                event = orjson.loads(line[5:])
                if event.get("error") is not None:  # TGI's in-stream failure: not a normal end
                    raise UpstreamUnavailable(f"endpoint stream failed: {event.get('error_type') or 'error'}")
                token = (event.get("token") or {})
                delta = {"content": token.get("text", "")} if not token.get("special") else {}
                if first:
                    delta["role"] = "assistant"
                    first = False
                finish = None
                if event.get("generated_text") is not None:
                    reason = (event.get("details") or {}).get("finish_reason")
                    finish = "length" if reason == "length" else "stop"
                if legacy:
                    choice = {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
                else:
                    choice = {"index": 0, "delta": delta, "finish_reason": finish}
                chunk = {**head, "choices": [choice]}
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"


_CODECS = {"messages": MessagesCodec, "tgi": TgiCodec}


def codec_for(wire_format: str):
    return _CODECS[wire_format]()
