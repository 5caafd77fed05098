"""Shared bits of the virtual-key tests: a config with keys on, and admin calls."""
from __future__ import annotations

import httpx
from gateway_harness import standin_config

ADMIN = "adm-test-key"
SECRET_ENV = {"GATEWAY_ADMIN_KEYS": ADMIN, "GATEWAY_KEY_SECRET": "test-server-secret"}
MSG = [{"role": "user", "content": "hello"}]


def keys_config(openai, sagemaker=None, **sections) -> dict:
    """gpt-4o-mini on the API only; with ``sagemaker``, also ``llama-endpoint`` served by the endpoint only."""
    data = standin_config(openai, sagemaker, **sections)
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
    if sagemaker is not None:
        data["models"]["gpt-4o-mini"]["backends"] = [{"backend": "openai", "model": "gpt-4o-mini"}]
        data["models"]["llama-endpoint"] = {"backends": [{"backend": "sagemaker"}], "encoding": "o200k_base"}
    data["keys"] = {"default_max_tokens": 200, "tags": ["checkout", "search"], **data.get("keys", {})}
    return data


def admin(url: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=body, headers={"authorization": f"Bearer {ADMIN}"},
                         timeout=10)


def create_key(url: str, **fields) -> str:
    r = admin(url, "POST", "/admin/keys", fields)
    assert r.status_code == 201, r.text
    return r.json()["key"]
