"""Every expression in the Grafana dashboard parses and returns data from a real Prometheus.

No Grafana server can run here, so the dashboard is proven the way Grafana would use it:
`promtool check rules` on its expressions (syntax), then a real `prometheus` scraping a live
metrics source every second, queried through the HTTP API (a query that names a missing
metric or label returns nothing, or only NaN).

The metrics source is `stand_in_metrics_source()`: a tiny HTTP server over a fresh
`GatewayMetrics` that records one round of traffic per scrape (so rates and quantiles are
non-zero). Swap it for the real gateway behind stand-in upstreams once that exists.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

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


def record_traffic(m: GatewayMetrics) -> None:
    """One round of plausible traffic: two backends, cached prompts, an error, gauges."""
    for backend, cost_usd in (("openai", 0.0003), ("sagemaker", 0.0)):
        r = m.route(backend, "gpt-4o-mini")
        r.status(200).inc()
        r.reason("cheapest").inc()
        r.prompt.inc(120), r.cached.inc(40), r.completion.inc(30)
        r.spend.inc(cost_usd)
        r.attributed.inc(cost_usd or 0.0001)
        r.duration.observe(0.4), r.ttft.observe(0.1), r.overhead.observe(0.0004)
    m.route("openai", "gpt-4o-mini").status(429).inc()
    m.route("sagemaker", "").spend.inc(0.0004)  # instance time: no model
    m.api_only_cost.labels("gpt-4o-mini").inc(0.0009)  # more than spent: positive savings
    m.endpoint_instances.labels("sagemaker").set(1)
    m.recommended_instances.labels("sagemaker", "volume_above_break_even").set(2)
    m.break_even_rph.labels("sagemaker").set(900)
    m.volume_rph.labels("gpt-4o-mini", "5m").set(1200)


@contextlib.contextmanager
def stand_in_metrics_source():
    """Yields "127.0.0.1:PORT" serving /metrics of a fresh GatewayMetrics; each scrape adds traffic."""
    m = GatewayMetrics(CollectorRegistry())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            record_traffic(m)
            body = generate_latest(m.registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
    with stand_in_metrics_source() as target:
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
            deadline, scrapes = time.monotonic() + 20, 0
            while scrapes < MIN_SCRAPES:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp / "prometheus.log").read_text()[-2000:]
                    pytest.fail(f"prometheus did not scrape {target} {MIN_SCRAPES} times "
                                f"(exit {proc.poll()}, {scrapes} scrapes):\n{tail}")
                time.sleep(0.25)
                with contextlib.suppress(OSError):
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
