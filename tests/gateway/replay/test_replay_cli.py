"""``gateway replay`` / ``gateway make-trace`` as command functions, on a tiny config and trace."""
from __future__ import annotations

import json

import pytest

from gateway.replay.cli import make_trace_main, replay_main

# the hand-computed world of test_replay_simulator.py, as a config file
CONFIG = """
backends:
  openai:
    type: openai
    api_key_env: TEST_OPENAI_KEY
    prices:
      m: {input: 1000, output: 2000}       # USD per 1M tokens: 0.001 / 0.002 per token
  sagemaker:
    type: sagemaker
    endpoint_name: e
    region: us-east-1
    instance_type: ml.g5.xlarge
    hourly_price_usd: 3.6                  # 0.001 USD per instance-second
    max_tokens_per_second: 10
    prompt_token_weight: 0
    context_window: 100
    min_instances: 0
    max_instances: 1
    startup_s: 10
    max_queue_s: 10
models:
  m:
    backends:
      - {backend: openai, model: m}
      - {backend: sagemaker, model: m}
routing:
  policy: break_even
  capacity_interval_s: 5
"""
TRACE = "arrival_s,prompt_tokens,completion_tokens\n1,10,5\n12,10,50\n13,10,80\n14,95,10\n14.5,10,20\n23,1,40\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "trace.csv").write_text(TRACE)
    return tmp_path


def replay_json(files, capsys, *extra):
    code = replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--optimum-interval", "10", "--json", "--no-progress", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_replay_json_reports_every_policy_against_the_optimum(files, capsys):
    doc = replay_json(files, capsys)
    by_policy = {r["policy"]: r for r in doc["results"]}
    assert {"always_api", "always_selfhosted", "break_even", "first_healthy"} <= set(by_policy)
    assert by_policy["always_selfhosted"]["spend_usd"] == pytest.approx(0.215)  # see test_replay_simulator
    assert by_policy["always_api"]["spend_usd"] == pytest.approx(0.546)
    assert doc["optimum"]["spend_usd"] == pytest.approx(0.215)
    assert by_policy["always_api"]["ratio_to_optimum"] == pytest.approx(0.546 / 0.215, abs=1e-4)
    for r in doc["results"]:
        assert {"spend_usd", "api_spend_usd", "endpoint_spend_usd", "api_requests", "endpoint_requests",
                "endpoint_refused", "api_prompt_tokens", "endpoint_completion_tokens"} <= set(r)
    assert doc["recommendation"]


def test_replay_selected_policies_and_text_output(files, capsys):
    code = replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--policy", "always_api", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "always_api" in out and "hindsight optimum" in out and "break_even" not in out.split("recommendation")[0]


def test_sweep_names_the_best(files, capsys):
    doc = replay_json(files, capsys, "--sweep", "restart_weight=0.5,2", "--sweep", "min_dwell_s=0,600")
    assert len(doc["results"]) == 4
    assert {tuple(sorted(r["params"].items())) for r in doc["results"]} == {
        (("min_dwell_s", d), ("restart_weight", h)) for h in (0.5, 2) for d in (0, 600)}
    assert doc["best"]["spend_usd"] == min(r["spend_usd"] for r in doc["results"])


def test_progress_goes_to_stderr_only_when_asked(files, capsys):
    replay_json(files, capsys)
    assert capsys.readouterr().err == ""
    replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                 "--policy", "always_api", "--json", "--progress"])
    captured = capsys.readouterr()
    assert "100%" in captured.err
    json.loads(captured.out)


def test_bad_inputs_exit_2_with_the_file_named(files, capsys):
    assert replay_main(["--trace", str(files / "nope.csv"), "--config", str(files / "config.yaml")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    assert replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--param", "restart_weight=-1"]) == 2
    assert "restart_weight" in capsys.readouterr().err


def test_make_trace_is_deterministic(files, capsys):
    (files / "hourly.csv").write_text("model,hour,requests\nx,0,100\nx,1,300\nx,2,50\n")
    args = ["--hourly", str(files / "hourly.csv"), "--tokens-from", str(files / "trace.csv"),
            "--hours", "2", "--start-hour", "1", "--peak-per-hour", "600", "--seed", "3"]
    assert make_trace_main([*args, "--out", str(files / "a.csv.gz")]) == 0
    assert make_trace_main([*args, "--out", str(files / "b.csv.gz")]) == 0
    assert (files / "a.csv.gz").read_bytes() == (files / "b.csv.gz").read_bytes()
    assert "requests over 2 h" in capsys.readouterr().out
