"""Every expression in the Grafana dashboard parses and returns data from a real Prometheus.

No Grafana server can run here, so the dashboard is proven the way Grafana would use it:
`promtool check rules` on its expressions (syntax), then a real `prometheus` scraping a live
metrics source every second, queried through the HTTP API (a query that names a missing
metric or label returns nothing, or only NaN).

The metrics source is the real gateway (in-process, on the stand-in upstreams) under
steady traffic through the openai SDK, so rates and quantiles are non-zero.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana" / "dashboards" / "gateway.json"
# Grafana's own variables, at the shortest window a few seconds of 1 s scrapes can fill;
# the dashboard's multi-value variables at "All".
VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m", "backend": ".*", "model": ".*"}
MIN_SCRAPES = 3
SKIP_ENV = "GATEWAY_SKIP_PROMETHEUS"


def substitute(expr: str) -> str:
    def one(m: re.Match) -> str:
        if m.group(1) not in VARIABLES:
            raise KeyError(f"dashboard uses variable ${m.group(1)} the test does not know: add it to VARIABLES")
        return VARIABLES[m.group(1)]

    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", one, expr)


def _panels(panels: list) -> Iterator[dict]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # panels inside collapsed rows


def dashboard_queries() -> list[tuple[str, str]]:
    """(id, raw expr) for every panel target and every label_values() variable."""
    dash = json.loads(DASHBOARD.read_text())
    out = [(f"{p['title']}/{t['refId']}", t["expr"]) for p in _panels(dash["panels"]) for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"].strip())
            assert m, f"variable {v['name']}: only label_values(selector, label) is understood here"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


QUERIES = dashboard_queries()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{name} not installed and {SKIP_ENV}=1")
    pytest.fail(f"`{name}` not found on PATH: install the Debian package (apt-get install -y prometheus), "
                f"or set {SKIP_ENV}=1 to skip the dashboard checks", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def real_gateway_metrics_source():
    """Yields "127.0.0.1:PORT": the real gateway over the stand-in upstreams, under steady traffic.

    break_even against gpt-4o prices with one endpoint instance in service, so that every
    panel has something to show: API and endpoint requests (plain and streamed), an
    upstream 429, endpoint instance time, a finite break-even volume and a recommendation.
    """
    from gateway_harness import RunningGateway, build_config, standin_config
    from openai import OpenAI
    from gateway.standins.openai_server import OpenAIStandIn
    from gateway.standins.sagemaker_server import SageMakerStandIn

    with OpenAIStandIn() as api, SageMakerStandIn() as endpoint:
        data = standin_config(api, endpoint, routing={"policy": "break_even", "capacity_interval_s": 0.5})
        data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "cached_input": 1.25, "output": 10}}
        api.script(prompt_tokens=1200, completion_tokens=300, cached_tokens=400)
        endpoint.script(prompt_tokens=1200, completion_tokens=300)
        env = {"GATEWAY_KEY_SECRET": "dashboard-test", "GATEWAY_ADMIN_KEYS": "adm-dashboard"}
        with RunningGateway(build_config(data, env, openai=api)) as gw:
            # all traffic on one budgeted virtual key of a team: the keys panels have data too
            import httpx
            adm = {"authorization": "Bearer adm-dashboard"}
            assert httpx.post(f"{gw.url}/admin/teams", json={"team": "web", "budget_usd": 1000},
                              headers=adm).status_code == 201
            made = httpx.post(f"{gw.url}/admin/keys", json={"alias": "shop", "team": "web", "budget_usd": 1000},
                              headers=adm)
            client = OpenAI(base_url=gw.base_url, api_key=made.json()["key"], max_retries=0)
            stop = threading.Event()

            def traffic():
                msg = [{"role": "user", "content": "hello"}]
                while not stop.is_set():
                    for model in ("gpt-4o-mini", "openai/gpt-4o-mini", "sagemaker/gpt-4o-mini"):
                        client.chat.completions.create(model=model, messages=msg)
                        list(client.chat.completions.create(model=model, messages=msg, stream=True))
                    api.fail_next(429)
                    with contextlib.suppress(Exception):
                        client.chat.completions.create(model="openai/gpt-4o-mini", messages=msg)
                    stop.wait(0.2)

            thread = threading.Thread(target=traffic, daemon=True)
            thread.start()
            try:
                yield gw.url.removeprefix("http://")
            finally:
                stop.set()
                thread.join(timeout=10)


def _api(base: str, path: str, **params) -> dict:
    try:
        with urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(params)}", timeout=5) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # 400/422 carry Prometheus' own reason, e.g. a parse error
        raise AssertionError(f"{params}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory) -> str:
    """Base URL of a real Prometheus that has scraped the metrics source at least MIN_SCRAPES times."""
    binary = _binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    with real_gateway_metrics_source() as target:
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = _free_port()
        log = open(tmp / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            # Prometheus batches target discovery: the first scrape comes ~5 s after start.
            deadline, scrapes = time.monotonic() + 60, 0
            while scrapes < MIN_SCRAPES:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp / "prometheus.log").read_text()[-2000:]
                    pytest.fail(f"prometheus did not scrape {target} {MIN_SCRAPES} times "
                                f"(exit {proc.poll()}, {scrapes} scrapes):\n{tail}")
                time.sleep(0.25)
                with contextlib.suppress(OSError):
                    # 503 until its storage is up (HTTPError is an OSError): a query fails before that
                    urllib.request.urlopen(f"{base}/-/ready", timeout=5).close()
                    result = _api(base, "/api/v1/query", query='sum_over_time(up{job="gateway"}[1m])')["result"]
                    scrapes = int(float(result[0]["value"][1])) if result else 0
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def test_promtool_accepts_every_expression(tmp_path):
    promtool = _binary("promtool")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(QUERIES)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("expr", [e for _, e in QUERIES], ids=[i for i, _ in QUERIES])
def test_expression_returns_data(prometheus, expr):
    result = _api(prometheus, "/api/v1/query", query=substitute(expr))["result"]
    assert result, f"no series for {substitute(expr)}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"only NaN/Inf for {substitute(expr)}: {values}"


def test_multi_value_variables_use_regex_matchers():
    """$backend/$model may hold several values ("a|b"): `=` would silently match nothing."""
    for qid, expr in QUERIES:
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
            assert "$" not in value or op in ("=~", "!~"), f"{qid}: {label}{op}\"{value}\" needs =~"


def _exported_series(registry: CollectorRegistry) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in registry.collect() for s in suffixes.get(f.type, ("",))}


def test_dashboard_metrics_are_exported():
    referenced = {n for _, e in QUERIES for n in re.findall(r"\bgateway_\w+", e)}
    missing = referenced - _exported_series(GatewayMetrics(CollectorRegistry()).registry)
    assert not missing, f"dashboard plots metrics GatewayMetrics does not export: {sorted(missing)}"
