#!/usr/bin/env python3
"""Create, reuse or delete the SageMaker real-time endpoint that the gateway's `sagemaker` backend calls.

    python deploy/sagemaker/setup_endpoint.py --endpoint-name gateway-selfhosted --region us-east-1 \\
        --image-uri <TGI image URI> --hf-model-id <org/model> --execution-role-arn <role ARN> \\
        --instance-type ml.g5.xlarge --context-window 8192 --wait --print-config > sagemaker-backend.yaml
    python deploy/sagemaker/setup_endpoint.py --endpoint-name gateway-selfhosted --region us-east-1 --delete

With --inference-component the endpoint config has managed instance scaling (MinInstanceCount
--min-instances, which may be 0) and the model runs as an inference component on it: the only kind of
real-time endpoint the gateway can scale to zero (it sets the component's copy count).

The Model, EndpointConfig, Endpoint and inference component all take the endpoint's name, so a second
run finds and reuses them. Progress goes to stderr, the config block to stdout. boto3 itself honours AWS_ENDPOINT_URL_SAGEMAKER.
README.md (beside this file): costs, and the IAM policy the gateway needs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

VARIANT = "AllTraffic"  # the gateway's default backends.sagemaker.variant_name
TAGS = [{"Key": "managed-by", "Value": "llm-gateway/setup_endpoint.py"}]  # a cost-allocation tag shows the spend
STARTUP_HEALTH_CHECK_S = 900  # seconds: the container downloads GBs of weights before its first /ping
ROUTING = {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}  # a long generation keeps its copy busy
COMPONENT_POLL_S = 30.0  # seconds between DescribeInferenceComponent calls while waiting (no boto3 waiter)


class Refused(Exception):
    """A run that would not do what was asked, e.g. an existing resource differs: reusing it silently would lie."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Create (idempotently) or delete the gateway's SageMaker endpoint.")
    p.add_argument("--endpoint-name", required=True, help="also the Model and EndpointConfig name")
    p.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                   help="AWS region (default: $AWS_REGION)")
    p.add_argument("--image-uri", help="LLM serving container (Hugging Face TGI or LMI) in ECR")
    p.add_argument("--hf-model-id", help="Hugging Face model id, passed to the container as HF_MODEL_ID")
    p.add_argument("--hf-token-env", metavar="VAR", help="env var holding a Hugging Face token (gated models)")
    p.add_argument("--execution-role-arn", help="role SageMaker assumes to pull the image and write logs")
    p.add_argument("--instance-type", default="ml.g5.xlarge")
    p.add_argument("--instance-count", type=int, default=1, help="instances at creation (>= 1)")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per instance to shard over (SM_NUM_GPUS)")
    p.add_argument("--context-window", type=int, default=8192, help="tokens, prompt + completion")
    p.add_argument("--min-instances", type=int, default=1,
                   help="for the printed config (and, with --inference-component, MinInstanceCount); 0: see README")
    p.add_argument("--max-instances", type=int, help="for the printed config and MaxInstanceCount "
                   "(default: --instance-count)")
    p.add_argument("--inference-component", action="store_true",
                   help="run the model as an inference component on an endpoint with managed instance scaling "
                        "(the gateway can then scale it to 0)")
    p.add_argument("--copies", type=int, default=1, help="with --inference-component: initial copy count")
    p.add_argument("--copies-per-instance", type=int, default=1,
                   help="with --inference-component: copies one instance holds (each gets --num-gpus GPUs)")
    p.add_argument("--memory-per-copy-mb", type=int, default=8192,
                   help="with --inference-component: host memory one copy needs, MB (>= 128)")
    p.add_argument("--hourly-price-usd", type=Decimal, help="USD per instance-hour, for the printed config")
    p.add_argument("--max-tokens-per-second", type=float, help="completion tokens/s per instance, ditto")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="more container env (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait until InService (or, with --delete, gone)")
    p.add_argument("--print-config", action="store_true", help="print the backends.sagemaker block to stdout")
    p.add_argument("--delete", action="store_true", help="delete the endpoint, its config and its model")
    args = p.parse_args(argv)
    args.max_instances = args.instance_count if args.max_instances is None else args.max_instances
    missing = [f"--{k.replace('_', '-')}" for k in ("image_uri", "hf_model_id", "execution_role_arn")
               if not getattr(args, k)]
    for broken, why in ((not args.region, "--region is required (or set AWS_REGION)"),
                        (args.delete and args.print_config, "--print-config goes with creating, not --delete"),
                        (not args.delete and missing, f"creating needs {', '.join(missing)}"),
                        (min(args.instance_count, args.num_gpus, args.context_window - 1) < 1,
                         "--instance-count and --num-gpus must be >= 1, --context-window >= 2"),
                        (not 0 <= args.min_instances <= args.max_instances, "need 0 <= --min/--max-instances"),
                        (args.inference_component and args.max_instances < 1, "--max-instances must be >= 1"),
                        (args.copies < 0 or args.copies_per_instance < 1 or args.memory_per_copy_mb < 128,
                         "need --copies >= 0, --copies-per-instance >= 1, --memory-per-copy-mb >= 128"),
                        (any("=" not in kv for kv in args.env), "--env takes KEY=VALUE")):
        if broken:
            p.error(why)
    return args


def container_env(args: argparse.Namespace) -> dict[str, str]:
    """TGI's settings; the gateway's context check (prompt + max_tokens <= context_window) must agree with them."""
    window = args.context_window
    env = {
        "HF_MODEL_ID": args.hf_model_id, "SM_NUM_GPUS": str(args.num_gpus),
        # TGI needs input < total; a prompt of window - 1 tokens plus 1 new token is the gateway's limit too.
        "MAX_INPUT_TOKENS": str(window - 1), "MAX_TOTAL_TOKENS": str(window),
        # Older TGI defaults this to 4096 and refuses to start when MAX_INPUT_TOKENS is larger.
        "MAX_BATCH_PREFILL_TOKENS": str(window - 1),
        "MESSAGES_API_ENABLED": "true",  # /v1/chat/completions bodies: the gateway's wire_format: messages
    }
    env.update(kv.split("=", 1) for kv in args.env)
    return env


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe(call: Callable[..., dict], **kwargs: Any) -> dict | None:
    """The resource, or None when it does not exist (SageMaker answers ValidationException 'Could not find')."""
    try:
        return call(**kwargs)
    except ClientError as e:
        err = e.response.get("Error", {})
        if err.get("Code") == "ValidationException" and "could not find" in err.get("Message", "").lower():
            return None
        raise


def _check(kind: str, name: str, want: dict, got: dict) -> None:
    diffs = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if diffs:  # field names only: an environment value may be a secret
        raise Refused(f"existing {kind} {name} differs from this request in {', '.join(diffs)}; SageMaker models "
                      f"and endpoint configs cannot be changed: --delete first, or use another --endpoint-name")


def ensure_model(sm: Any, args: argparse.Namespace) -> None:
    name, env = args.endpoint_name, container_env(args)
    have = _describe(sm.describe_model, ModelName=name)
    if have is not None:
        container = have.get("PrimaryContainer", {})
        got = {f"Environment.{k}": v for k, v in container.get("Environment", {}).items() if k != "HF_TOKEN"}
        got.update(Image=container.get("Image"), ExecutionRoleArn=have.get("ExecutionRoleArn"))
        want = {f"Environment.{k}": v for k, v in env.items() if k != "HF_TOKEN"}
        _check("model", name, {**want, "Image": args.image_uri, "ExecutionRoleArn": args.execution_role_arn}, got)
        _say(f"model {name}: reused (already exists, same image and settings)")
        return
    if args.hf_token_env:  # read here, never printed; it is visible to sagemaker:DescribeModel (see README)
        if not (token := os.environ.get(args.hf_token_env)):
            raise Refused(f"--hf-token-env {args.hf_token_env}: that variable is empty")
        env["HF_TOKEN"] = token
    sm.create_model(ModelName=name, ExecutionRoleArn=args.execution_role_arn, Tags=TAGS,
                    PrimaryContainer={"Image": args.image_uri, "Environment": env})
    _say(f"model {name}: created ({args.hf_model_id})")


def endpoint_variant(args: argparse.Namespace) -> dict:
    """The production variant: a model's, or (inference components) instances with managed scaling."""
    if not args.inference_component:
        return {"VariantName": VARIANT, "ModelName": args.endpoint_name, "InitialInstanceCount": args.instance_count,
                "InstanceType": args.instance_type,
                "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_S}
    return {"VariantName": VARIANT, "InstanceType": args.instance_type, "InitialInstanceCount": args.instance_count,
            "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": args.min_instances,
                                       "MaxInstanceCount": args.max_instances},
            "RoutingConfig": ROUTING}


def ensure_endpoint_config(sm: Any, args: argparse.Namespace) -> None:
    name = args.endpoint_name
    want = endpoint_variant(args)
    extra = {"ExecutionRoleArn": args.execution_role_arn} if args.inference_component else {}
    have = _describe(sm.describe_endpoint_config, EndpointConfigName=name)
    if have is not None:
        variants = have.get("ProductionVariants", [])
        got = variants[0] if len(variants) == 1 else {}
        _check("endpoint config", name, {**want, **extra},  # ignore fields AWS fills in
               {**{k: got.get(k) for k in want}, **{k: have.get(k) for k in extra}})
        _say(f"endpoint config {name}: reused ({args.instance_count} x {args.instance_type})")
        return
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[want], Tags=TAGS, **extra)
    scaling = (f", managed instance scaling {args.min_instances}-{args.max_instances}"
               if args.inference_component else "")
    _say(f"endpoint config {name}: created ({args.instance_count} x {args.instance_type}, variant {VARIANT}{scaling})")


def ensure_endpoint(sm: Any, args: argparse.Namespace) -> None:
    name = args.endpoint_name
    have = _describe(sm.describe_endpoint, EndpointName=name)
    if have is None:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=TAGS)
        _say(f"endpoint {name}: created; billing per instance-second starts now and runs until --delete")
        return
    status = have.get("EndpointStatus")
    if have.get("EndpointConfigName") != name:
        raise Refused(f"existing endpoint {name} uses endpoint config {have.get('EndpointConfigName')}, not {name}")
    if status in ("Failed", "Deleting", "OutOfService"):
        raise Refused(f"existing endpoint {name} is {status} ({have.get('FailureReason', '-')}): --delete it first")
    counts = [v.get("CurrentInstanceCount") for v in have.get("ProductionVariants", [])]
    _say(f"endpoint {name}: reused (status {status}, instances {counts})")  # the gateway may have resized it


def component_spec(args: argparse.Namespace) -> dict:
    return {"ModelName": args.endpoint_name,
            "ComputeResourceRequirements": {"NumberOfAcceleratorDevicesRequired": args.num_gpus,
                                            "MinMemoryRequiredInMb": args.memory_per_copy_mb},
            "StartupParameters": {"ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_HEALTH_CHECK_S}}


def ensure_component(sm: Any, args: argparse.Namespace) -> None:
    """The inference component (named after the endpoint); the endpoint must be InService first."""
    name = args.endpoint_name
    want = component_spec(args)
    have = _describe(sm.describe_inference_component, InferenceComponentName=name)
    if have is not None:
        if have.get("EndpointName") != name:
            raise Refused(f"existing inference component {name} is on endpoint {have.get('EndpointName')}, not {name}")
        got = have.get("Specification", {})
        _check("inference component", name, want, {k: got.get(k) for k in want})
        copies = have.get("RuntimeConfig", {}).get("CurrentCopyCount")
        _say(f"inference component {name}: reused (status {have.get('InferenceComponentStatus')}, copies {copies})")
        return
    _say(f"waiting for endpoint {name} to be InService before adding its inference component...")
    _wait_in_service(sm, name)
    sm.create_inference_component(InferenceComponentName=name, EndpointName=name, VariantName=VARIANT,
                                  Specification=want, RuntimeConfig={"CopyCount": args.copies}, Tags=TAGS)
    _say(f"inference component {name}: created ({args.copies} copies, {args.num_gpus} GPU(s) each)")


def _wait_in_service(sm: Any, name: str) -> None:
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name)
    except WaiterError:  # Failed or timed out: SageMaker's own reason says which (often the health check)
        have = sm.describe_endpoint(EndpointName=name)
        raise Refused(f"endpoint {name} is {have['EndpointStatus']}: "
                      f"{have.get('FailureReason', 'still not InService')}") from None


def _wait_component(sm: Any, name: str, gone: bool, timeout_s: float = 3600.0) -> None:
    """Until the component is InService (or, with gone, deleted): boto3 has no waiter for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = _describe(sm.describe_inference_component, InferenceComponentName=name)
        status = None if have is None else have.get("InferenceComponentStatus")
        if (have is None) if gone else status == "InService":
            return
        if status == "Failed" or (have is None and not gone):
            raise Refused(f"inference component {name} is {status or 'gone'}: {(have or {}).get('FailureReason', '-')}")
        if time.monotonic() > deadline:
            raise Refused(f"inference component {name} still {status} after {timeout_s:.0f} s")
        time.sleep(COMPONENT_POLL_S)


def create(sm: Any, args: argparse.Namespace) -> None:
    ensure_model(sm, args)
    ensure_endpoint_config(sm, args)
    ensure_endpoint(sm, args)
    if args.inference_component:
        ensure_component(sm, args)
    elif args.min_instances == 0:
        _say("note: min_instances 0 is a recommendation only (routing.dry_run: true) here: resizing this endpoint "
             "to 0 needs an inference component with managed instance scaling (--inference-component, README)")
    if args.wait:
        _say(f"waiting for {args.endpoint_name} to be InService (LLM endpoints take 5-20 min)...")
        _wait_in_service(sm, args.endpoint_name)
        if args.inference_component and args.copies > 0:
            _wait_component(sm, args.endpoint_name, gone=False)
    _say(f"endpoint {args.endpoint_name}: {sm.describe_endpoint(EndpointName=args.endpoint_name)['EndpointStatus']}")


def delete(sm: Any, args: argparse.Namespace) -> None:
    """Deletes what this script creates (all named after the endpoint), and only that: the inference
    component first (an endpoint hosting one cannot be deleted), then the endpoint, its config, the model."""
    name = args.endpoint_name
    endpoint = _describe(sm.describe_endpoint, EndpointName=name)
    # only an endpoint with managed instance scaling can host a component (and none outlives its endpoint)
    if endpoint is not None and any(v.get("ManagedInstanceScaling") for v in endpoint.get("ProductionVariants", [])):
        if _describe(sm.describe_inference_component, InferenceComponentName=name) is None:
            _say(f"inference component {name}: not found")
        else:  # the endpoint cannot go while it hosts the component: wait until it is gone
            sm.delete_inference_component(InferenceComponentName=name)
            _wait_component(sm, name, gone=True)
            _say(f"inference component {name}: deleted")
    if endpoint is None:
        _say(f"endpoint {name}: not found")
    else:
        if endpoint.get("EndpointConfigName") != name:  # e.g. updated by hand: not ours to delete
            _say(f"endpoint {name} uses endpoint config {endpoint.get('EndpointConfigName')}: not ours, left in place")
        sm.delete_endpoint(EndpointName=name)
        _say(f"endpoint {name}: deleted (billing stops once it is gone)")
        if args.wait:
            sm.get_waiter("endpoint_deleted").wait(EndpointName=name)
    for kind, describe, remove, key in (
        ("endpoint config", sm.describe_endpoint_config, sm.delete_endpoint_config, "EndpointConfigName"),
        ("model", sm.describe_model, sm.delete_model, "ModelName"),
    ):
        if _describe(describe, **{key: name}) is None:
            _say(f"{kind} {name}: not found")
        else:
            remove(**{key: name})
            _say(f"{kind} {name}: deleted")


def config_block(args: argparse.Namespace) -> str:
    """The backends.sagemaker block for the gateway's config.yaml (YAML, comments included)."""
    def filled(value: object) -> str:  # null fails the gateway's validation: no silently free endpoint
        return "null" if value is None else str(value)
    q = json.dumps  # a JSON string is a YAML string: a name like "true" or "1e3" stays a string
    zero_note = ("  # 0: a recommendation only on this endpoint (README)"
                 if args.min_instances == 0 and not args.inference_component else "")
    component = "" if not args.inference_component else f"""\
    # the model runs as this inference component: the gateway scales it by copy count, down to 0
    # (managed instance scaling then stops the instances and their billing)
    inference_component_name: {q(args.endpoint_name)}
    copies_per_instance: {args.copies_per_instance}
    startup_from_zero_s: 600   # seconds from 0 instances to a serving copy (instance + weights); measure yours
"""
    return f"""\
# backends.sagemaker for the gateway's config.yaml, from deploy/sagemaker/setup_endpoint.py. Fill in
# hourly_price_usd (your pricing) and max_tokens_per_second (your benchmark): routing is only as good as they are.
backends:
  sagemaker:
    type: sagemaker
    endpoint_name: {q(args.endpoint_name)}
    region: {q(args.region)}
    instance_type: {q(args.instance_type)}
    # instances in service: read with DescribeEndpoint (the gateway's IAM policy must allow it; if it
    # cannot, set assumed_instances: {args.instance_count} to route to and charge them regardless)
    hourly_price_usd: {filled(args.hourly_price_usd)}  # USD per instance-hour (on-demand price for the region)
    max_tokens_per_second: {filled(args.max_tokens_per_second)}  # completion tokens/s per instance, measured
    context_window: {args.context_window}  # tokens; the container has MAX_TOTAL_TOKENS={args.context_window}
    min_instances: {args.min_instances}{zero_note}
    max_instances: {args.max_instances}
{component}    variant_name: {VARIANT}
    wire_format: messages
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sm = boto3.session.Session(region_name=args.region).client("sagemaker")
    try:
        delete(sm, args) if args.delete else create(sm, args)
    except Refused as e:
        _say(f"error: {e}")
        return 2
    except ClientError as e:  # code and AWS's message only, never the request (it carries the env)
        err = e.response.get("Error", {})
        _say(f"error: {e.operation_name}: {err.get('Code')}: {err.get('Message')}")
        return 1
    except (BotoCoreError, WaiterError) as e:
        _say(f"error: {type(e).__name__}: {e}")
        return 1
    if args.print_config:
        print(config_block(args), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
