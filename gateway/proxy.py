"""The OpenAI-compatible request path: parse → count → route → forward → record.

Raw ASGI on purpose: on one core a FastAPI route costs about twice the whole
budget of a raw handler (3.8k vs 7.4k req/s measured through the same upstream).
Bodies are forwarded as the client sent them unless the model name or
``stream_options`` must change, and upstream answers are passed through as bytes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import orjson

from routing_policies import API
from routing_policies.rules import in_service

from .apis import CHAT, COMPLETIONS, RESPONSES
from .apis.base import openai_body
from .spend.accounting import RequestRecord
from .http.asgi_io import MAX_BODY_BYTES, TIMED_OUT, bearer_token, content_length, header, read_body, send_bytes, send_error
from .backends import UpstreamUnavailable
from .spend.cost import Usage, display_usd, plausible_usage, usage_from_openai
from .http.errors import GatewayError, bad_request
from .http import json_pieces
from .http.limits import (GC_PAUSE, INLINE_WORK_MAX_BYTES, LARGE_BODY_BYTES, LargeBodyGate, in_large_worker, off_loop,
                          return_large_buffers_to_the_os, too_deep)
from .keys import KeyService
from .tokens import TokenCounter
from .http.upstream_errors import client_error_body, log_upstream_error, unavailable_message

log = logging.getLogger("gateway")

SSE = (b"content-type", b"text/event-stream")
# Bodies up to this size are counted before sending (< 0.3 ms). A larger request is
# counted before sending only if its byte length cannot prove that it fits every context
# window: a 10k-token prompt costs ~2.8 ms of tiktoken, ten times forwarding it, and the
# upstream's usage prices it anyway (a stream's count is needed for its headers: it is
# made in a thread while the upstream works). Every UTF-8 byte of text is at most one token, and the
# JSON around each message outweighs the chat format's few tokens of overhead, so the body
# length bounds the prompt tokens from above. When it cannot prove a fit, the count stops
# once it passes the room left in the window (a 30 MB prompt costs ~8k tokens of counting)
# and runs off the loop for a large body (see limits.py).
EXACT_COUNT_MAX_BYTES = 4096
NO_CACHE = (b"cache-control", b"no-cache")
# Answers that say "not now" rather than "bad request": worth one try on the other backend.
RETRY_ELSEWHERE = frozenset({408, 424, 429, 500, 502, 503, 504})


_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _request_id(scope) -> str:
    """The client's ``x-request-id`` when it is a sane token (traces join up), else a new one."""
    given = header(scope, b"x-request-id")
    if given is not None and _CLIENT_ID.fullmatch(given):
        return given.decode()
    return "gw-" + os.urandom(8).hex()


def _parse(body: bytes, check=None):
    """The body's JSON object (and ``check(req)``'s answer); a large body is parsed in pieces
    (run in a worker thread by ``_read_request``: see json_pieces)."""
    try:
        req = orjson.loads(body) if len(body) <= json_pieces.PIECE else json_pieces.loads(body)
    except ValueError:  # orjson.JSONDecodeError is one
        raise bad_request("We could not parse the JSON body of your request.", code="invalid_json") from None
    if not isinstance(req, dict):
        raise bad_request("The request body must be a JSON object.")
    return req if check is None else (req, check(req))


def _no_check(req):
    return None


def _map_upstream_status(status: int) -> int:
    if status in (401, 403):
        return 502  # the gateway's own upstream credentials were refused: not the client's fault
    if status >= 500 and status not in (503, 504):
        return 502
    return status


async def _wait_disconnect(receive, on_gone) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_gone()
            return


class Proxy:
    def __init__(self, config, backends, live, accounting, health, keys=None):
        self.config = config
        self.keys = keys if keys is not None else KeyService(config)
        self.backends = backends
        self.live = live
        self.accounting = accounting
        self.health = health
        self._counters: dict[str, TokenCounter] = {}
        self.large_bodies = LargeBodyGate(config.server.max_large_bodies)
        return_large_buffers_to_the_os()

    # -- shared steps --------------------------------------------------------
    def _authorize(self, scope, rec) -> None:
        """A GATEWAY_API_KEYS key, or a virtual key (``rec.grant``: budgets and limits apply)."""
        rec.grant = self.keys.authenticate(bearer_token(scope))
        if rec.grant is not None:
            rec.tag = self.keys.tag_of(header(scope, b"x-gateway-tags"))

    async def _read_request(self, scope, receive, rec, check=None) -> tuple[bytes, dict, object]:
        """The raw body, its JSON object and ``check(req)``'s answer (the API's validation: a
        walk over every message), once the key was checked (before reading the body). For a
        body over ``json_pieces.PIECE`` both run in a worker thread, in pieces that hand the GIL
        back to the event loop.

        A large body is admitted (``rec.large_body``) before it is read when its length is
        declared, else once read; the handler's wrapper releases it when the request is over.
        """
        self._authorize(scope, rec)
        declared = content_length(scope)
        if declared is not None and declared > MAX_BODY_BYTES:
            raise GatewayError(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
        if declared is not None and declared > LARGE_BODY_BYTES:
            self.large_bodies.admit()
            rec.large_body = True
        try:
            raw = await read_body(receive)
        except GatewayError:
            phase = scope.get(TIMED_OUT)
            if phase:
                raise GatewayError(408, f"The request's {phase} did not arrive in time.", code="request_timeout") from None
            raise
        if len(raw) > LARGE_BODY_BYTES and not rec.large_body:
            self.large_bodies.admit()
            rec.large_body = True
        rec.body_bytes = len(raw)
        check = check or _no_check
        if len(raw) <= json_pieces.PIECE:
            return raw, *_parse(raw, check)
        GC_PAUSE.hold()
        try:
            req, checked = await in_large_worker(_parse, raw, check)
        except BaseException:
            GC_PAUSE.release()
            raise
        rec.parsed = req  # freed off the loop when the request is over (see _guarded)
        return raw, req, checked

    def _resolve(self, req: dict, kind: str):
        name = req.get("model")
        if not isinstance(name, str) or not name:
            raise bad_request("You must provide a model parameter.", param="model")
        models = self.config.models
        model = models.get(name)
        pinned = None
        if model is None and self.config.routing.allow_pinning and "/" in name:
            backend, _, rest = name.partition("/")
            model = models.get(rest)
            if model is not None and any(r.backend == backend for r in model.routes):
                pinned = backend
            else:
                model = None
        if model is None:
            raise GatewayError(404, f"The model `{name}` does not exist or you do not have access to it.",
                               param="model", code="model_not_found")
        if model.kind != kind:
            raise bad_request(f"The model `{name}` does not support this endpoint.", param="model")
        return model, pinned

    def _pin_for(self, api, req: dict, model, pinned):
        """A request that only an API backend can serve (stored state, hosted tools) goes to one."""
        param = api.needs_api(req)
        if param is None:
            return pinned
        api_routes = [r.backend for r in model.routes if self.backends[r.backend].kind == API]
        if pinned is None and api_routes:
            return api_routes[0]
        if pinned in api_routes:
            return pinned
        raise bad_request(f"'{param}' needs OpenAI's stored state or hosted tools, which the endpoint serving "
                          f"`{req.get('model')}` cannot provide.", param=param, code="unsupported_parameter")

    def _counter(self, model) -> TokenCounter:
        c = self._counters.get(model.name)
        if c is None:
            c = self._counters[model.name] = TokenCounter.for_model(model.routes[0].upstream_model, model.encoding)
        return c

    def load_tokenizers(self) -> None:
        """Chat models' encodings, at start. Embedding models' are loaded only if an upstream
        ever omits ``usage`` (about 30 MB for cl100k_base that is otherwise never needed)."""
        for model in self.config.models.values():
            if model.kind == "chat":
                self._counter(model)

    def _windows(self, model, pinned) -> tuple[float, float]:
        """The smallest and largest context windows among the healthy candidates that could serve now.

        Only there does the count change the backend, and a backend without a window takes any
        length (counting past the largest window is work for nothing). An endpoint out of
        service takes nothing whatever the count, and the policy is told the byte length is a
        bound (it then reports endpoint_not_in_service rather than guess context_too_long):
        counting unique long prompts at 0 instances only to pick that label cost 3x the
        forwarding throughput.
        """
        windows = [v.context_window for v in self.live.candidates(model.name, pinned)
                   if v.context_window and v.healthy and in_service(v)]
        return min(windows, default=float("inf")), max(windows, default=float("inf"))

    def _plan(self, model, pinned, decision_backend: str) -> list:
        """The chosen route first, then one other backend to fail over to (not when pinned).

        Only to a backend that could answer: an endpoint with no instance known to be in
        service (unconfirmed, not found, scaled to 0) is never tried, not even as a fallback.
        """
        routes = {r.backend: r for r in model.routes}
        order = [routes[decision_backend]]
        if pinned is None:
            usable = {v.name for v in self.live.candidates(model.name, None) if v.healthy and in_service(v)}
            order += [r for r in model.routes if r.backend != decision_backend and r.backend in usable
                      and self.health.usable(r.backend)][:1]
        return order

    @staticmethod
    async def _prompt_count(rec: RequestRecord) -> int:
        """The full prompt count, off the loop for a large body; once."""
        if rec.prompt_tokens_counted is None:
            rec.prompt_tokens_counted = (await off_loop(rec.body_bytes, rec.count_prompt)
                                         if rec.count_prompt is not None else 0)
        return rec.prompt_tokens_counted

    @staticmethod
    def _upstream_body(req: dict, raw: bytes, upstream_model: str, stream: bool) -> bytes:
        return openai_body(req, raw, upstream_model, stream, stream_usage=True)

    def _headers(self, rec: RequestRecord, final: bool) -> list:
        h = [
            (b"x-request-id", rec.request_id.encode()),
            (b"x-gateway-backend", rec.backend.encode()),
            (b"x-gateway-route-reason", rec.reason.encode()),
        ]
        if final and rec.usage is not None:
            h.append((b"x-gateway-prompt-tokens", str(rec.usage.prompt_tokens).encode()))
            h.append((b"x-gateway-completion-tokens", str(rec.usage.completion_tokens).encode()))
            if rec.cost is not None:
                h.append((b"x-gateway-cost-usd", display_usd(rec.cost).encode()))
        else:
            h.append((b"x-gateway-prompt-tokens", str(rec.prompt_tokens()).encode()))
        if rec.grant is not None and rec.grant.rate_headers:
            h += rec.grant.rate_headers
        return h

    async def _fail(self, send, rec: RequestRecord, err: GatewayError) -> None:
        rec.status = err.status
        rec.error = err.message
        self.accounting.finish(rec)
        h = [*getattr(err, "headers", ()), (b"x-request-id", rec.request_id.encode())]
        if rec.grant is not None and rec.grant.rate_headers:
            h += rec.grant.rate_headers  # x-ratelimit-* on every answer, a 429's included
        await send_error(send, err, h)

    async def _crashed(self, send, rec: RequestRecord, exc: Exception) -> None:
        """A bug in the gateway: an OpenAI-shaped 500, logged, in the metrics and the access log.

        Counted once: a request already recorded (its answer was under way) keeps its record.
        """
        log.error("request %s failed in the gateway", rec.request_id, exc_info=exc)
        if not rec.finished:
            rec.status = 500
            rec.error = f"internal error ({type(exc).__name__})"
            self.accounting.finish(rec)
        err = GatewayError(500, f"The gateway failed on this request (request id {rec.request_id}); it is logged.",
                           type="server_error")
        rate = rec.grant.rate_headers if rec.grant is not None else ()
        try:
            await send_error(send, err, [(b"x-request-id", rec.request_id.encode()), *rate])
        except Exception:  # noqa: BLE001 — the response had already started: nothing more to say
            pass

    async def _call(self, rec, model, pinned, req, raw, stream, call, api=None):
        """Send to the chosen backend; once to the other one if it is unreachable or busy."""
        plan = self._plan(model, pinned, rec.backend)
        for i, route in enumerate(plan):
            rec.backend, rec.upstream_model = route.backend, route.upstream_model
            build = (self._upstream_body if api is None else api.upstream_body)
            args = (req, raw, route.upstream_model, stream) + (() if api is None else (self.backends[route.backend],))
            try:  # a large body's rewrite (a splice, a translation) in a worker thread
                body = build(*args) if len(raw) <= json_pieces.PIECE else await in_large_worker(build, *args)
            except orjson.JSONEncodeError:  # as in limits.dumps, for a translation's own dumps
                raise too_deep(req) from None
            t0 = time.perf_counter()
            try:
                reply = await call(self.backends[route.backend], body)
            except orjson.JSONEncodeError:  # a codec re-encoding the body (tgi): as in _upstream_body
                raise too_deep(req) from None
            except UpstreamUnavailable as e:
                rec.upstream_s += time.perf_counter() - t0
                self.health.failed(route.backend)
                if i + 1 < len(plan):  # an upstream that says why (e.g. endpoint_not_in_service) names it
                    rec.reason = getattr(e, "reason", None) or f"failover_{route.backend}_unreachable"
                    continue
                raise GatewayError(504 if e.timeout else 502, unavailable_message(self.config.backends[route.backend],
                                                                                  str(e)), type="upstream_error") from None
            rec.upstream_s += time.perf_counter() - t0
            if reply.status in RETRY_ELSEWHERE and i + 1 < len(plan):
                self.health.failed(route.backend)
                rec.reason = f"failover_{route.backend}_http_{reply.status}"
                continue
            self.health.succeeded(route.backend)
            return reply
        raise AssertionError("unreachable: plan is never empty")

    # -- POST /v1/chat/completions ---------------------------------------------
    async def chat(self, scope, receive, send) -> None:
        await self._guarded("chat", self._chat, scope, receive, send)

    # -- POST /v1/responses, POST /v1/completions: the chat path with another API (gateway/apis) --
    async def responses(self, scope, receive, send) -> None:
        await self._guarded("responses", lambda *a: self._generate(RESPONSES, *a), scope, receive, send)

    async def completions(self, scope, receive, send) -> None:
        await self._guarded("completions", lambda *a: self._generate(COMPLETIONS, *a), scope, receive, send)

    async def _guarded(self, kind: str, handle, scope, receive, send) -> None:
        """Run one request's handler: a bug must still answer in OpenAI's shape and be counted."""
        rec = RequestRecord(_request_id(scope), "unknown", kind, time.perf_counter())
        try:
            await handle(rec, scope, receive, send)
        except Exception as e:  # noqa: BLE001 — see the docstring
            await self._crashed(send, rec, e)
        finally:
            self.keys.settle(rec)  # every kind and path: the reservation becomes the real cost
            try:
                if rec.parsed is not None:
                    parsed, rec.parsed, rec.count_prompt = rec.parsed, None, None
                    try:
                        await in_large_worker(json_pieces.dispose, parsed)
                    finally:
                        del parsed
                        GC_PAUSE.release()
            finally:
                if rec.large_body:
                    self.large_bodies.release()

    async def _chat(self, rec, scope, receive, send) -> None:
        await self._generate(CHAT, rec, scope, receive, send)

    async def _generate(self, api, rec, scope, receive, send) -> None:
        try:
            raw, req, (stream, max_tokens) = await self._read_request(scope, receive, rec, api.check)
            model, pinned = self._resolve(req, api.model_kind)
            rec.model, rec.stream = model.name, stream
            pinned = self._pin_for(api, req, model, pinned)
            counter = self._counter(model)
            count = api.count
            rec.count_prompt = lambda: count(counter, req)
            routing_tokens = len(raw)
            counting = None
            tightest, loosest = self._windows(model, pinned)
            room = tightest - (max_tokens or 0)
            if routing_tokens <= EXACT_COUNT_MAX_BYTES:
                routing_tokens = rec.prompt_tokens_counted = count(counter, req)
            elif routing_tokens > room:
                # the size cannot prove a fit: count, but only until the count passes the largest
                # room left (beyond it the answer is "too long" for all), off the loop if large
                limit = max(0, int(loosest - (max_tokens or 0)))  # finite: room is
                routing_tokens = await off_loop(len(raw), count, counter, req, limit)
                if routing_tokens <= limit:
                    rec.prompt_tokens_counted = routing_tokens  # counted in full
            await self.keys.admit(rec, rec.grant, model, pinned, routing_tokens, max_tokens)
            if stream and rec.prompt_tokens_counted is None:
                # the stream's headers carry the count: tiktoken (which releases the GIL) counts
                # in a thread while the upstream prepares its first token
                counting = asyncio.ensure_future(off_loop(max(len(raw), INLINE_WORK_MAX_BYTES + 1), count, counter, req))
            decision = self.live.decide(model.name, pinned, routing_tokens, max_tokens, time.time(),
                                        prompt_tokens_is_bound=rec.prompt_tokens_counted is None
                                        and routing_tokens <= room)
            rec.backend, rec.reason = decision.backend, decision.reason
            try:
                reply = await self._call(rec, model, pinned, req, raw, stream,
                                         lambda b, body: api.call(b, body, stream, req), api)
            finally:
                if counting is not None:
                    rec.prompt_tokens_counted = await counting
        except GatewayError as e:
            await self._fail(send, rec, e)
            return
        if reply.status >= 300:
            await self._relay_error(send, rec, reply)
        elif stream:
            await self._stream(receive, send, rec, req, counter, reply, api)
        else:
            await self._plain(send, rec, reply, lambda parsed: counter.text(api.text(parsed)), api.usage)

    async def _relay_error(self, send, rec, reply) -> None:
        """The gateway's own words for an upstream's refusal; the upstream's go to the log."""
        rec.status = _map_upstream_status(reply.status)
        rec.error = f"upstream HTTP {reply.status}"
        log_upstream_error(rec.backend, rec.request_id, reply.status, reply.body)
        await self._prompt_count(rec)
        self.accounting.finish(rec)
        await send_bytes(send, rec.status, client_error_body(rec.backend, reply.status, rec.status, reply.body),
                         self._headers(rec, False))

    async def _plain(self, send, rec, reply, count_completion, read_usage=None) -> None:
        # an answer can be large too (2,048 embeddings of 1,536 floats: ~60 MB): in pieces, off the loop
        large = len(reply.body) > json_pieces.PIECE
        try:
            parsed = await in_large_worker(json_pieces.loads, reply.body) if large else orjson.loads(reply.body)
        except ValueError:  # orjson.JSONDecodeError is one
            parsed = None
        try:
            await self._answer(send, rec, reply, parsed, count_completion, read_usage)
        finally:
            if large and parsed is not None:
                await in_large_worker(json_pieces.dispose, parsed)

    async def _answer(self, send, rec, reply, parsed, count_completion, read_usage) -> None:
        if not isinstance(parsed, dict):
            await self._fail(send, rec, GatewayError(502, "upstream returned a body that is not JSON", type="upstream_error"))
            return
        if "error" in parsed and not any(k in parsed for k in ("choices", "output", "data")):
            # a container that answers 200 with an error object: its words stay in the log
            log_upstream_error(rec.backend, rec.request_id, 200, reply.body)
            await self._fail(send, rec, GatewayError(502, "upstream answered with an error object instead of an answer",
                                                     type="upstream_error"))
            return
        found = plausible_usage(read_usage(parsed) if read_usage is not None else usage_from_openai(parsed.get("usage")))
        if found is not None and found[0] >= 0:
            rec.usage = Usage(found[0], found[1], found[2], from_upstream=True)
        else:
            completion = found[1] if found is not None else await off_loop(len(reply.body), count_completion, parsed)
            rec.usage = Usage(await self._prompt_count(rec), completion, 0, False)
        rec.status = 200
        # Recorded before the answer goes out: a client that reads it and scrapes /metrics at
        # once finds its spend there (the duration then ends at the last byte handed to the server).
        self.accounting.finish(rec)
        await send_bytes(send, 200, reply.body, self._headers(rec, True))

    async def _stream(self, receive, send, rec, req, counter, reply, api=CHAT) -> None:
        tap = api.tap(req)
        rec.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": [SSE, NO_CACHE, *self._headers(rec, False)]})

        def gone():
            rec.client_gone = True
            if reply.close is not None:
                reply.close()

        watcher = asyncio.ensure_future(_wait_disconnect(receive, gone))
        tail = b""
        try:
            waited = time.perf_counter()
            async for chunk in reply.chunks:
                now = time.perf_counter()
                rec.upstream_s += now - waited
                out = tap.feed(chunk)
                if out:
                    if rec.ttft_s is None:
                        rec.ttft_s = now - rec.started
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if rec.client_gone:
                    break
                waited = time.perf_counter()
            tail = tap.flush()
        except UpstreamUnavailable as e:
            if not rec.client_gone:
                rec.error = str(e)
                err = GatewayError(502, unavailable_message(self.config.backends[rec.backend], str(e)),
                                   type="upstream_error")
                tail = tap.flush() + b"data: " + err.body() + b"\n\n"
        except Exception as e:  # noqa: BLE001 — a broken stream must still be accounted
            if not rec.client_gone:
                rec.error = f"stream failed: {type(e).__name__}"
        finally:
            watcher.cancel()
            if tap.upstream_error is not None:
                rec.error = rec.error or "upstream stream error event"
                log.warning("backend %s ended the stream of request %s with an error event: %s", rec.backend,
                            rec.request_id, tap.upstream_error)
            reported = plausible_usage(tap.usage)
            if reported is not None:
                p, c, cached = reported
                rec.usage = Usage(p if p >= 0 else await self._prompt_count(rec), c, cached, from_upstream=p >= 0)
            else:
                streamed = sum(map(len, tap.events))
                rec.usage = Usage(await self._prompt_count(rec),
                                  await off_loop(streamed, lambda: counter.text(tap.generated_text())), 0, False)
            self.accounting.finish(rec)
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- POST /v1/embeddings ---------------------------------------------------
    async def embeddings(self, scope, receive, send) -> None:
        await self._guarded("embeddings", self._embeddings, scope, receive, send)

    async def _embeddings(self, rec, scope, receive, send) -> None:
        try:
            raw, req, _ = await self._read_request(scope, receive, rec, _check_embedding_input)
            model, pinned = self._resolve(req, "embeddings")
            rec.model = model.name
            # counted only if the upstream does not say (see load_tokenizers); routing needs no count:
            # embeddings go to API backends only
            rec.count_prompt = lambda: self._counter(model).embedding_input(req.get("input"))
            decision = self.live.decide(model.name, pinned, 0, None, time.time())
            rec.backend, rec.reason = decision.backend, decision.reason
            await self.keys.admit(rec, rec.grant, model, pinned, rec.body_bytes, 0)  # bytes bound the input tokens
            reply = await self._call(rec, model, pinned, req, raw, False,
                                     lambda b, body: b.embeddings(body))
        except GatewayError as e:
            await self._fail(send, rec, e)
            return
        if reply.status >= 300:
            await self._relay_error(send, rec, reply)
        else:
            await self._plain(send, rec, reply, lambda parsed: 0)


def _check_embedding_input(req: dict) -> None:
    """OpenAI's four shapes: a string, an array of strings, of token ids, or of token-id arrays."""
    value = req.get("input")
    ok = isinstance(value, str) and value != "" or isinstance(value, list) and value != [] and (
        all(isinstance(x, str) for x in value)
        or all(isinstance(x, int) and not isinstance(x, bool) for x in value)
        or all(isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
               for x in value))
    if not ok:
        raise bad_request("'input' must be a non-empty string, or a non-empty array of strings, of token ids "
                          "(integers) or of non-empty token-id arrays.", param="input")

