"""The shipped config.yaml and the `gateway serve` command, pointed at the stand-ins by env vars only."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml
from gateway_harness import ROOT, ServedGateway, standin_config, wait_until
from openai import OpenAI

MSG = [{"role": "user", "content": "hello"}]


def standin_env(openai_standin, sagemaker_standin, **extra) -> dict:
    """The shipped config.yaml pointed at the stand-ins; AWS's control plane is a closed loopback port."""
    return {"OPENAI_BASE_URL": openai_standin.base_url, "OPENAI_API_KEY": openai_standin.api_key,
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": sagemaker_standin.base_url,
            "SAGEMAKER_ENDPOINT_NAME": "standin-endpoint", "AWS_REGION": "us-east-1",
            "GATEWAY_API_KEYS": "gw-test-key",
            # the control-plane poller must not look for AWS: a closed loopback port answers it
            "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:9",
            "REDIS_URL": "", **extra}


@pytest.fixture
def served(openai_standin, sagemaker_standin):
    # Credentials that may invoke the endpoint, a control plane that never answers, and the
    # config's word for how many instances run: a deployment without DescribeEndpoint.
    env = standin_env(openai_standin, sagemaker_standin, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", SAGEMAKER_ASSUMED_INSTANCES="1")
    with ServedGateway(os.path.join(ROOT, "config.yaml"), env) as gw:
        yield gw


def _spend_samples(metrics: str, backend: str) -> list[float]:
    prefix = f'gateway_spend_usd_total{{backend="{backend}"'
    return [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)]


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
    # break_even (the default): the assumed instance is in service, hence paid for: use it
    assert backends == {"gpt-4o-mini": "sagemaker", "openai/gpt-4o-mini": "openai",
                        "sagemaker/gpt-4o-mini": "sagemaker"}
    state = lambda: httpx.get(f"{served.url}/readyz").json()["endpoints"]["sagemaker"]  # noqa: E731
    assert wait_until(lambda: state()["reason"] == "control plane unreachable"), state()
    assert (state()["state"], state()["status"], state()["instances_in_service"]) == ("assumed", "Assumed", 1)
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


def test_default_config_without_aws_credentials_neither_charges_nor_tries_the_endpoint(openai_standin,
                                                                                       sagemaker_standin):
    """Only an OpenAI key: the endpoint is unconfirmed, costs nothing and sees no request."""
    env = {var: None for var in os.environ if var.startswith("AWS_")}  # no keys, profile or token
    env.update(standin_env(openai_standin, sagemaker_standin, GATEWAY_ADMIN_KEYS="gw-admin-key"),
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_CONFIG_FILE="/dev/null",
               AWS_EC2_METADATA_DISABLED="true")  # nor any file or instance role to find them in
    with ServedGateway(os.path.join(ROOT, "config.yaml"), env) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="gw-test-key", max_retries=0)
        ready = lambda: httpx.get(f"{gw.url}/readyz").json()  # noqa: E731
        assert wait_until(lambda: ready()["endpoints"]["sagemaker"]["reason"] == "no AWS credentials", 10), ready()
        reasons = set()
        for stream in (False, True, False, True):
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG, stream=stream)
            assert raw.headers["x-gateway-backend"] == "openai"
            reasons.add(raw.headers["x-gateway-route-reason"])
            if stream:
                assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            else:
                assert raw.parse().choices[0].message.content
        assert client.embeddings.create(model="text-embedding-3-small", input="x").data
        # 9.6 KB of body but ~1,600 tokens: it fits the endpoint's 8,192, which is only not in service
        long = [{"role": "user", "content": "hello " * 1600}]
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=long)
        reasons.add(raw.headers["x-gateway-route-reason"])
        assert reasons == {"endpoint_not_in_service"}  # straight to the API: no failover_* first
        assert sagemaker_standin.requests == []
        time.sleep(2.2)  # two state ticks: an endpoint that were charged would have accrued by now
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert all(v == 0 for v in _spend_samples(metrics, "sagemaker")), _spend_samples(metrics, "sagemaker")
        assert sum(_spend_samples(metrics, "openai")) > 0
        body = ready()
        assert body["ready"] is True
        assert body["endpoints"]["sagemaker"] | {"last_error": None} == {
            "state": "unconfirmed", "status": "unconfirmed", "reason": "no AWS credentials",
            "instances_in_service": 0, "desired_instances": 0, "last_error": None, "confirmed_at": None,
            "instances_billed": 0, "inference_component": {"name": "gateway-selfhosted", "status": None,
                                                           "copies": 0, "desired_copies": 0}}
        assert "NoCredentialsError" in body["endpoints"]["sagemaker"]["last_error"]
        admin = httpx.get(f"{gw.url}/admin/routing", headers={"Authorization": "Bearer gw-admin-key"}).json()
        endpoint = admin["endpoints"]["sagemaker"]
        assert (endpoint["state"], endpoint["reason"], endpoint["instances_in_service"]) == \
            ("unconfirmed", "no AWS credentials", 0)
        assert "sagemaker" not in admin["spend_usd"] or float(admin["spend_usd"]["sagemaker"]) == 0
        assert float(admin["savings"]["saved_usd"]) == 0  # all on the API: nothing saved, nothing lost
        # Pinned: the client asked for the endpoint; it is not charged, and without credentials
        # nothing can be signed, so nothing is sent either.
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="sagemaker/gpt-4o-mini", messages=MSG)
        assert "no AWS credentials" in e.value.message and sagemaker_standin.requests == []
    said = [line for line in gw.stderr.splitlines() if "unconfirmed: no AWS credentials" in line]
    assert len(said) == 1, gw.stderr
    assert "assumed_instances" in said[0] and openai_standin.api_key not in gw.stderr


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
