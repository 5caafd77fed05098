"""The shipped config.yaml and the `gateway serve` command, pointed at the stand-ins by env vars only."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from gateway_harness import ROOT, ServedGateway, standin_config, wait_until
from openai import OpenAI

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def served(openai_standin, sagemaker_standin):
    env = {"OPENAI_BASE_URL": openai_standin.base_url, "OPENAI_API_KEY": openai_standin.api_key,
           "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": sagemaker_standin.base_url,
           "SAGEMAKER_ENDPOINT_NAME": "standin-endpoint", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "GATEWAY_API_KEYS": "gw-test-key",
           # the control-plane poller must not look for AWS: a closed loopback port answers it
           "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:9",
           "REDIS_URL": ""}
    with ServedGateway(os.path.join(ROOT, "config.yaml"), env) as gw:
        yield gw


def test_default_config_serves_all_three_names_streaming_included(served, openai_standin, sagemaker_standin):
    client = OpenAI(base_url=served.base_url, api_key="gw-test-key", max_retries=0)
    backends = {}
    for model in ("gpt-4o-mini", "openai/gpt-4o-mini", "sagemaker/gpt-4o-mini"):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MSG)
        assert raw.parse().choices[0].message.content
        backends[model] = raw.headers["x-gateway-backend"]
        text = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(model=model, messages=MSG, stream=True) if c.choices)
        assert text == "Hello from the stand-in."
    # break_even (the default): the configured instance is in service, hence paid for: use it
    assert backends == {"gpt-4o-mini": "sagemaker", "openai/gpt-4o-mini": "openai",
                        "sagemaker/gpt-4o-mini": "sagemaker"}
    assert client.embeddings.create(model="text-embedding-3-small", input="x").data
    assert len(sagemaker_standin.requests) == 4  # signed, and accepted by the verifying stand-in
    time.sleep(1.2)  # one state tick: endpoint time accrues
    metrics = httpx.get(f"{served.url}/metrics").text
    for line in ('gateway_tokens_total{backend="openai",kind="completion",model="gpt-4o-mini"}',
                 'gateway_tokens_total{backend="sagemaker",kind="completion",model="gpt-4o-mini"}',
                 'gateway_spend_usd_total{backend="openai",model="gpt-4o-mini"}',
                 'gateway_spend_usd_total{backend="sagemaker",model=""}'):
        value = float(next(x for x in metrics.splitlines() if x.startswith(line)).split()[-1])
        assert value > 0, line
    assert openai_standin.api_key not in metrics


def test_serve_rejects_an_invalid_config_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends:\n  openai:\n    type: openai\n    api_key: sk-secret\nmodels: {}\n")
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(bad)],
                          capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert b"backends.openai.api_key" in proc.stderr and b"sk-secret" not in proc.stderr


def test_sighup_reloads_thresholds_in_a_served_gateway(openai_standin, tmp_path):
    data = standin_config(openai_standin, routing={"policy": "first_healthy"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    stat = path.stat()
    with ServedGateway(path, {"STANDIN_OPENAI_KEY": openai_standin.api_key}) as gw:
        policy = lambda: httpx.get(f"{gw.url}/admin/routing").json()["policy"]  # noqa: E731
        data["routing"]["policy"] = "always_api"
        path.write_text(yaml.safe_dump(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # hide the change from the file watcher
        time.sleep(1.5)
        assert policy() == "first_healthy"
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: policy() == "always_api", 5), "SIGHUP did not reload the config"
