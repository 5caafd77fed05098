#!/usr/bin/env python3
"""Closed-loop HTTP/1.1 load generator for OpenAI-compatible chat completions.

C persistent keep-alive connections, each sending its next request as soon as the
previous response has fully arrived, until N measured requests are done (or
--max-seconds elapses).  A warm-up phase on the same connections precedes the
measured phase and is not counted.  Light on CPU: raw asyncio Protocol +
httptools response parser (+ uvloop), one prebuilt request.

Latency = send of request -> last byte of response (for streams: end of the
chunked body, i.e. after "data: [DONE]").  For streams, TTFB = first body byte.
Every response is checked: HTTP 200, and for streams that [DONE] arrived and
how many SSE "data:" events there were; for non-streams that "choices" is in
the body.  Throughput = measured completions / measured wall time.

Works against any base URL (direct upstream, LiteLLM, our gateway):
  python load.py --url http://127.0.0.1:4000 -n 2000 -c 16 [--stream] [--json out.json]
Loopback only unless --allow-remote (it refuses other hosts by default).
"""
import argparse
import asyncio
import json
import os
import time
from urllib.parse import urlsplit

import httptools

perf = time.perf_counter
NONCE = b"NONCE0000000"  # --unique-prompts: replaced by a per-request number of the same length


class Conn(asyncio.Protocol):
    def __init__(self, loop):
        self.loop = loop
        self.t = None
        self.parser = httptools.HttpResponseParser(self)
        self.fut = None
        self.body = []
        self.first_body_t = None
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.t = transport

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection lost: %r" % (exc,)))

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if self.fut is not None and not self.fut.done():
                self.fut.set_exception(e)
            self.t.close()

    def on_message_begin(self):
        self.body = []
        self.first_body_t = None

    def on_body(self, b):
        if self.first_body_t is None:
            self.first_body_t = perf()
        self.body.append(b)

    def on_message_complete(self):
        if self.fut is not None and not self.fut.done():
            self.fut.set_result((self.parser.get_status_code(), b"".join(self.body), self.first_body_t,
                                 self.parser.should_keep_alive()))

    def request(self, data):
        self.fut = self.loop.create_future()
        if self.lost.done() or self.t.is_closing():
            self.fut.set_exception(ConnectionError("connection already closed"))
        else:
            self.t.write(data)
        return self.fut


def pct(sorted_vals, q):
    """Nearest-rank percentile, q in [0,100]."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def build_request(a, host_hdr):
    if a.body_file:
        body = open(a.body_file, "rb").read()
    else:
        content = " ".join(["benchmark"] * a.prompt_words)
        if a.unique_prompts:
            content = NONCE.decode() + " " + content
        if a.api == "responses":
            req = {"model": a.model, "input": content, "max_output_tokens": a.max_tokens}
        else:
            req = {"model": a.model, "messages": [{"role": "user", "content": content}], "max_tokens": a.max_tokens}
        if a.stream:
            req["stream"] = True
            if a.include_usage and a.api == "chat":
                req["stream_options"] = {"include_usage": True}
        body = json.dumps(req, separators=(",", ":")).encode()
    hdrs = [
        "POST %s HTTP/1.1" % a.path,
        "Host: %s" % host_hdr,
        "User-Agent: gateway-bench-load/1",
        "Content-Type: application/json",
        "Accept: %s" % ("text/event-stream" if a.stream else "application/json"),
        "Content-Length: %d" % len(body),
    ]
    if a.api_key:
        hdrs.append("Authorization: Bearer %s" % a.api_key)
    for h in a.header or ():
        hdrs.append(h)
    return ("\r\n".join(hdrs) + "\r\n\r\n").encode() + body


async def run(a):
    u = urlsplit(a.url)
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    if u.scheme != "http":
        raise SystemExit("only plain http:// URLs are supported")
    if not a.allow_remote and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise SystemExit("refusing non-loopback target %s (use --allow-remote deliberately)" % host)
    base_path = u.path.rstrip("/")
    if a.path is None:
        a.path = base_path + ("/v1/responses" if a.api == "responses" else "/v1/chat/completions")
    req = build_request(a, "%s:%d" % (host, port))
    if a.unique_prompts:
        if req.count(NONCE) != 1:
            raise SystemExit("--unique-prompts: the body must contain %s exactly once" % NONCE.decode())
        head, tail = req.split(NONCE)
        # a random start: a gateway that caches counts must not have seen these prompts in an earlier run
        seq = [int.from_bytes(os.urandom(4), "big") * 100]

        def next_request():
            seq[0] += 1
            return head + b"%012d" % (seq[0] % 10 ** 12) + tail
    else:
        next_request = lambda: req  # noqa: E731
    loop = asyncio.get_running_loop()

    conns = []

    async def connect():
        _, p = await loop.create_connection(lambda: Conn(loop), host, port)
        return p

    conns = await asyncio.gather(*[connect() for _ in range(a.concurrency)])

    lat = []
    ttfb = []
    errors = {}
    first_error = [None]
    events_seen = []
    state = {"issued": 0, "target": 0, "deadline": 0.0, "record": False, "reconnects": 0}

    def note_error(kind, detail):
        errors[kind] = errors.get(kind, 0) + 1
        if first_error[0] is None:
            first_error[0] = "%s: %s" % (kind, detail[:300])

    async def worker(i):
        c = conns[i]
        while state["issued"] < state["target"]:
            if perf() > state["deadline"]:
                return
            state["issued"] += 1
            rec = state["record"]
            t0 = perf()
            fut = c.request(next_request())
            th = loop.call_later(a.timeout, lambda f=fut: (not f.done()) and f.set_exception(asyncio.TimeoutError()))
            try:
                status, body, fb, keep = await fut
            except Exception as e:  # timeout / connection error: reconnect and continue
                th.cancel()
                if rec:
                    note_error(type(e).__name__, repr(e))
                try:
                    c.t.close()
                except Exception:
                    pass
                try:
                    c = conns[i] = await connect()
                    state["reconnects"] += 1
                except Exception as e2:
                    note_error("connect", repr(e2))
                    await asyncio.sleep(0.05)
                continue
            th.cancel()
            t1 = perf()
            ok = status == 200
            if ok:
                if a.stream:
                    if (b"event: response.completed" if a.api == "responses" else b"[DONE]") not in body:
                        ok = False
                        if rec:
                            note_error("no_DONE", body[-200:].decode("latin-1"))
                else:
                    if (b'"output"' if a.api == "responses" else b'"choices"') not in body:
                        ok = False
                        if rec:
                            note_error("no_choices", body[:200].decode("latin-1"))
            elif rec:
                note_error("http_%d" % status, body[:300].decode("latin-1"))
            if rec:
                if ok:
                    lat.append(t1 - t0)
                    if a.stream:
                        ttfb.append((fb or t1) - t0)
                        if len(events_seen) < 50:
                            events_seen.append(body.count(b"data:"))
            if not keep:
                c.t.close()
                c = conns[i] = await connect()
                state["reconnects"] += 1

    # warm-up
    if a.warmup > 0:
        state.update(issued=0, target=a.warmup, deadline=perf() + a.max_seconds, record=False)
        await asyncio.gather(*[worker(i) for i in range(a.concurrency)])
    # measured
    state.update(issued=0, target=a.requests, deadline=perf() + a.max_seconds, record=True, reconnects=0)
    t_start = perf()
    await asyncio.gather(*[worker(i) for i in range(a.concurrency)])
    wall = perf() - t_start
    for c in conns:
        try:
            c.t.close()
        except Exception:
            pass

    lat.sort()
    ttfb.sort()
    ms = lambda v: round(v * 1000.0, 3)
    nerr = sum(errors.values())
    res = {
        "label": a.label,
        "url": a.url + ("" if a.path == base_path + "/v1/chat/completions" else " path=" + a.path),
        "mode": "stream" if a.stream else "nonstream",
        "concurrency": a.concurrency,
        "requested": a.requests,
        "completed_ok": len(lat),
        "errors": nerr,
        "error_kinds": errors,
        "first_error": first_error[0],
        "timed_out_run": state["issued"] < a.requests,
        "reconnects": state["reconnects"],
        "wall_s": round(wall, 3),
        "rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": ms(pct(lat, 50)),
        "p90_ms": ms(pct(lat, 90)),
        "p99_ms": ms(pct(lat, 99)),
        "max_ms": ms(lat[-1]) if lat else None,
        "mean_ms": ms(sum(lat) / len(lat)) if lat else None,
    }
    if a.stream:
        res["ttfb_p50_ms"] = ms(pct(ttfb, 50))
        res["ttfb_p99_ms"] = ms(pct(ttfb, 99))
        res["sse_events_per_response"] = sorted(set(events_seen))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:4000 (path /v1/chat/completions is appended)")
    ap.add_argument("--path", default=None, help="override request path (e.g. /chat/completions or /endpoints/x/invocations)")
    ap.add_argument("-n", "--requests", type=int, default=1000, help="measured requests (default 1000)")
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up requests (default max(50, 2*c))")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--api", choices=("chat", "responses"), default="chat",
                    help="chat completions (default) or the Responses API (POST /v1/responses)")
    ap.add_argument("--no-include-usage", dest="include_usage", action="store_false",
                    help="streams: do not send stream_options.include_usage")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY", "sk-bench-1234"))
    ap.add_argument("--header", action="append", help="extra raw header line, e.g. 'X-Foo: bar'")
    ap.add_argument("--prompt-words", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--body-file", help="send this exact JSON body instead of the generated one")
    ap.add_argument("--unique-prompts", action="store_true",
                    help="make every prompt different (defeats prompt caches): the body's %s is replaced by a "
                         "request number" % NONCE.decode())
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout seconds")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="hard time bound per phase")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", help="append result as one JSON line to this file ('-' = stdout only JSON)")
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--allow-remote", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.warmup is None:
        a.warmup = max(50, 2 * a.concurrency)
    if not a.no_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    res = asyncio.run(run(a))
    if a.json == "-":
        print(json.dumps(res))
    else:
        extra = ""
        if a.stream:
            extra = " ttfb_p50=%.2fms ttfb_p99=%.2fms events=%s" % (res["ttfb_p50_ms"], res["ttfb_p99_ms"], res["sse_events_per_response"])
        print("%-18s %-9s c=%-3d n=%-5d ok=%-5d err=%-3d %8.1f req/s  p50=%.2fms p90=%.2fms p99=%.2fms max=%.2fms%s%s" % (
            a.label or "-", res["mode"], a.concurrency, a.requests, res["completed_ok"], res["errors"], res["rps"],
            res["p50_ms"], res["p90_ms"], res["p99_ms"], res["max_ms"] or float("nan"), extra,
            ("  first_error=" + res["first_error"]) if res["first_error"] else ""))
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(res) + "\n")
    return res


if __name__ == "__main__":
    main()
