"""OpenAI-compatible stand-in: real HTTP/1.1 on loopback, in a thread with its own asyncio loop.

    with OpenAIStandIn(api_key="sk-test") as up:
        up.script(text="Hi there", prompt_tokens=12, cached_tokens=4)
        up.fail_next(429)  # the next work request gets a 429
        client = openai.OpenAI(base_url=up.base_url, api_key=up.api_key, max_retries=0)
        assert up.last_request.json["model"] == "gpt-4o-mini"

Its HTTP core (`StandInServer`) and chat codec also serve the SageMaker stand-in: one codec,
two transports, as in the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import http
import itertools
import json
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httptools

from . import RecordedRequest, Script

_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}


class _Conn(asyncio.Protocol):
    """One client connection: httptools parses, a task answers requests in order."""

    def __init__(self, server: StandInServer):
        self.server, self.parser, self.closed = server, httptools.HttpRequestParser(self), False
        self.queue: asyncio.Queue = asyncio.Queue()

    def connection_made(self, transport):
        self.transport = transport
        self.server._conns.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve())  # held: the loop keeps weak refs

    def connection_lost(self, exc):
        self.closed = True
        self.server._conns.discard(self)
        self.queue.put_nowait(None)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.write(_head(400, "text/plain", 0, {"connection": "close"}))
            self.transport.close()

    def on_message_begin(self):
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url):
        self._url += url

    def on_header(self, name, value):
        key, val = name.decode("latin-1").lower(), value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {val}" if key in self._headers else val

    def on_body(self, body):
        self._body.append(body)

    def on_message_complete(self):
        url, body = httptools.parse_url(self._url), b"".join(self._body)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        req = RecordedRequest(self.parser.get_method().decode(), url.path.decode(), (url.query or b"").decode(),
                              self._headers, body, parsed)
        self.queue.put_nowait((req, self.parser.should_keep_alive()))

    async def _serve(self):
        while (item := await self.queue.get()) is not None:
            req, keep_alive = item
            self.server._record(req)
            try:
                await self.server.handle(req, self)
            except Exception as exc:  # a stand-in bug: surface it to the test instead of hanging the client
                self.server.errors.append(exc)
                self.respond(req, 500, {"error": {"message": f"stand-in crashed: {exc!r}", "type": "standin"}})
            if not keep_alive and not self.closed:
                self.transport.close()

    def write(self, data: bytes):
        if not self.closed:
            self.transport.write(data)

    def respond(self, req: RecordedRequest, status: int, body: bytes | str | Mapping | list,
                content_type="application/json", headers: Mapping[str, str] | None = None):
        if not isinstance(body, bytes):
            body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req.status = status
        self.write(_head(status, content_type, len(body), headers) + body)

    def chunk(self, data: bytes):
        if data:
            self.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self):
        self.write(b"0\r\n\r\n")

    def abort(self):
        """Drop the connection mid-response, as a crashed upstream would (no chunked terminator)."""
        if not self.closed:
            self.transport.abort()

    async def send_events(self, req: RecordedRequest, content_type: str, headers: Mapping[str, str],
                          script: Script, events: list[bytes], content: range, error_event: bytes,
                          frame: Callable[[bytes], bytes] = bytes) -> None:
        """Answer 200 with a chunked stream of `events`, sleeping chunk_delay before each content event.

        After script.stop_after_chunks content events: abort the connection, or with
        script.stream_error send `error_event` and end the stream cleanly.
        """
        req.status = 200
        self.write(_head(200, content_type, None, headers))
        cut = script.stop_after_chunks if script.stream_error is None else (script.stop_after_chunks or 0)
        for i, event in enumerate(events):
            if self.closed:  # the client went away
                return
            if i in content:
                if cut is not None and i - content.start >= cut:
                    if script.stream_error is None:
                        return self.abort()
                    self.chunk(error_event)
                    break
                await asyncio.sleep(script.chunk_delay)
            self.chunk(frame(event))
        self.end_chunked()


def _head(status: int, ctype: str, length: int | None, headers: Mapping[str, str] | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Status')}", f"content-type: {ctype}",
             f"date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}"]
    lines.append("transfer-encoding: chunked" if length is None else f"content-length: {length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class StandInServer:
    """Loopback HTTP server in a background thread, with per-test scripting and request recording.

    Subclasses implement `async handle(req, conn)`. The control methods are thread-safe.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host, self.port = host, 0
        self._lock = threading.Lock()
        self._script, self._next = Script(), deque()  # standing script, queued one-shot changes
        self._requests: list[RecordedRequest] = []
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.next_id = itertools.count(1).__next__  # ids for responses (chatcmpl-standinN, req_standinN)
        self.errors: list[Exception] = []  # exceptions raised by the stand-in's own handlers

    def start(self) -> StandInServer:
        """Serve a free loopback port from a daemon thread with its own loop (works beside any test loop)."""
        self._loop, ready = asyncio.new_event_loop(), threading.Event()

        def run():
            make = self._loop.create_server(lambda: _Conn(self), self.host, 0)
            self._server = self._loop.run_until_complete(make)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            for conn in list(self._conns):
                conn.transport.abort()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:  # handlers sleeping in a scripted delay
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = None

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def script(self, **changes: Any) -> Script:
        """Change how every following request is answered (fields of `Script`); returns the new script."""
        with self._lock:
            self._script = dataclasses.replace(self._script, **changes)
            return self._script

    def script_next(self, **changes: Any) -> None:
        """Queue a one-shot change applied (on top of the current script) to the next work request only."""
        dataclasses.replace(self._script, **changes)  # fail now on unknown fields
        with self._lock:
            self._next.append(changes)

    def fail_next(self, status: int, body: Mapping[str, Any] | bytes | str | None = None, *,
                  times: int = 1, headers: Mapping[str, str] | None = None) -> None:
        """The next `times` work requests get HTTP `status` (body None: the provider's usual error body)."""
        for _ in range(times):
            self.script_next(error_status=status, error_body=body, error_headers=headers)

    def reset(self) -> None:
        """Back to the default script; forget queued one-shots and recorded requests."""
        with self._lock:
            self._script, self._requests = Script(), []
            self._next.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self._requests[-1]

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    def take_script(self) -> Script:
        """The script for one work request: the next queued one-shot, else the standing script."""
        with self._lock:
            return dataclasses.replace(self._script, **self._next.popleft()) if self._next else self._script

    async def handle(self, req: RecordedRequest, conn: _Conn) -> None:  # pragma: no cover
        raise NotImplementedError


# ---- the OpenAI chat codec (shared with the SageMaker stand-in's container) ----

def content_chunks(script: Script) -> list[str]:
    """The streamed content pieces: a str script text goes out word by word (spaces kept)."""
    return re.findall(r"\S+\s*|\s+", script.text) if isinstance(script.text, str) else list(script.text)


def approx_tokens(value: Any) -> int:
    """~4 characters per token over the text in messages, inputs, content parts."""
    if isinstance(value, str):
        return max(1, len(value) // 4)
    if isinstance(value, Mapping):
        value = [v for k, v in value.items() if k in ("content", "text", "inputs", "input")]
    return sum(map(approx_tokens, value)) if isinstance(value, list) else 0


def usage_block(req: Mapping[str, Any], script: Script) -> dict[str, Any]:
    prompt = script.prompt_tokens if script.prompt_tokens is not None else approx_tokens(
        req.get("messages", req.get("inputs", req.get("input", ""))))
    completion = script.completion_tokens if script.completion_tokens is not None else len(content_chunks(script))
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if script.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens, "audio_tokens": 0}
    return usage


def tool_call_list(script: Script, n: int) -> list[dict[str, Any]]:
    return [{"id": f"call_standin{n}_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": c.get("arguments", "{}")}}
            for i, c in enumerate(script.tool_calls or ())]


def chat_completion(req: Mapping[str, Any], script: Script, n: int) -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(content_chunks(script)), "refusal": None}
    finish = script.finish_reason
    if script.tool_calls:
        message.update(content=None, tool_calls=tool_call_list(script, n))
        finish = "tool_calls"
    body = {"id": f"chatcmpl-standin{n}", "object": "chat.completion", "created": int(time.time()),
            "model": script.model or req.get("model") or "standin-model", "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "logprobs": None, "finish_reason": finish, "message": message}]}
    if script.usage:
        body["usage"] = usage_block(req, script)
    return body


def chat_stream_events(req: Mapping[str, Any], script: Script, n: int) -> list[bytes]:
    """SSE events: role, one per content chunk (events[1:1+len(content_chunks)]), finish, [usage], [DONE]."""
    include_usage = bool((req.get("stream_options") or {}).get("include_usage")) and script.usage
    base = {"id": f"chatcmpl-standin{n}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": script.model or req.get("model") or "standin-model", "system_fingerprint": "fp_standin"}
    extra = {"usage": None} if include_usage else {}  # OpenAI sends usage: null on every chunk then

    def event(delta, finish=None):
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice], **extra})

    events = [event({"role": "assistant", "content": "", "refusal": None})]
    if script.tool_calls:  # as OpenAI streams them: id and name first, then the arguments
        for i, call in enumerate(tool_call_list(script, n)):
            fn = call["function"]
            events.append(event({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                 "function": {"name": fn["name"], "arguments": ""}}]}))
            events.append(event({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]}))
        events.append(event({}, "tool_calls"))
        if include_usage:
            events.append(sse({**base, "choices": [], "usage": usage_block(req, script)}))
        return events + [b"data: [DONE]\n\n"]
    events += [event({"content": c}) for c in content_chunks(script)]
    events.append(event({}, script.finish_reason))
    if include_usage:
        events.append(sse({**base, "choices": [], "usage": usage_block(req, script)}))
    return events + [b"data: [DONE]\n\n"]


# ---- legacy completions and the Responses API (API backends only: endpoints speak chat) ----

def text_completion(req: Mapping[str, Any], script: Script, n: int) -> dict[str, Any]:
    body = {"id": f"cmpl-standin{n}", "object": "text_completion", "created": int(time.time()),
            "model": script.model or req.get("model") or "standin-model", "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "text": "".join(content_chunks(script)), "logprobs": None,
                         "finish_reason": script.finish_reason}]}
    if script.usage:
        body["usage"] = usage_block({"messages": req.get("prompt", "")}, script)
    return body


def completion_stream_events(req: Mapping[str, Any], script: Script, n: int) -> list[bytes]:
    """One event per content chunk (events[0:len(content_chunks)]), finish, [usage], [DONE]."""
    include_usage = bool((req.get("stream_options") or {}).get("include_usage")) and script.usage
    base = {"id": f"cmpl-standin{n}", "object": "text_completion", "created": int(time.time()),
            "model": script.model or req.get("model") or "standin-model", "system_fingerprint": "fp_standin"}
    events = [sse({**base, "choices": [{"index": 0, "text": c, "logprobs": None, "finish_reason": None}]})
              for c in content_chunks(script)]
    events.append(sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                            "finish_reason": script.finish_reason}]}))
    if include_usage:
        events.append(sse({**base, "choices": [], "usage": usage_block({"messages": req.get("prompt", "")}, script)}))
    return events + [b"data: [DONE]\n\n"]


def responses_usage_block(req: Mapping[str, Any], script: Script) -> dict[str, Any]:
    chat = usage_block({"messages": req.get("input", "")}, script)
    return {"input_tokens": chat["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": script.cached_tokens or 0, "cache_write_tokens": 0},
            "output_tokens": chat["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": script.reasoning_tokens or 0},
            "total_tokens": chat["total_tokens"]}


def _response(req: Mapping[str, Any], script: Script, n: int, status: str, output: list) -> dict[str, Any]:
    return {"id": f"resp_standin{n}", "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": None, "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "model": script.model or req.get("model") or "standin-model", "output": output,
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": req.get("previous_response_id"), "reasoning": {"effort": None, "summary": None},
            "store": req.get("store", True), "temperature": req.get("temperature", 1.0),
            "text": req.get("text") or {"format": {"type": "text"}}, "tool_choice": req.get("tool_choice", "auto"),
            "tools": req.get("tools") or [], "top_p": req.get("top_p", 1.0), "truncation": "disabled",
            "usage": None, "user": None, "metadata": {}}


def _response_output(script: Script, n: int) -> list[dict[str, Any]]:
    if script.tool_calls:
        return [{"id": f"fc_standin{n}_{i}", "type": "function_call", "status": "completed",
                 "call_id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for i, c in enumerate(tool_call_list(script, n))]
    return [{"id": f"msg_standin{n}", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "".join(content_chunks(script)), "annotations": [],
                          "logprobs": []}]}]


def response_body(req: Mapping[str, Any], script: Script, n: int) -> dict[str, Any]:
    body = _response(req, script, n, "completed", _response_output(script, n))
    if script.usage:
        body["usage"] = responses_usage_block(req, script)
    return body


def response_stream_events(req: Mapping[str, Any], script: Script, n: int) -> tuple[list[bytes], range]:
    """Typed events as api.openai.com sends them; the range is where the text deltas are."""
    seq = itertools.count()

    def ev(kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": next(seq), **fields}
        return f"event: {kind}\n".encode() + sse(data)

    shell = _response(req, script, n, "in_progress", [])
    events = [ev("response.created", response=shell), ev("response.in_progress", response=shell)]
    output = _response_output(script, n)
    start = stop = len(events)
    for index, item in enumerate(output):
        if item["type"] == "function_call":
            events.append(ev("response.output_item.added", output_index=index,
                             item={**item, "status": "in_progress", "arguments": ""}))
            events.append(ev("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                             delta=item["arguments"]))
            events.append(ev("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             name=item["name"], arguments=item["arguments"]))
        else:
            part = item["content"][0]
            events.append(ev("response.output_item.added", output_index=index,
                             item={**item, "status": "in_progress", "content": []}))
            events.append(ev("response.content_part.added", item_id=item["id"], output_index=index,
                             content_index=0, part={**part, "text": ""}))
            start = len(events)
            events += [ev("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                          delta=c, logprobs=[]) for c in content_chunks(script)]
            stop = len(events)
            events.append(ev("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                             text=part["text"], logprobs=[]))
            events.append(ev("response.content_part.done", item_id=item["id"], output_index=index,
                             content_index=0, part=part))
        events.append(ev("response.output_item.done", output_index=index, item=item))
    final = response_body(req, script, n)
    events.append(ev("response.completed", response=final))
    return events, range(start, stop)


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_OPENAI_ERRORS = {  # status: (type, code, message) as api.openai.com sends them
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def openai_error(status: int, message: str | None = None, code: Any = ...) -> dict[str, Any]:
    """OpenAI's error body for an HTTP status (`code=...` keeps the status's usual code)."""
    kind, usual_code, default = _OPENAI_ERRORS.get(
        status, ("server_error", None, "The server had an error while processing your request. Sorry about that!"))
    return {"error": {"message": message or default, "type": kind, "param": None,
                      "code": usual_code if code is ... else code}}


class OpenAIStandIn(StandInServer):
    """`POST /v1/chat/completions`, `/v1/responses`, `/v1/completions`, `/v1/embeddings`, `GET /v1/models`,
    Bearer-key checked."""

    def __init__(self, api_key: str = "sk-standin-test", models: Sequence[str] = ("gpt-4o-mini",
                 "text-embedding-3-small"), host: str = "127.0.0.1"):
        super().__init__(host)
        self.api_key, self.models = api_key, list(models)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def handle(self, req, conn):
        headers = {"x-request-id": f"req_standin{self.next_id()}", "openai-processing-ms": "1"}
        auth = req.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            msg = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
                   "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            return conn.respond(req, 401, openai_error(401, msg, code=None), headers=headers)
        if auth[7:] != self.api_key:
            msg = f"Incorrect API key provided: {auth[7:][:3]}***{auth[7:][-4:]}."
            return conn.respond(req, 401, openai_error(401, msg), headers=headers)
        route = (req.method, req.path)
        if route == ("GET", "/v1/models"):
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "standin"} for m in self.models]
            return conn.respond(req, 200, {"object": "list", "data": data}, headers=headers)
        if route not in (("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("POST", "/v1/responses"),
                         ("POST", "/v1/completions")):
            msg = f"Invalid URL ({req.method} {req.path})"
            return conn.respond(req, 404, openai_error(404, msg, code=None), headers=headers)
        if not isinstance(req.json, dict):
            msg = "We could not parse the JSON body of your request."
            return conn.respond(req, 400, openai_error(400, msg), headers=headers)
        script = self.take_script()
        await asyncio.sleep(script.delay)
        if script.error_status is not None:
            body = openai_error(script.error_status) if script.error_body is None else script.error_body
            return conn.respond(req, script.error_status, body, headers={**headers, **(script.error_headers or {})})
        if req.path == "/v1/embeddings":
            return conn.respond(req, 200, self._embeddings(req.json, script), headers=headers)
        if req.path in ("/v1/responses", "/v1/completions"):
            return await self._generate(req, conn, script, headers)
        if not req.json.get("stream"):
            if script.stop_after_chunks is not None:
                return conn.abort()
            return conn.respond(req, 200, chat_completion(req.json, script, self.next_id()), headers=headers)
        # OpenAI reports a failure after the stream started as an SSE event carrying "error"
        await conn.send_events(req, "text/event-stream; charset=utf-8", headers, script,
                               chat_stream_events(req.json, script, self.next_id()),
                               range(1, 1 + len(content_chunks(script))), sse(openai_error(500, script.stream_error)))

    async def _generate(self, req, conn, script: Script, headers) -> None:
        """`/v1/responses` and `/v1/completions`, plain and streamed."""
        n, responses = self.next_id(), req.path == "/v1/responses"
        if not req.json.get("stream"):
            if script.stop_after_chunks is not None:
                return conn.abort()
            body = response_body(req.json, script, n) if responses else text_completion(req.json, script, n)
            return conn.respond(req, 200, body, headers=headers)
        if responses:
            events, content = response_stream_events(req.json, script, n)
            error = b"event: error\n" + sse({"type": "error", "code": "server_error", "param": None,
                                              "message": script.stream_error or "", "sequence_number": 0})
        else:
            events = completion_stream_events(req.json, script, n)
            content, error = range(0, len(content_chunks(script))), sse(openai_error(500, script.stream_error))
        await conn.send_events(req, "text/event-stream; charset=utf-8", headers, script, events, content, error)

    def _embeddings(self, req: Mapping[str, Any], script: Script) -> dict[str, Any]:
        inputs = req.get("input")
        items = inputs if isinstance(inputs, list) and not all(isinstance(i, int) for i in inputs) else [inputs]
        data = []
        for i, item in enumerate(items):
            seed = binascii.crc32(json.dumps(item).encode())  # deterministic per input
            vec = [((seed >> (k % 8 * 4)) & 0xF) / 15.0 - 0.5 + k * 1e-3 for k in range(script.embedding_dim)]
            if req.get("encoding_format") == "base64":  # little-endian float32, as the SDK decodes it
                vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        prompt = script.prompt_tokens if script.prompt_tokens is not None else approx_tokens(items)
        body = {"object": "list", "data": data, "model": script.model or req.get("model") or "standin-embedding"}
        if script.usage:
            body["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return body
