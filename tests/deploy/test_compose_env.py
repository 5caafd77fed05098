"""deploy/compose.yaml passes the gateway every environment variable its config.yaml reads."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from gateway.config import AuthConfig

ROOT = Path(__file__).resolve().parents[2]


def variables_config_reads(path: Path) -> set[str]:
    text = path.read_text()
    data = yaml.safe_load(text)
    code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments name ${VAR} as an example
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", code))

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k.endswith("_env") and isinstance(v, str):
                    names.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    auth = data.get("auth") or {}
    names.add(auth.get("metrics_keys_env", AuthConfig.metrics_keys_env))  # read whether the file names it or not
    return names


def test_compose_passes_every_variable_config_yaml_reads():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    passed = set(compose["services"]["gateway"]["environment"])
    wanted = variables_config_reads(ROOT / "config.yaml")
    assert {"OPENAI_API_KEY", "SAGEMAKER_ENDPOINT_NAME", "REDIS_URL", "GATEWAY_ADMIN_KEYS"} <= wanted
    assert wanted - passed == set()
    # and the endpoint overrides the backends read from the environment themselves
    assert {"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_REGION"} <= passed
