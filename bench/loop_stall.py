#!/usr/bin/env python3
"""The longest event-loop stall of the gateway while large bodies are handled (issue 8).

Runs the gateway in this process (uvicorn in a thread, its loop carrying a probe that sleeps
1 ms and records how late it wakes) against bench/mock_upstream.py in another process, sends
``--bodies`` large requests at once from threads, and prints the longest stall, the slowest
/healthz, the process's peak RSS and its garbage collector's longest pass. With ``--served``
the gateway is `gateway serve` in a process of its own instead, and its RSS (idle, peak from
the kernel's high-water mark, after) is the gateway's alone; no loop probe then.

    python bench/loop_stall.py --shape tiny --bodies 3          # 1M one-word messages, 31 MB
    python bench/loop_stall.py --shape word --bodies 8          # one 31 MB word
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import httpx
import orjson
import uvicorn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from gateway.app import create_app  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.http.protocol import DeadlineHttpToolsProtocol  # noqa: E402

SHAPES = {
    "tiny": lambda: {"messages": [{"role": "user", "content": "hi"}] * 1_000_000},
    "word": lambda: {"messages": [{"role": "user", "content": "a" * 31_000_000}]},
    "ints": lambda: {"messages": [{"role": "user", "content": "hi"}], "metadata": {"x": [[1] * 8] * 1_000_000}},
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--bodies", type=int, default=3)
    ap.add_argument("--stream", action="store_true", help="stream: true (the body is rewritten)")
    ap.add_argument("--served", action="store_true", help="`gateway serve` in its own process: its RSS alone")
    args = ap.parse_args()
    if args.served:
        return served(args)

    mport, gport = _port(), _port()
    mock = subprocess.Popen([sys.executable, os.path.join(HERE, "mock_upstream.py"), "--port", str(mport)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = parse_config({
        "routing": {"policy": "first_healthy"},
        "backends": {"openai": {"type": "openai", "base_url": f"http://127.0.0.1:{mport}/v1", "api_key_env": "K"}},
        "models": {"gpt-4o-mini": {"backends": [{"backend": "openai", "model": "gpt-4o-mini"}]}},
    }, "loop_stall", {"K": "sk-mock"})
    app = create_app(cfg)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=gport, loop="asyncio",
                                           http=DeadlineHttpToolsProtocol, log_level="warning", access_log=False))
    stalls: list[float] = []
    gc_passes: list[float] = []
    started = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            gc_passes.append(time.perf_counter() - started[0])

    async def probe():
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - t - 0.001)

    def serve():
        loop = asyncio.new_event_loop()
        loop.create_task(probe())
        loop.run_until_complete(server.serve())

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{gport}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(
                    f"http://127.0.0.1:{mport}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": args.stream, **SHAPES[args.shape]()})
    idle = _rss_mb()
    health = []
    done = threading.Event()
    statuses = []

    def poll():
        with httpx.Client(timeout=60) as c:
            while not done.is_set():
                t = time.perf_counter()
                c.get(f"{url}/healthz")
                health.append(time.perf_counter() - t)
                time.sleep(0.02)

    def big():
        with httpx.Client(timeout=300) as c:
            statuses.append(c.post(f"{url}/v1/chat/completions", content=body).status_code)

    peak = [idle]

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.01)

    time.sleep(0.5)
    stalls.clear()
    gc.callbacks.append(on_gc)
    t0 = time.perf_counter()
    helpers = [threading.Thread(target=poll), threading.Thread(target=watch)]
    senders = [threading.Thread(target=big) for _ in range(args.bodies)]
    for t in helpers + senders:
        t.start()
    for t in senders:
        t.join()
    elapsed = time.perf_counter() - t0
    done.set()
    for t in helpers:
        t.join()
    gc.callbacks.remove(on_gc)
    server.should_exit = True
    mock.terminate()
    mock.wait(10)
    print(f"{args.bodies} x {len(body) / 1e6:.1f} MB ({args.shape}{', stream' if args.stream else ''}): "
          f"statuses {sorted(statuses)}, all answered in {elapsed:.2f} s; longest loop stall "
          f"{max(stalls) * 1000:.0f} ms; slowest /healthz {max(health) * 1000:.0f} ms over {len(health)} polls; "
          f"longest GC pass {max(gc_passes, default=0) * 1000:.0f} ms; RSS idle {idle:.0f} MB, "
          f"peak {peak[0]:.0f} MB (body {len(body) / 2**20:.0f} MiB; ru_maxrss "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


def _status(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def served(args) -> None:
    import tempfile

    import yaml

    mport, gport = _port(), _port()
    mock = subprocess.Popen([sys.executable, os.path.join(HERE, "mock_upstream.py"), "--port", str(mport)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({
            "routing": {"policy": "first_healthy"},
            "backends": {"openai": {"type": "openai", "base_url": f"http://127.0.0.1:{mport}/v1", "api_key_env": "K"}},
            "models": {"gpt-4o-mini": {"backends": [{"backend": "openai", "model": "gpt-4o-mini"}]}},
        }, f)
    gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", f.name, "--port", str(gport)],
                          cwd=os.path.dirname(HERE), env={**os.environ, "K": "sk-mock"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{gport}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200 and httpx.get(
                        f"http://127.0.0.1:{mport}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        body = orjson.dumps({"model": "gpt-4o-mini", "stream": args.stream, **SHAPES[args.shape]()})
        httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "hi"}]})
        idle = _status(gw.pid, "VmRSS")
        statuses = []

        def big():
            with httpx.Client(timeout=300) as c:
                statuses.append(c.post(f"{url}/v1/chat/completions", content=body).status_code)

        senders = [threading.Thread(target=big) for _ in range(args.bodies)]
        t0 = time.perf_counter()
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        elapsed = time.perf_counter() - t0
        time.sleep(1)
        peak, after = _status(gw.pid, "VmHWM"), _status(gw.pid, "VmRSS")
        print(f"gateway serve, {args.bodies} x {len(body) / 1e6:.1f} MB ({args.shape}"
              f"{', stream' if args.stream else ''}): statuses {sorted(statuses)} in {elapsed:.2f} s; RSS idle "
              f"{idle:.0f} MB, peak {peak:.0f} MB (+{(peak - idle) / args.bodies:.0f} MB a body, "
              f"{(peak - idle) / args.bodies / (len(body) / 2**20):.1f}x its size), after {after:.0f} MB")
    finally:
        gw.terminate()
        mock.terminate()
        gw.wait(30)
        mock.wait(10)
        os.unlink(f.name)


if __name__ == "__main__":
    main()
