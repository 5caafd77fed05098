"""deploy/sagemaker/setup_endpoint.py against moto's SageMaker control plane, run in-process.

`main(argv)` is called directly (not in a subprocess) so the loopback-only network guard
covers every call it makes. moto's instance list predates ml.g5, hence ml.g4dn.xlarge.
"""
from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError

from gateway.config import ConfigError, parse_config

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "sagemaker" / "setup_endpoint.py"
REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-llm"
IMAGE = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/"
         "huggingface-pytorch-tgi-inference:2.4.0-tgi3.0.1-gpu-py311-cu124-ubuntu22.04")


@pytest.fixture(scope="module")
def setup_endpoint():
    spec = importlib.util.spec_from_file_location("setup_endpoint", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sm(moto_url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_url)  # read by boto3 in the script and here
    return boto3.client("sagemaker", region_name=REGION)


def create_args(name: str, *extra: str, count: int = 2) -> list[str]:
    return ["--endpoint-name", name, "--region", REGION, "--image-uri", IMAGE,
            "--hf-model-id", "Qwen/Qwen2.5-7B-Instruct", "--execution-role-arn", ROLE,
            "--instance-type", "ml.g4dn.xlarge", "--instance-count", str(count),
            "--context-window", "8192", *extra]


def exists(call, **kwargs) -> bool:
    try:
        call(**kwargs)
        return True
    except ClientError as e:
        assert "Could not find" in str(e)
        return False


def test_create_reuse_delete(setup_endpoint, sm, capsys, monkeypatch):
    name = f"gw-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TEST_HF_TOKEN", "hf_do-not-print-me")

    assert setup_endpoint.main(create_args(name, "--wait", "--hf-token-env", "TEST_HF_TOKEN")) == 0
    err = capsys.readouterr().err
    for kind in ("model", "endpoint config", "endpoint"):
        assert f"{kind} {name}: created" in err
    endpoint = sm.describe_endpoint(EndpointName=name)
    assert endpoint["EndpointStatus"] == "InService"
    variants = [(v["VariantName"], v["CurrentInstanceCount"]) for v in endpoint["ProductionVariants"]]
    assert variants == [("AllTraffic", 2)]
    variant = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.g4dn.xlarge", 2)
    assert variant["ModelName"] == name
    env = sm.describe_model(ModelName=name)["PrimaryContainer"]["Environment"]
    assert env["HF_MODEL_ID"] == "Qwen/Qwen2.5-7B-Instruct" and env["MESSAGES_API_ENABLED"] == "true"
    assert (env["MAX_INPUT_TOKENS"], env["MAX_TOTAL_TOKENS"], env["SM_NUM_GPUS"]) == ("8191", "8192", "1")

    # Second run: nothing created, nothing fails, and it says so.
    assert setup_endpoint.main(create_args(name, "--wait")) == 0
    out, err = capsys.readouterr()
    for kind in ("model", "endpoint config", "endpoint"):
        assert f"{kind} {name}: reused" in err
    assert ": created" not in err
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]].count(name) == 1
    assert "hf_do-not-print-me" not in out + err

    assert setup_endpoint.main(["--endpoint-name", name, "--region", REGION, "--delete", "--wait"]) == 0
    err = capsys.readouterr().err
    for kind in ("endpoint", "endpoint config", "model"):
        assert f"{kind} {name}: deleted" in err
    assert not exists(sm.describe_endpoint, EndpointName=name)
    assert not exists(sm.describe_endpoint_config, EndpointConfigName=name)
    assert not exists(sm.describe_model, ModelName=name)
    # Deleting what is already gone is not an error either.
    assert setup_endpoint.main(["--endpoint-name", name, "--region", REGION, "--delete"]) == 0
    assert f"model {name}: not found" in capsys.readouterr().err


def test_existing_resource_that_differs_is_refused(setup_endpoint, sm, capsys):
    name = f"gw-{uuid.uuid4().hex[:8]}"
    assert setup_endpoint.main(create_args(name, count=1)) == 0
    capsys.readouterr()
    assert setup_endpoint.main(create_args(name, count=3)) == 2
    err = capsys.readouterr().err
    assert "InitialInstanceCount" in err and "--delete" in err
    variant = sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"][0]
    assert variant["InitialInstanceCount"] == 1  # untouched
    assert setup_endpoint.main(["--endpoint-name", name, "--region", REGION, "--delete"]) == 0


def test_print_config_passes_gateway_validation(setup_endpoint, sm, capsys):
    name = f"gw-{uuid.uuid4().hex[:8]}"
    prices = ["--hourly-price-usd", "0.7364", "--max-tokens-per-second", "120"]
    assert setup_endpoint.main(create_args(name, "--print-config", "--max-instances", "3", *prices)) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    minimal = {"backends": printed["backends"],
               "models": {"chat": {"backends": [{"backend": "sagemaker", "model": "chat"}]}}}
    cfg = parse_config(minimal, "printed.yaml", env={}).backends["sagemaker"]
    assert (cfg.endpoint_name, cfg.region, cfg.instance_type) == (name, REGION, "ml.g4dn.xlarge")
    assert cfg.assumed_instances == 0  # the gateway reads the 2 instances with DescribeEndpoint
    assert (cfg.context_window, cfg.wire_format, cfg.variant_name) == (8192, "messages", "AllTraffic")
    assert (str(cfg.hourly_price_usd), cfg.max_tokens_per_second) == ("0.7364", 120.0)
    assert (cfg.min_instances, cfg.max_instances) == (1, 3)

    # Without a price the block says to fill it and the gateway refuses it: no endpoint is silently free.
    assert setup_endpoint.main(create_args(name, "--print-config")) == 0
    out = capsys.readouterr().out
    assert "Fill in\n# hourly_price_usd (your pricing) and max_tokens_per_second (your benchmark)" in out
    with pytest.raises(ConfigError, match="backends.sagemaker.hourly_price_usd: is required"):
        parse_config({**minimal, "backends": yaml.safe_load(out)["backends"]}, "printed.yaml", env={})
    assert setup_endpoint.main(["--endpoint-name", name, "--region", REGION, "--delete"]) == 0


def test_inference_component_create_reuse_print_delete(setup_endpoint, capsys, monkeypatch):
    """--inference-component against the control-plane stand-in (moto has no inference components)."""
    from gateway.standins.sagemaker_control import SageMakerControlStandIn

    name = f"gw-{uuid.uuid4().hex[:8]}"
    prices = ["--hourly-price-usd", "1.408", "--max-tokens-per-second", "300"]
    ic_args = ["--inference-component", "--min-instances", "0", "--max-instances", "3", "--copies", "1",
               "--copies-per-instance", "1", "--memory-per-copy-mb", "16384"]
    with SageMakerControlStandIn() as cp:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", cp.url)
        sm = boto3.client("sagemaker", region_name=REGION)
        assert setup_endpoint.main(create_args(name, *ic_args, "--wait", "--print-config", *prices, count=1)) == 0
        out, err = capsys.readouterr()
        for kind in ("model", "endpoint config", "endpoint", "inference component"):
            assert f"{kind} {name}: created" in err
        config = sm.describe_endpoint_config(EndpointConfigName=name)
        variant = config["ProductionVariants"][0]
        assert config["ExecutionRoleArn"] == ROLE and "ModelName" not in variant
        assert variant["ManagedInstanceScaling"] == {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 3}
        assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
        ic = sm.describe_inference_component(InferenceComponentName=name)
        assert (ic["EndpointName"], ic["InferenceComponentStatus"], ic["RuntimeConfig"]["CurrentCopyCount"]) == \
            (name, "InService", 1)
        assert ic["Specification"]["ModelName"] == name
        assert ic["Specification"]["ComputeResourceRequirements"] == {
            "NumberOfAcceleratorDevicesRequired": 1, "MinMemoryRequiredInMb": 16384}

        printed = yaml.safe_load(out)
        minimal = {"backends": printed["backends"],
                   "models": {"chat": {"backends": [{"backend": "sagemaker", "model": "chat"}]}}}
        cfg = parse_config(minimal, "printed.yaml", env={}).backends["sagemaker"]
        assert (cfg.inference_component_name, cfg.copies_per_instance, cfg.min_instances, cfg.max_instances) == \
            (name, 1, 0, 3)
        assert cfg.startup_from_zero_s > cfg.startup_s
        assert "a recommendation only" not in out  # 0 is applied on this endpoint

        assert setup_endpoint.main(create_args(name, *ic_args, count=1)) == 0
        err = capsys.readouterr().err
        for kind in ("model", "endpoint config", "endpoint", "inference component"):
            assert f"{kind} {name}: reused" in err
        assert ": created" not in err
        assert len(sm.list_inference_components(EndpointNameEquals=name)["InferenceComponents"]) == 1

        changed = [a if a != "16384" else "8192" for a in ic_args]
        assert setup_endpoint.main(create_args(name, *changed, count=1)) == 2
        err = capsys.readouterr().err
        assert f"existing inference component {name} differs" in err and "ComputeResourceRequirements" in err
        assert sm.describe_inference_component(InferenceComponentName=name)["Specification"][
            "ComputeResourceRequirements"]["MinMemoryRequiredInMb"] == 16384  # untouched

        assert setup_endpoint.main(["--endpoint-name", name, "--region", REGION, "--delete", "--wait"]) == 0
        err = capsys.readouterr().err
        for kind in ("inference component", "endpoint", "endpoint config", "model"):
            assert f"{kind} {name}: deleted" in err
        assert not exists(sm.describe_inference_component, InferenceComponentName=name)
        assert not exists(sm.describe_endpoint, EndpointName=name)
    assert not cp.errors
