"""`gateway serve --workers 2` on one Redis: metrics merged across workers, endpoint time counted once."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import yaml
from gateway_harness import ROOT, ServedGateway, standin_config
from openai import OpenAI


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted(m.group(2).split(","))) == want:
            return float(m.group(3))
    return 0.0


def test_two_workers_share_one_ledger(openai_standin, sagemaker_standin, shared_redis, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(standin_config(openai_standin, sagemaker_standin,
                                                  state={"redis_url": shared_redis.url,
                                                         "redis_cluster": shared_redis.cluster})))
    started = time.time()
    with ServedGateway(path, {"STANDIN_OPENAI_KEY": openai_standin.api_key}, "--workers", "2") as gw:
        for _ in range(30):  # a new connection each: the kernel spreads them over both workers
            OpenAI(base_url=gw.base_url, api_key="x", max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        time.sleep(3)
        text = httpx.get(f"{gw.url}/metrics").text
        elapsed = time.time() - started
    assert _metric(text, "gateway_requests_total", backend="openai", model="gpt-4o-mini", status="200") == 30
    spent = _metric(text, "gateway_spend_usd_total", backend="sagemaker", model="")
    per_second = 1.408 / 3600
    assert 0 < spent <= elapsed * per_second * 1.05, "the endpoint's time was charged once per worker"


def test_several_workers_without_redis_are_refused(openai_standin, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(standin_config(openai_standin)))
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--workers", "2"],
                          capture_output=True, timeout=60, cwd=ROOT, env={**os.environ, "REDIS_URL": ""})
    assert proc.returncode == 2
    assert b"state.redis_url: required with --workers 2" in proc.stderr
