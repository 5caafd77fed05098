#!/usr/bin/env python3
"""Write the SageMaker control-plane API model cut down to the calls the gateway makes.

botocore's full ``sagemaker`` model (400 kB gzipped, ~26 MB once loaded) describes
~380 operations; the gateway calls DescribeEndpoint,
UpdateEndpointWeightsAndCapacities and, for inference components, DescribeInferenceComponent and
UpdateInferenceComponentRuntimeConfig. botocore loads a model from the first folder on
its data path that has one, so the cut-down copy in ``gateway/aws_models`` is the
same model, restricted. The same goes for ``endpoints.json``, which botocore loads for every
client it creates (~7 MB per process once parsed, for ~300 services): the copy keeps every
partition and region but only the services these clients and the credential chain call. Rerun
after upgrading botocore:

    python scripts/trim_aws_model.py
"""
from __future__ import annotations

import json
import os

import botocore.loaders

OPERATIONS = ("DescribeEndpoint", "UpdateEndpointWeightsAndCapacities", "DescribeInferenceComponent",
              "UpdateInferenceComponentRuntimeConfig")
# endpointPrefix keys: the two SageMaker APIs, and what the credential chain may create a client
# for from the same session (assume-role: sts; SSO profiles: sso, portal.sso, oidc)
ENDPOINT_SERVICES = ("api.sagemaker", "runtime.sagemaker", "sts", "sso", "portal.sso", "oidc")
OUT = os.path.join(os.path.dirname(__file__), "..", "gateway", "aws_models")


def referenced_shapes(model: dict, roots) -> set[str]:
    shapes, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in shapes:
            continue
        shapes.add(name)
        shape = model["shapes"][name]
        for key in ("member", "key", "value"):
            if key in shape:
                todo.append(shape[key]["shape"])
        for member in shape.get("members", {}).values():
            todo.append(member["shape"])
    return shapes


def without_docs(value):
    """Documentation strings are most of the model's bytes and none of its behaviour."""
    if isinstance(value, dict):
        return {k: without_docs(v) for k, v in value.items() if k != "documentation"}
    if isinstance(value, list):
        return [without_docs(v) for v in value]
    return value


def write_endpoints(loader) -> None:
    endpoints = loader.load_data("endpoints")
    for partition in endpoints["partitions"]:
        partition["services"] = {k: v for k, v in partition["services"].items() if k in ENDPOINT_SERVICES}
    with open(os.path.join(OUT, "endpoints.json"), "w") as f:
        json.dump(endpoints, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{OUT}/endpoints.json: {len(endpoints['partitions'])} partitions, services {', '.join(ENDPOINT_SERVICES)}")


def main() -> None:
    loader = botocore.loaders.Loader()
    write_endpoints(loader)
    version = loader.determine_latest_version("sagemaker", "service-2")
    model = loader.load_service_model("sagemaker", "service-2", version)
    ops = {name: model["operations"][name] for name in OPERATIONS}
    roots = []
    for op in ops.values():
        roots += [op[k]["shape"] for k in ("input", "output") if k in op]
        roots += [e["shape"] for e in op.get("errors", [])]
    keep = referenced_shapes(model, roots)
    trimmed = without_docs({
        "version": model.get("version", "2.0"),
        "metadata": model["metadata"],
        "operations": ops,
        "shapes": {name: model["shapes"][name] for name in sorted(keep)},
    })
    folder = os.path.join(OUT, "sagemaker", version)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "service-2.json"), "w") as f:
        json.dump(trimmed, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{folder}/service-2.json: {len(ops)} operations, {len(keep)} shapes (botocore {botocore.__version__})")


if __name__ == "__main__":
    import botocore

    main()
