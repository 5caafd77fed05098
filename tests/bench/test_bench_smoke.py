"""Smoke version of the overhead benchmark (bench/): no thresholds, only "everything answers".

Starts bench/mock_upstream.py and the real gateway (`gateway serve --config
bench/gateway_bench.yaml`) as subprocesses on free loopback ports, then drives them with
bench/load.py: a few hundred plain and streamed requests must all come back 200 with a
complete body. A last test runs bench/compare.py itself on tiny cells so the harness's
own code (process control, /proc readings, summary, targets) keeps working.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench")
KEY = "sk-bench-1234"
# Never inherited: they would point the gateway at shared state or other configs.
SCRUB = ("REDIS_URL", "GATEWAY_CONFIG", "GATEWAY_API_KEYS", "PROMETHEUS_MULTIPROC_DIR", "AWS_PROFILE",
         "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, key: str | None, timeout: float = 30.0) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ready?"}]}).encode()
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited during start-up with {proc.returncode}")
        req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        if key:
            req.add_header("Authorization", "Bearer " + key)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready after {timeout}s: {last!r}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def bench_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update({"PYTHONUNBUFFERED": "1", "AWS_ACCESS_KEY_ID": "AKIDBENCH", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                "BENCH_DIR": str(tmp_path)})
    return env


@pytest.fixture
def mock_and_gateway(tmp_path, bench_env):
    """(mock base URL, gateway base URL, gateway log path): both running until the test ends."""
    mock_port, gw_port = _free_port(), _free_port()
    mock_url, gw_url = f"http://127.0.0.1:{mock_port}", f"http://127.0.0.1:{gw_port}"
    env = dict(bench_env, GATEWAY_API_KEYS=KEY, BENCH_UPSTREAM=mock_url + "/v1", BENCH_UPSTREAM_ROOT=mock_url,
               AWS_ENDPOINT_URL_SAGEMAKER=mock_url)  # the DescribeEndpoint poller, too
    gw_log = tmp_path / "gateway.log"
    procs = []
    try:
        with open(tmp_path / "mock.log", "wb") as mock_out:
            procs.append(subprocess.Popen([sys.executable, os.path.join(BENCH, "mock_upstream.py"), "--port", str(mock_port)],
                                          stdout=mock_out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        _wait_ready(mock_url, procs[0], None)
        with open(gw_log, "wb") as gw_out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", os.path.join(BENCH, "gateway_bench.yaml"),
                 "--port", str(gw_port)],
                stdout=gw_out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        _wait_ready(gw_url, procs[1], KEY)
        yield mock_url, gw_url, gw_log
    finally:
        for p in reversed(procs):
            _stop(p)


def _load(url: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, os.path.join(BENCH, "load.py"), "--url", url, "--json", "-",
                        "--max-seconds", "20", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_gateway_answers_every_plain_and_streamed_request(mock_and_gateway):
    _, gw_url, gw_log = mock_and_gateway
    plain = _load(gw_url, "-n", "200", "-c", "8")
    assert (plain["completed_ok"], plain["errors"]) == (200, 0), plain["first_error"]
    stream = _load(gw_url, "-n", "100", "-c", "8", "--stream")
    assert (stream["completed_ok"], stream["errors"]) == (100, 0), stream["first_error"]
    assert stream["sse_events_per_response"] == [24]  # role + 20 tokens + finish + usage + [DONE]
    # pinned to the SageMaker backend: SigV4-signed, through the mock's /endpoints/.../invocations
    pinned = _load(gw_url, "-n", "20", "-c", "2", "--model", "sagemaker/gpt-4o-mini", "--warmup", "0")
    assert (pinned["completed_ok"], pinned["errors"]) == (20, 0), pinned["first_error"]
    # the Responses API: passed through to the API backend, translated to chat for the endpoint
    for extra in ((), ("--stream",)):
        responses = _load(gw_url, "-n", "60", "-c", "4", "--api", "responses", *extra)
        assert (responses["completed_ok"], responses["errors"]) == (60, 0), responses["first_error"]
        translated = _load(gw_url, "-n", "10", "-c", "2", "--api", "responses", "--model", "sagemaker/gpt-4o-mini",
                           "--warmup", "0", *extra)
        assert (translated["completed_ok"], translated["errors"]) == (10, 0), translated["first_error"]
    unique = _load(gw_url, "-n", "20", "-c", "2", "--unique-prompts", "--prompt-words", "200", "--warmup", "0")
    assert (unique["completed_ok"], unique["errors"]) == (20, 0), unique["first_error"]
    # the key is really required
    wrong = _load(gw_url, "-n", "5", "-c", "1", "--api-key", "sk-wrong", "--warmup", "0")
    assert wrong["completed_ok"] == 0 and wrong["error_kinds"] == {"http_401": 5}

    time.sleep(1.3)  # the access log is flushed by the 1 s state tick
    lines = [json.loads(x) for x in gw_log.read_text().splitlines() if x.startswith("{")]
    backends = {(x["backend"], x["route_reason"]) for x in lines if x["status"] == 200}
    assert ("openai", "endpoint_not_in_service") in backends
    assert ("sagemaker", "pinned") in backends


def test_compare_runs_end_to_end_on_tiny_cells(tmp_path, bench_env):
    gateway_venv = os.path.dirname(os.path.dirname(sys.executable))
    if not os.path.exists(os.path.join(gateway_venv, "bin", "gateway")):
        pytest.skip("the `gateway` console script is not installed in this venv")
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, os.path.join(BENCH, "compare.py"), "--litellm", "", "--ours", "--gateway-venv", gateway_venv,
         "--nonstream", "1:60", "--stream", "4:40", "--responses", "1:30", "--responses-stream", "4:20", "--reps", "1", "--direct-mult", "1", "--settle-s", "0.2",
         "--no-pin", "--mock-port", str(_free_port()), "--base-port", str(_free_port()), "--cell-max-seconds", "20",
         "--max-total-minutes", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=bench_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "targets (ours vs anchor" in r.stdout
    assert "+p50 at c=1, responses <= 1/10" in r.stdout
    assert "| ours |" in r.stdout
    cells = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert {(c["target"], c["mode"]) for c in cells} == {
        (t, m) for t in ("direct", "ours") for m in ("nonstream", "stream", "responses", "responses_stream")}
    assert all(c["errors"] == 0 and c["completed_ok"] == c["requested"] for c in cells)
    assert all(c["upstream_calls"] == c["requested"] + max(50, 2 * c["concurrency"]) for c in cells)
