"""``gateway replay`` / ``gateway make-trace`` as command functions, on a tiny config and trace."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from gateway.replay import bundled
from gateway.replay.cli import make_trace_main, replay_main
from gateway.replay.trace import read_trace

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
    # by default: the policy, always_api and fixed_k for every k in the bounds (here 0..1: fixed_1)
    assert set(by_policy) == {"always_api", "break_even", "fixed_1"}
    assert by_policy["fixed_1"]["spend_usd"] == pytest.approx(0.215)  # always_selfhosted in test_replay_simulator
    assert doc["best_static"]["policy"] == "fixed_1"
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


# --- what ships with the package: bundled traces, default config, --api-prices, the pay-off hint ---

REPO_CONFIG = Path(__file__).resolve().parents[3] / "config.yaml"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A directory with no config.yaml and no GATEWAY_CONFIG: a fresh install run from anywhere."""
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    return here


def test_replay_defaults_to_the_bundled_conversation_trace(files, capsys):
    code = replay_main(["--config", str(files / "config.yaml"), "--policy", "always_api", "--json", "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    trace = read_trace(bundled.trace_path("azure-conv"))
    assert doc["trace"]["path"] == trace.name and trace.name.endswith("gateway/replay/data/azure2023_conv.csv.gz")
    assert doc["trace"]["requests"] == len(trace) == 19_366
    # the test config's API: 0.001 USD per prompt token, 0.002 per completion token
    expected = 0.001 * sum(trace.prompt_tokens) + 0.002 * sum(trace.completion_tokens)
    assert doc["results"][0]["api_spend_usd"] == pytest.approx(expected, abs=1e-6)


def test_bundled_traces_by_name_and_their_licence_ship_together():
    for name in ("azure-conv", "azure-code"):
        path = Path(bundled.trace_path(name))
        assert path.is_file() and path.parent == Path(bundled.DATA_DIR)
        assert bundled.trace_name(str(path)) == name
    notice = (Path(bundled.DATA_DIR) / "README.md").read_text()
    assert "CC-BY-4.0" in notice and "Splitwise" in notice and "AzurePublicDataset" in notice
    assert bundled.trace_path("some/file.csv") == "some/file.csv"


def test_bundled_config_is_the_repository_config():
    with open(REPO_CONFIG) as a, open(bundled.BUNDLED_CONFIG) as b:
        assert yaml.safe_load(a) == yaml.safe_load(b), "copy config.yaml to gateway/replay/data/config.yaml"


def test_without_config_yaml_here_the_bundled_config_is_used(files, elsewhere, capsys, monkeypatch):
    args = ["--trace", str(files / "trace.csv"), "--policy", "always_api", "--json", "--no-progress"]
    assert replay_main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["config"] == bundled.BUNDLED_CONFIG
    assert json.loads(captured.out)["model"] == "gpt-4o-mini"
    assert "shipped with the package" in captured.err
    # as `gateway serve`: $GATEWAY_CONFIG, then ./config.yaml
    monkeypatch.setenv("GATEWAY_CONFIG", str(files / "config.yaml"))
    assert replay_main(args) == 0
    assert json.loads(capsys.readouterr().out)["config"] == str(files / "config.yaml")
    monkeypatch.delenv("GATEWAY_CONFIG")
    (elsewhere / "config.yaml").write_text(CONFIG)
    assert replay_main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["config"] == "config.yaml" and captured.err == ""
    # a --config that does not exist is an error, never replaced by the bundled one
    assert replay_main([*args, "--config", str(elsewhere / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_api_prices_override_the_configs(files, capsys):
    # tiny trace: 136 prompt + 205 completion tokens; 2000/4000 USD per 1M = 0.002/0.004 per token
    doc = replay_json(files, capsys, "--policy", "always_api", "--api-prices", "2000,4000")
    assert doc["results"][0]["api_spend_usd"] == pytest.approx(136 * 0.002 + 205 * 0.004)  # 1.092
    assert (doc["api"]["usd_per_1m_input"], doc["api"]["usd_per_1m_output"]) == (2000, 4000)
    assert doc["api"]["prices_from"] == "--api-prices"
    # the text names the flag beside the prices, so that the config's model name does not claim them
    assert replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--policy", "always_api", "--api-prices", "2000,4000", "--no-progress"]) == 0
    assert "per 1M in/out (--api-prices)" in capsys.readouterr().out
    doc = replay_json(files, capsys, "--policy", "always_api", "--api-prices", " 1.5, 0 ,0.5")
    assert doc["results"][0]["api_spend_usd"] == pytest.approx(136 * 1.5e-6)
    doc = replay_json(files, capsys, "--policy", "always_api")
    assert doc["results"][0]["api_spend_usd"] == pytest.approx(0.546) and doc["api"]["prices_from"] == "config"


@pytest.mark.parametrize("bad", ["2.5", "2.5,10,1,1", "a,b", "-1,10", "nan,10", "2.5,inf", "2.5,,1", ""])
def test_bad_api_prices_exit_2_naming_the_flag(files, capsys, bad):
    code = replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        f"--api-prices={bad}", "--no-progress"])  # `=`: argparse takes "-1,10" for a flag
    assert code == 2
    assert "--api-prices" in capsys.readouterr().err


def test_hint_names_gpt4o_prices_when_the_endpoint_never_pays_off(files, elsewhere, capsys):
    # the default config (gpt-4o-mini) on the tiny trace: the API is cheaper than a full instance
    assert replay_main(["--trace", str(files / "trace.csv"), "--policy", "always_api", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "never pays off" in out
    assert (f"hint: to see a case where the endpoint pays off, replay at gpt-4o's API prices (USD per 1M "
            f"input,output tokens): gateway replay --trace {files / 'trace.csv'} --api-prices 2.50,10.00") in out
    assert replay_main(["--trace", str(files / "trace.csv"), "--policy", "always_api", "--no-progress",
                        "--api-prices", "2.50,10.00"]) == 0
    out = capsys.readouterr().out
    assert "never pays off" not in out and "hint:" not in out


def test_hint_scales_the_prices_when_gpt4o_is_not_enough(files, capsys):
    # the test endpoint costs $100 per 1M capacity tokens at full use: even gpt-4o's prices are below it
    doc = replay_json(files, capsys, "--policy", "always_api", "--api-prices", "1,1")
    at = doc["economics"]["pays_off_at_api_prices"]
    assert at["name"] is None and at["usd_per_1m_input"] == at["usd_per_1m_output"] > 10
    assert doc["hint"].endswith(f"--config {files / 'config.yaml'} --api-prices "
                                f"{at['usd_per_1m_input']:.2f},{at['usd_per_1m_output']:.2f}")
    doc = replay_json(files, capsys, "--policy", "always_api",
                      "--api-prices", f"{at['usd_per_1m_input']},{at['usd_per_1m_output']}")
    assert doc["economics"]["endpoint_ever_pays_off"] and doc["hint"] is None


@pytest.mark.parametrize("flag", ["--tokens-from", "--arrivals-from"])
def test_make_trace_takes_a_bundled_trace_by_name(files, capsys, flag):
    (files / "hourly.csv").write_text("model,hour,requests\nx,0,100\nx,1,300\n")
    out = files / "made.csv.gz"
    assert make_trace_main(["--hourly", str(files / "hourly.csv"), flag, "azure-code", "--scale", "1",
                            "--seed", "1", "--out", str(out)]) == 0
    made, code_trace = read_trace(str(out)), read_trace(bundled.trace_path("azure-code"))
    assert 300 <= len(made) <= 500
    assert set(made.pairs()) <= set(code_trace.pairs())  # token pairs come from the Azure code trace
    assert "requests over 2 h" in capsys.readouterr().out


def test_a_run_cheaper_than_the_dp_becomes_the_optimum(capsys):
    # the bundled conversation hour at gpt-4o prices saturates 4 instances: fixed_4 comes out below the
    # DP's constant-count estimate, and the report takes it as the optimum (a lower bound of every run)
    code = replay_main(["--api-prices", "2.50,10.00", "--policy", "fixed", "--json", "--no-progress"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    spends = [r["spend_usd"] for r in doc["results"]]
    assert doc["optimum"]["spend_usd"] <= min(spends)
    assert all(r["ratio_to_optimum"] >= 1.0 for r in doc["results"])
    if doc["optimum"]["source"] != "dp":
        assert doc["optimum"]["dp_spend_usd"] > doc["optimum"]["spend_usd"]
        assert doc["optimum"]["source"].startswith("fixed_")


def test_make_trace_from_the_bundled_shape_and_arrivals(tmp_path, capsys):
    # a fresh clone can build a bursty multi-day trace with no paths: ServeGen's shape, a real hour's arrivals
    out = tmp_path / "t.csv.gz"
    assert make_trace_main(["--shape-model", "m-large", "--arrivals-from", "azure-code", "--hours", "3",
                            "--mean-per-hour", "800", "--seed", "1", "--out", str(out)]) == 0
    trace = read_trace(str(out))
    assert 0.8 * 2400 <= len(trace) <= 1.2 * 2400
    assert trace.span_s <= 3 * 3600
    assert "requests over 3 h" in capsys.readouterr().out


def test_initial_instances_replay_a_running_endpoint_for_every_policy(files, capsys):
    cold = replay_json(files, capsys)
    warm = replay_json(files, capsys, "--initial-instances", "1")
    assert cold["endpoint"]["initial_instances"] == 0 and warm["endpoint"]["initial_instances"] == 1
    cold_by, warm_by = ({r["policy"]: r for r in d["results"]} for d in (cold, warm))
    # fixed_1 starts nothing when its instance already runs, and does not wait its start-up
    assert cold_by["fixed_1"]["instances_started"] == 1 and warm_by["fixed_1"]["instances_started"] == 0
    assert warm_by["fixed_1"]["api_requests"] < cold_by["fixed_1"]["api_requests"]
    # the optimum starts from the same state and stays a lower bound
    assert warm["optimum"]["spend_usd"] <= min(r["spend_usd"] for r in warm["results"])
    assert replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--no-progress"]) == 0
    assert "0 in service at the start" in capsys.readouterr().out


def test_initial_instances_outside_the_bounds_exit_2(files, capsys):
    assert replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--initial-instances", "2", "--no-progress"]) == 2
    assert "--initial-instances" in capsys.readouterr().err


@pytest.mark.parametrize("interval", ["0", "-60", "nan", "1e300"])
def test_an_optimum_interval_outside_its_range_exits_2(files, capsys, interval):
    # 0 divided the horizon by zero (a traceback), 1e300 billed until the end of time (a hang)
    assert replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--optimum-interval", interval, "--no-progress"]) == 2
    assert "--optimum-interval: expected 1 to 3600 seconds" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["--days", "-1", "--mean-per-hour", "10"], "nothing to build"),  # sliced the shape from its end: 312 hours
    (["--days", "nan", "--mean-per-hour", "10"], "--days: expected at most 366 days"),
    (["--days", "1e308", "--mean-per-hour", "10"], "--days: expected at most 366 days"),  # an OverflowError
    (["--hours", "2", "--scale", "1e-300"], "no requests"),  # wrote an empty trace the replay refuses
    (["--hours", "2", "--mean-per-hour", "10", "--burst-mean", "nan"], "--burst-mean: expected"),  # read as 1
    (["--hours", "2", "--mean-per-hour", "10", "--burst-mean", "3", "--burst-spread", "inf"],
     "--burst-spread: expected"),  # built no requests
    (["--hours", "2", "--mean-per-hour", "10", "--start-hour", "-5"], "nothing to build"),
    (["--hours", "2", "--mean-per-hour", "nan"], "--mean-per-hour: expected a positive number"),  # built 0 requests
    (["--hours", "2", "--peak-per-hour", "0"], "--peak-per-hour: expected a positive number"),
    (["--hours", "2", "--scale", "inf"], "--scale: expected a positive number"),  # never ended
    (["--hours", "2", "--mean-per-hour", "1e12"], "more than the 50,000,000 a trace may hold"),
])
def test_make_trace_sizes_and_spans_it_cannot_build_exit_2(tmp_path, capsys, args, said):
    out = tmp_path / "t.csv"
    assert make_trace_main(["--tokens-from", "azure-conv", *args, "--out", str(out)]) == 2
    assert said in capsys.readouterr().err
    assert not out.exists()


def test_make_trace_builds_no_trace_longer_than_a_replay_takes(tmp_path, capsys):
    shape = tmp_path / "shape.csv"
    shape.write_text("model,hour,requests\n" + "".join(f"m,{h},5\n" for h in range(1000)))
    out = tmp_path / "t.csv"
    assert make_trace_main(["--hourly", str(shape), "--tokens-from", "azure-conv", "--mean-per-hour", "5",
                            "--out", str(out)]) == 2
    assert "1000 hours: a replay takes at most 744 (31 days)" in capsys.readouterr().err
    assert not out.exists()
    assert make_trace_main(["--hourly", str(shape), "--tokens-from", "azure-conv", "--mean-per-hour", "5",
                            "--days", "31", "--out", str(out)]) == 0  # the longest it takes
    assert read_trace(str(out)).arrival_s[-1] <= 31 * 86400


def test_make_trace_says_when_it_cannot_write_its_output(tmp_path, capsys):
    # a directory, or a folder that does not exist: an OSError traceback
    for out in (tmp_path, tmp_path / "no" / "t.csv"):
        assert make_trace_main(["--tokens-from", "azure-conv", "--hours", "1", "--mean-per-hour", "10",
                                "--out", str(out)]) == 2
        assert f"--out {out}: cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("rows, said", [
    ("m,100000000,100\n", "hour must be 0 to 8783"),  # built a list of 10^8 hours: a hang
    ("m,0,nan\n", "requests must be a number >= 0"),  # an empty hour without a word
    ("m,0,-5\n", "requests must be a number >= 0"),
    ("m,0\n", "hour and requests must be numbers"),  # a short row: a TypeError
])
def test_an_hourly_shape_it_cannot_use_exits_2(tmp_path, capsys, rows, said):
    shape = tmp_path / "shape.csv"
    shape.write_text("model,hour,requests\n" + rows)
    assert make_trace_main(["--hourly", str(shape), "--tokens-from", "azure-conv", "--mean-per-hour", "10",
                            "--out", str(tmp_path / "t.csv")]) == 2
    assert said in capsys.readouterr().err
    gz = tmp_path / "shape.csv.gz"
    gz.write_bytes(gzip.compress(b"model,hour,requests\nm,0,5\n"))  # a UnicodeDecodeError traceback
    assert make_trace_main(["--hourly", str(gz), "--tokens-from", "azure-conv", "--mean-per-hour", "10",
                            "--out", str(tmp_path / "t.csv")]) == 2
    assert "not a readable CSV" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["--param", "=1"], "--param expects KEY=VALUE"),  # exit 1, without the command's name
    (["--sweep", "noequals"], "--sweep expects KEY=VALUE"),
    (["--param", "hysteresis=0.1"], "--param hysteresis: no policy replayed takes it"),  # dropped without a word
    (["--sweep", "forecast_window_s="], "--sweep forecast_window_s: expected one or more values"),  # no runs
    (["--policy", "always_api", "--policy", "fixed", "--sweep", "instances=1,2"],
     "--sweep replays one policy"),  # swept break_even instead
    (["--policy", "fixed", "--param", "instances=10"], "bounds 0-1, got 10"),  # ran 1 under the label fixed_10
    (["--policy", "fixed", "--param", "instances=inf"], "bounds 0-1, got inf"),  # an OverflowError
    (["--api-prices", "1e400,1"], "each a number from 0 to 1,000,000"),  # spent inf, a ratio of NaN
])
def test_replay_flags_that_would_be_dropped_or_mislabelled_exit_2(files, capsys, args, said):
    assert replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gateway replay: ") and said in err


@pytest.mark.parametrize("param", ["restart_weight=nan", "forecast_window_s=inf", "min_dwell_s=1e308x"])
def test_a_policy_parameter_that_is_no_finite_number_is_named(files, capsys, param):
    # "1e308x" stays a string; "nan" and "inf" are read as floats: each is named, not a comparison error
    assert replay_main(["--trace", str(files / "trace.csv"), "--config", str(files / "config.yaml"),
                        "--policy", "break_even", "--param", param, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"parameter {param.split('=')[0]} must be a finite number" in err
    assert "not supported between" not in err
