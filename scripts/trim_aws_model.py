#!/usr/bin/env python3
"""Write the SageMaker control-plane API model cut down to the calls the gateway makes.

botocore's full ``sagemaker`` model (400 kB gzipped, ~26 MB once loaded) describes
~380 operations; the gateway calls DescribeEndpoint,
UpdateEndpointWeightsAndCapacities and, for inference components, DescribeInferenceComponent and
UpdateInferenceComponentRuntimeConfig. boto3 loads a model from the first folder on
its data path that has one, so the cut-down copy in ``gateway/aws_models`` is the
same model, restricted. Rerun after upgrading botocore:

    python scripts/trim_aws_model.py
"""
from __future__ import annotations

import json
import os

import botocore.loaders

OPERATIONS = ("DescribeEndpoint", "UpdateEndpointWeightsAndCapacities", "DescribeInferenceComponent",
              "UpdateInferenceComponentRuntimeConfig")
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


def main() -> None:
    loader = botocore.loaders.Loader()
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
