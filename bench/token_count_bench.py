#!/usr/bin/env python3
"""Is token counting ever the bottleneck? Counting rate vs forwarding rate, 10k-token prompts.

Run it with the python of a venv that has the gateway installed (bench/run.sh does):

    $BENCH_DIR/venv-gateway/bin/python bench/token_count_bench.py [--tokens 10000] [--quick]

1. Counting, in this process, pinned to --cpu (the core the gateway gets in step 2):
   ``gateway.tokens.TokenCounter.for_model("gpt-4o-mini").chat(body)`` on chat bodies
   freshly parsed from JSON (as the gateway sees them), two workloads:
   - unique: every prompt is a different 10k-token text (no cache can help);
   - history: a conversation whose every turn resends the last 20 messages (~10k
     tokens) plus one new message, so 19/20 of each prompt was counted the turn before.
2. Forwarding, in the same run: the mock upstream (--client-cpu) and the gateway
   (`gateway serve --config bench/gateway_bench.yaml`, one worker pinned to --cpu), and
   load.py sending 10k-token chat requests, unique (``--unique-prompts``) and repeated.
   The gateway counts every prompt as in production; its CPU time per request is read
   from /proc.

It prints counting prompts/s, forwarding req/s, their ratio, and the share of the
gateway's CPU per request that counting takes. Counting is "never the bottleneck"
when one core counts prompts at least as fast as it forwards them: counting prompts/s
>= the rate one core forwards 10k-token requests when counting is free, i.e. 1000 /
(gateway CPU ms per repeated-prompt request, where the count is a cache hit). Loopback only; every phase is
bounded by --seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402  (stdlib-only helpers: process control, readiness, /proc CPU)

import orjson  # noqa: E402

from gateway import tokens  # noqa: E402

MODEL = "gpt-4o-mini"


def corpus_lines() -> list[str]:
    """Real text with code and English prose: Python's own standard library sources."""
    lib = os.path.dirname(os.__file__)
    lines = []
    for name in sorted(os.listdir(lib)):
        if name.endswith(".py"):
            try:
                with open(os.path.join(lib, name), encoding="utf-8") as f:
                    lines.extend(line for line in f.read().splitlines() if line.strip())
            except (OSError, UnicodeDecodeError):
                pass
    return lines


def make_text(rng: random.Random, lines: list[str], encode, target_tokens: int) -> str:
    """Random stdlib lines until ``target_tokens`` tokens (within a line)."""
    out, n = [], 0
    while True:
        while n < target_tokens:
            line = rng.choice(lines)
            out.append(line)
            n += len(encode(line))
        n = len(encode("\n".join(out)))  # joining merges a few tokens: top up
        if n >= target_tokens:
            return "\n".join(out)


def rate(fn, items, seconds: float, min_items: int = 3):
    """Call fn on items in turn for about ``seconds``; return (calls, seconds spent inside fn)."""
    spent, calls = 0.0, 0
    t_end = time.perf_counter() + seconds
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        spent += time.perf_counter() - t0
        calls += 1
        if calls >= min_items and time.perf_counter() > t_end:
            break
    return calls, spent


def counting(args, counter, lines):
    encode = tokens.get_encoding(counter.name).encode_ordinary
    rng = random.Random(1)
    res = {}

    # unique: each body a different text; parsed from bytes like the gateway does
    n_unique = max(8, int(args.seconds * 60))
    raws = [orjson.dumps({"model": MODEL, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": make_text(rng, lines, encode, args.tokens)}]}) for _ in range(n_unique)]
    bodies = [orjson.loads(r) for r in raws]
    tokens._CACHE.clear()
    ntok = counter.chat(bodies[0])
    tokens._CACHE.clear()
    calls, spent = rate(counter.chat, bodies[1:], args.seconds)
    res["unique"] = {"prompt_tokens": ntok, "prompts": calls, "prompts_per_s": calls / spent,
                     "tokens_per_s": calls * ntok / spent}

    # history: a sliding window of 20 messages of tokens/20 each; one new per turn
    per_msg = args.tokens // 20
    n_turns = max(8, int(args.seconds * 400))
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": make_text(rng, lines, encode, per_msg)}
            for i in range(n_turns + 20)]
    raws = [orjson.dumps({"model": MODEL, "messages": msgs[t:t + 20]}) for t in range(n_turns)]
    bodies = [orjson.loads(r) for r in raws]  # fresh str objects per turn, as after parsing a request
    tokens._CACHE.clear()
    counter.chat(bodies[0])  # turn 0 fills the cache; then each turn brings one new message
    ntok = counter.chat(bodies[1])
    calls, spent = rate(counter.chat, bodies[2:], args.seconds)
    res["history"] = {"prompt_tokens": ntok, "prompts": calls, "prompts_per_s": calls / spent,
                      "tokens_per_s": calls * ntok / spent}
    tokens._CACHE.clear()
    return res


def forwarding(args, lines, counter, out_dir):
    """Start mock + gateway, forward 10k-token requests; req/s and gateway CPU ms per request."""
    encode = tokens.get_encoding(counter.name).encode_ordinary
    rng = random.Random(2)
    text = make_text(rng, lines, encode, args.tokens)
    body = {"model": MODEL, "max_tokens": 20, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "NONCE0000000 " + text}]}
    body_file = os.path.join(out_dir, "body-10k.json")
    with open(body_file, "wb") as f:
        f.write(orjson.dumps(body))

    py = sys.executable
    gw_bin = os.path.join(os.path.dirname(py), "gateway")
    pin = (lambda cpus: []) if args.no_pin else (lambda cpus: ["taskset", "-c", str(cpus)])
    mock_port, gw_port = free_port(), free_port()
    mock_base = "http://127.0.0.1:%d" % mock_port
    env = {k: v for k, v in os.environ.items() if k not in compare.SCRUB_ENV}
    env.update(compare.GATEWAY_ENV)
    env.update({"GATEWAY_API_KEYS": "sk-bench-1234", "BENCH_UPSTREAM": mock_base + "/v1",
                "BENCH_UPSTREAM_ROOT": mock_base, "AWS_ENDPOINT_URL_SAGEMAKER": mock_base, "PYTHONUNBUFFERED": "1"})
    mock = compare.Managed("mock", pin(args.client_cpu) + [py, os.path.join(HERE, "mock_upstream.py"), "--port", str(mock_port)],
                           env, out_dir, os.path.join(out_dir, "mock.log"))
    gw = compare.Managed("gateway", pin(args.cpu) + [gw_bin, "serve", "--config", compare.GATEWAY_CONFIG, "--port",
                                                     str(gw_port), "--workers", "1"],
                         env, out_dir, os.path.join(out_dir, "gateway.log"))
    res = {}
    try:
        mock.start()
        compare.wait_ready(mock_base, None, MODEL, mock, 15)
        gw_pid = gw.start()
        compare.wait_ready("http://127.0.0.1:%d" % gw_port, "sk-bench-1234", MODEL, gw, 60)
        for label, url, pid in (("direct", mock_base, None), ("gateway", "http://127.0.0.1:%d" % gw_port, gw_pid)):
            for kind, extra in (("unique", ["--unique-prompts"]), ("repeated", [])):
                argv = pin(args.client_cpu) + [py, os.path.join(HERE, "load.py"), "--url", url, "-n", str(args.requests),
                                               "-c", str(args.concurrency), "--body-file", body_file,
                                               "--max-seconds", str(args.seconds * 3), "--json", "-"] + extra
                cpu0 = compare.tree_cpu_s(pid) if pid else None
                r = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds * 8 + 60)
                cpu1 = compare.tree_cpu_s(pid) if pid else None
                try:
                    cell = json.loads(r.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    raise SystemExit("load.py failed: %s %s" % (r.stdout[-500:], r.stderr[-1500:]))
                if cell["errors"]:
                    raise SystemExit("errors forwarding 10k-token requests: %s" % cell["first_error"])
                done = cell["completed_ok"] + max(50, 2 * args.concurrency)  # + warm-up
                res[(label, kind)] = {"rps": cell["rps"], "p50_ms": cell["p50_ms"],
                                      "cpu_ms_per_req": 1000 * (cpu1 - cpu0) / done if pid else None}
    finally:
        gw.stop()
        mock.stop()
    return res


def free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=10000, help="prompt size (tokens)")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per counting phase (forwarding: up to 3x)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per forwarding cell (bounded by time too)")
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--cpu", default="0", help="core for counting and for the gateway")
    ap.add_argument("--client-cpu", default="1", help="core for the mock and the load generator")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--no-forward", action="store_true", help="only the in-process counting rates")
    ap.add_argument("--quick", action="store_true", help="1 s phases, 300 requests")
    ap.add_argument("--out", default=None, help="scratch dir for logs and the body file")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.requests = 1.0, 300
    out_dir = args.out or tempfile.mkdtemp(prefix="token-bench-")
    os.makedirs(out_dir, exist_ok=True)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(args.cpu.split(",")[0].split("-")[0])})

    t0 = time.perf_counter()
    counter = tokens.TokenCounter.for_model(MODEL)
    load_s = time.perf_counter() - t0
    lines = corpus_lines()
    cnt = counting(args, counter, lines)
    fwd = {} if args.no_forward else forwarding(args, lines, counter, out_dir)

    print("token counting vs forwarding, %d-token prompts (%s, encoding %s loaded in %.2fs; 1 core each)" % (
        args.tokens, MODEL, counter.name, load_s))
    print("%-40s %12s %14s" % ("counting (TokenCounter.chat, in-process)", "prompts/s", "Mtokens/s"))
    for kind in ("unique", "history"):
        c = cnt[kind]
        print("  %-38s %12.1f %14.2f   (%d-token prompts, %d counted)" % (
            kind, c["prompts_per_s"], c["tokens_per_s"] / 1e6, c["prompt_tokens"], c["prompts"]))
    if fwd:
        print("%-40s %12s %14s %12s" % ("forwarding (c=%d, load.py)" % args.concurrency, "req/s", "gw CPU ms/req", "p50 ms"))
        for (label, kind), f in fwd.items():
            print("  %-38s %12.1f %14s %12.2f" % ("%s, %s prompts" % (label, kind), f["rps"],
                                                 compare.fmt(f["cpu_ms_per_req"], 3), f["p50_ms"]))
        # The repeated cell's count is a cache hit (one hash of the text), so its CPU per request is
        # what forwarding a 10k-token request costs without counting; the unique cell minus the
        # in-process counting time must come out about the same (printed as a check).
        rep_ms = fwd[("gateway", "repeated")]["cpu_ms_per_req"]
        capacity = 1000 / rep_ms
        uniq = fwd[("gateway", "unique")]
        print("forwarding capacity of one core without counting = 1000 / %.3f ms (gateway CPU per repeated-prompt "
              "request, count cache hit) = %.0f req/s" % (rep_ms, capacity))
        print("  check: unique-prompt request %.3f ms - counting %.3f ms = %.3f ms" % (
            uniq["cpu_ms_per_req"], 1000 / cnt["unique"]["prompts_per_s"],
            uniq["cpu_ms_per_req"] - 1000 / cnt["unique"]["prompts_per_s"]))
        print("counting keeps up when counting prompts/s >= %.0f:" % capacity)
        for ckind in ("unique", "history"):
            rate_ = cnt[ckind]["prompts_per_s"]
            cnt[ckind]["forward_capacity_req_s"] = capacity
            cnt[ckind]["ratio"] = rate_ / capacity
            print("  %-8s %8.0f prompts/s = %5.2fx the forwarding capacity (%s)" % (
                ckind, rate_, rate_ / capacity, "keeps up" if rate_ >= capacity else "slower than forwarding"))
        # What the gateway does about it: a long plain prompt that surely fits is not counted on
        # the request path (the upstream's usage prices it), so compare what it really forwards.
        unique = fwd.get(("gateway", "unique"), {}).get("rps")
        repeated = fwd.get(("gateway", "repeated"), {}).get("rps")
        if unique and repeated:
            print("gateway forwarding, unique vs repeated prompts: %.0f / %.0f req/s = %.2f (%s)" % (
                unique, repeated, unique / repeated,
                "counting is not the bottleneck" if unique >= 0.9 * repeated else "COUNTING IS THE BOTTLENECK"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counting": cnt, "forwarding": {"%s/%s" % k: v for k, v in fwd.items()},
                       "tokens": args.tokens, "machine": compare.machine_info()}, f, indent=1)


if __name__ == "__main__":
    main()
