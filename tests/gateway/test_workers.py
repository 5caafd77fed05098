"""`gateway serve --workers 2` on one Redis: metrics merged across workers, endpoint time counted once."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from gateway_harness import standin_config
from openai import OpenAI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted(m.group(2).split(","))) == want:
            return float(m.group(3))
    return 0.0


def test_two_workers_share_one_ledger(openai_standin, sagemaker_standin, redis_server, tmp_path):
    data = standin_config(openai_standin, sagemaker_standin, state={"redis_url": redis_server.url})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    port = _free_port()
    env = {**os.environ, "STANDIN_OPENAI_KEY": openai_standin.api_key}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path),
                             "--port", str(port), "--workers", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"workers did not come up: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ''}")
            time.sleep(0.1)
        for _ in range(30):  # new connections: the kernel spreads them over both workers
            OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        time.sleep(3)
        text = httpx.get(f"{url}/metrics").text
        elapsed = time.time() - started
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert _metric(text, "gateway_requests_total", backend="openai", model="gpt-4o-mini", status="200") == 30
    spent = _metric(text, "gateway_spend_usd_total", backend="sagemaker", model="")
    per_second = 1.408 / 3600
    assert 0 < spent <= elapsed * per_second * 1.05, "the endpoint's time was charged once per worker"
