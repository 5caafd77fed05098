"""/metrics on a port of its own (``metrics.listen``), served by the same `gateway serve` process."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import httpx
import openai
import pytest
import yaml
from gateway_harness import ServedGateway, free_port, standin_config, wait_until
from prometheus_client.parser import text_string_to_metric_families

SKIP_ENV = "GATEWAY_SKIP_PROMETHEUS"  # as tests/grafana: Prometheus comes from Debian


def _config(tmp_path, openai_standin, **metrics) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(standin_config(openai_standin, metrics=metrics)))
    return path


def _requests_total(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_requests_total" and s.labels.get("status") == "200":
                return s.value
    return 0.0


def test_metrics_on_their_own_port_and_not_on_the_main_one(openai_standin, tmp_path):
    port = free_port()
    path = _config(tmp_path, openai_standin, listen=f"127.0.0.1:{port}", on_main_port=False)
    with ServedGateway(path, {"STANDIN_OPENAI_KEY": openai_standin.api_key, "GATEWAY_METRICS_KEYS": "mk-1"}) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"authorization": "Bearer mk-1"})
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
        assert _requests_total(scrape.text) == 1
        # the metrics key applies on this port as on the main one
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 404  # nothing else is served there
        main = httpx.get(f"{gw.url}/metrics", headers={"authorization": "Bearer mk-1"})
        assert main.status_code == 404 and main.json()["error"]["message"] == "Unknown path /metrics."
    assert "metrics on http://127.0.0.1:" in gw.stderr


def test_a_busy_metrics_port_stops_the_start_with_one_line(openai_standin, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        path = _config(tmp_path, openai_standin, listen=f"127.0.0.1:{busy.getsockname()[1]}")
        with pytest.raises(RuntimeError, match="cannot listen on metrics.listen 127.0.0.1:"):
            with ServedGateway(path, {"STANDIN_OPENAI_KEY": openai_standin.api_key}, start_timeout=60):
                pass


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path:
        return path
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"prometheus not installed and {SKIP_ENV}=1")
    pytest.fail("`prometheus` not found on PATH: apt-get install -y prometheus (scripts/test.sh does)", pytrace=False)


def _query(base: str, query: str) -> list:
    with urllib.request.urlopen(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=5) as r:
        return json.load(r)["data"]["result"]


def test_a_real_prometheus_scrapes_the_metrics_port_and_the_main_port_keeps_metrics(openai_standin, tmp_path):
    binary = _prometheus()
    port = free_port()
    path = _config(tmp_path, openai_standin, listen=f"127.0.0.1:{port}")  # on_main_port: true, the default
    with ServedGateway(path, {"STANDIN_OPENAI_KEY": openai_standin.api_key}) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert _requests_total(httpx.get(f"{gw.url}/metrics").text) == 3  # still on the main port
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
        web = free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
                                    stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{web}"
        try:
            def scraped() -> bool:
                with contextlib.suppress(OSError, KeyError, ValueError):
                    got = _query(base, 'sum(gateway_requests_total{job="gateway",status="200"})')
                    return bool(got) and float(got[0]["value"][1]) == 3
                return False

            assert wait_until(scraped, 90, 0.5), (tmp_path / "prometheus.log").read_text()[-2000:]
            assert float(_query(base, 'up{job="gateway"}')[0]["value"][1]) == 1
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
