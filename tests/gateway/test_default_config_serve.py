"""The shipped config.yaml and the `gateway serve` command, pointed at the stand-ins by env vars only."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MSG = [{"role": "user", "content": "hello"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(openai_standin, sagemaker_standin):
    port = _free_port()
    env = {**os.environ,
           "OPENAI_BASE_URL": openai_standin.base_url, "OPENAI_API_KEY": openai_standin.api_key,
           "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": sagemaker_standin.base_url,
           "SAGEMAKER_ENDPOINT_NAME": "standin-endpoint", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "GATEWAY_API_KEYS": "gw-test-key",
           # the control-plane poller must not look for AWS: a closed loopback port answers it
           "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:9"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", os.path.join(ROOT, "config.yaml"),
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate(timeout=5) if proc.poll() is not None else (b"", b"")
                pytest.fail(f"gateway serve did not come up: {err.decode()[-2000:]}")
            time.sleep(0.05)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_default_config_serves_all_three_names_streaming_included(served, openai_standin, sagemaker_standin):
    url, proc = served
    client = OpenAI(base_url=f"{url}/v1", api_key="gw-test-key", max_retries=0)
    backends = {}
    for model in ("gpt-4o-mini", "openai/gpt-4o-mini", "sagemaker/gpt-4o-mini"):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=MSG)
        assert raw.parse().choices[0].message.content
        backends[model] = raw.headers["x-gateway-backend"]
        text = "".join(c.choices[0].delta.content or ""
                       for c in client.chat.completions.create(model=model, messages=MSG, stream=True) if c.choices)
        assert text == "Hello from the stand-in."
    assert backends == {"gpt-4o-mini": "openai", "openai/gpt-4o-mini": "openai",
                        "sagemaker/gpt-4o-mini": "sagemaker"}
    assert client.embeddings.create(model="text-embedding-3-small", input="x").data
    assert len(sagemaker_standin.requests) == 2  # signed, and accepted by the verifying stand-in
    time.sleep(1.2)  # one state tick: endpoint time accrues
    metrics = httpx.get(f"{url}/metrics").text
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
    import signal

    import yaml
    from gateway_harness import standin_config

    data = standin_config(openai_standin, routing={"policy": "first_healthy"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    stat = path.stat()
    port = _free_port()
    env = {**os.environ, "STANDIN_OPENAI_KEY": openai_standin.api_key}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        data["routing"]["policy"] = "always_api"
        path.write_text(yaml.safe_dump(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # hide the change from the file watcher
        time.sleep(1.5)
        assert httpx.get(f"{url}/admin/routing").json()["policy"] == "first_healthy"
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/admin/routing").json()["policy"] != "always_api":
            assert time.monotonic() < deadline, "SIGHUP did not reload the config"
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
