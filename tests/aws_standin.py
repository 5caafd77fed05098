"""moto's server mode as the local stand-in for the SageMaker control plane."""
from __future__ import annotations

import uuid

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


def make_endpoint(sm, instances: int = 2) -> str:
    name = f"ep-{uuid.uuid4().hex[:10]}"
    sm.create_model(ModelName=name, ExecutionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/sm",
                    PrimaryContainer={"Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/llm:latest"})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": instances,
        "InstanceType": "ml.g4dn.xlarge",  # moto's instance list predates ml.g5
    }])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    return name
