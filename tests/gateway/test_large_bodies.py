"""Large bodies on the real server (issue 8): parsing one must not hold the event loop.

`gateway serve` runs in its own process against bench/mock_upstream.py in another, so that
nothing in this process (which times the answers) parses the big bodies and holds its GIL.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest
import yaml
from gateway_harness import ROOT, ServedGateway, free_port, wait_until
from probes import Timed, healthz

MOCK = os.path.join(ROOT, "bench", "mock_upstream.py")


def _mock_upstream():
    port = free_port()
    proc = subprocess.Popen([sys.executable, MOCK, "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/health").status_code == 200
        except httpx.TransportError:
            return False

    if not wait_until(ready, 30):
        proc.terminate()
        raise RuntimeError("mock upstream did not start")
    return proc, url


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`gateway serve`: gpt-4o-mini on one mock upstream (busy with the big bodies), "small" on another."""
    (big, big_url), (small, small_url) = _mock_upstream(), _mock_upstream()
    path = tmp_path_factory.mktemp("large") / "config.yaml"
    path.write_text(yaml.safe_dump({
        "routing": {"policy": "first_healthy"},
        "backends": {"big": {"type": "openai", "base_url": f"{big_url}/v1", "api_key_env": "MOCK_KEY"},
                     "small": {"type": "openai", "base_url": f"{small_url}/v1", "api_key_env": "MOCK_KEY"}},
        "models": {"gpt-4o-mini": {"backends": [{"backend": "big", "model": "gpt-4o-mini"}]},
                   "small": {"backends": [{"backend": "small", "model": "gpt-4o-mini"}]},
                   "text-embedding-3-small": {"kind": "embeddings", "backends": [{"backend": "big"}]}},
    }))
    try:
        with ServedGateway(path, {"MOCK_KEY": "sk-mock"}) as gw:
            yield gw
    finally:
        for proc in (big, small):
            proc.terminate()
            proc.wait(10)


def _three_at_once(post) -> list[int]:
    """Three big requests at once (``post(client) -> response``), after the pollers started: their statuses."""
    results = []

    def big():
        with httpx.Client(timeout=120) as c:
            results.append(post(c).status_code)

    time.sleep(0.1)
    threads = [threading.Thread(target=big) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return results


SMALL = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


def test_huge_bodies_of_tiny_messages_do_not_hold_healthz_or_a_small_request(served):
    # a million one-word messages (31 MB, under the 32 MiB cap), streamed: parsed, checked, counted and
    # rewritten (stream_options) in pieces off the loop. On the loop, one body held it for its whole parse
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}] * 1_000_000})
    t0 = time.perf_counter()
    orjson.loads(body)
    parse_s = time.perf_counter() - t0  # what one body held the loop for, at the least, before
    with httpx.Client(timeout=120) as c:
        t0 = time.monotonic()
        alone = c.post(f"{served.base_url}/chat/completions", content=body)
        alone_s = time.monotonic() - t0
    assert alone.status_code == 200 and alone.text.rstrip().endswith("data: [DONE]"), alone.text[:300]

    with healthz(served.url) as health, \
            Timed(lambda c: c.post(f"{served.base_url}/chat/completions", json=SMALL).status_code) as small:
        results = _three_at_once(lambda c: c.post(f"{served.base_url}/chat/completions", content=body))
    assert results == [200, 200, 200]
    assert health.polls >= 5 and small.polls >= 5 and not health.failures and not small.failures
    print(f"one 31 MB body alone {alone_s:.2f} s (orjson alone {parse_s * 1000:.0f} ms); three at once: slowest "
          f"/healthz {health.slowest * 1000:.0f} ms over {health.polls} polls, slowest small chat "
          f"{small.slowest * 1000:.0f} ms over {small.polls}")
    # a loop held for one parse (and the walk that checks the messages) makes some poll wait longer than
    # that parse alone; three bodies in a row, about three times as long
    assert health.slowest < parse_s and small.slowest < parse_s


def test_huge_answers_do_not_hold_healthz(served):
    # 2,048 embeddings of 1,536 floats: a ~60 MB answer, read for its usage. Parsed whole on the loop,
    # each one held it for its whole parse (and freeing it, as long again)
    ask = {"model": "text-embedding-3-small", "dimensions": 1536, "input": [f"text {i}" for i in range(2048)]}
    with httpx.Client(timeout=120) as c:
        alone = c.post(f"{served.base_url}/embeddings", json=ask)
    assert alone.status_code == 200 and len(alone.json()["data"][0]["embedding"]) == 1536
    t0 = time.perf_counter()
    orjson.loads(alone.content)
    parse_s = time.perf_counter() - t0
    with healthz(served.url) as health:
        results = _three_at_once(lambda c: c.post(f"{served.base_url}/embeddings", json=ask))
    assert results == [200, 200, 200] and health.polls >= 5 and not health.failures
    print(f"{len(alone.content) / 1e6:.0f} MB answers (orjson alone {parse_s * 1000:.0f} ms): slowest /healthz "
          f"{health.slowest * 1000:.0f} ms over {health.polls} polls")
    assert health.slowest < parse_s


def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


@pytest.mark.parametrize("bodies", [1, 8])
def test_memory_per_large_text_body_stays_near_three_times_its_size(served, bodies):
    # the kernel's high-water mark of the served gateway's RSS, reset first (clear_refs 5); 31 MB bodies
    # of one word each cost 4.0x (one) at 661dc57: the pieces joined beside the bytes, the whole body
    # copied into the upstream transport's buffer, and glibc keeping freed bodies in its heaps
    pid = served.proc.pid
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a" * 31_000_000}]})
    mib = len(body) / 2**20
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    idle = _status_mb(pid, "VmRSS")
    results = []

    def big():
        with httpx.Client(timeout=180) as c:
            results.append(c.post(f"{served.base_url}/chat/completions", content=body).status_code)

    threads = [threading.Thread(target=big) for _ in range(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results == [200] * bodies
    peak = _status_mb(pid, "VmHWM")
    # freed bodies go back to the OS (glibc kept them in its heaps: 584 MB stayed after eight)
    given_back = wait_until(lambda: _status_mb(pid, "VmRSS") < idle + 4 * mib, 10)
    per_body = (peak - idle) / bodies / mib
    print(f"{bodies} x {mib:.0f} MiB: RSS idle {idle:.0f} MB, peak {peak:.0f} MB, {per_body:.1f}x a body, "
          f"after {_status_mb(pid, 'VmRSS'):.0f} MB")
    assert given_back
    assert per_body < 3.6
