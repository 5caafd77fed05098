"""Secure by default (issue 8, item 9): no keys means loopback only; /metrics can be put behind a key."""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from gateway_harness import ROOT, RunningGateway, build_config, standin_config

from gateway.cli import keyless_refusal
from gateway.config import parse_config
from redis_server import free_port


def test_serve_refuses_a_network_address_without_keys():
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_API_KEYS", "GATEWAY_ADMIN_KEYS")}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", "config.yaml", "--host", "0.0.0.0",
                           "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 with no gateway keys" in done.stderr and "GATEWAY_API_KEYS" in done.stderr


@pytest.mark.parametrize("host, env, auth, refused", [
    ("0.0.0.0", {}, {}, True),
    ("10.1.2.3", {}, {}, True),
    ("gateway.internal", {}, {}, True),  # a name may resolve to anything
    ("127.0.0.1", {}, {}, False),
    ("::1", {}, {}, False),
    ("localhost", {}, {}, False),
    ("0.0.0.0", {"GATEWAY_API_KEYS": "k1"}, {}, False),
    ("0.0.0.0", {}, {"allow_keyless_network": True}, False),
])
def test_which_hosts_need_keys(host, env, auth, refused, openai_standin):
    cfg = parse_config(standin_config(openai_standin, auth=auth), "test-config", env)
    assert (keyless_refusal(cfg, host, "test-config") is not None) == refused


def test_metrics_behind_a_key(openai_standin):
    cfg = build_config(standin_config(openai_standin), {"GATEWAY_METRICS_KEYS": "mk-1", "GATEWAY_ADMIN_KEYS": "ak-1",
                                                         "GATEWAY_API_KEYS": "ck-1"}, openai=openai_standin)
    with RunningGateway(cfg) as gw:
        r = httpx.get(f"{gw.url}/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{gw.url}/metrics", headers={"authorization": "Bearer ck-1"}).status_code == 401
        for key in ("mk-1", "ak-1"):
            r = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200 and "gateway_" in r.text
        assert httpx.get(f"{gw.url}/healthz").status_code == 200  # probes need no key
