"""The gateway's default config, pointed at the demo's stand-ins.

Only what connects the gateway to its upstreams changes (URLs, the key's variable), plus what a
demo needs: the API model it is priced against (``--api-model``; prices from litellm's bundled
cost map, as for any model), capacity decisions applied (``routing.dry_run: false``) against
the stand-in control plane, in-process state, a faster tick for the sped-up clock. Thresholds,
instance type and price, capacity, bounds and start-up time stay the default config's.
"""
from __future__ import annotations

import copy

import yaml

from ..config import GatewayConfig, parse_config
from ..replay.bundled import BUNDLED_CONFIG

OPENAI_KEY_ENV = "GATEWAY_DEMO_OPENAI_KEY"


def default_config_data() -> dict:
    with open(BUNDLED_CONFIG, "rb") as f:
        return yaml.safe_load(f)


def demo_config(openai_url: str, openai_key: str, runtime_url: str, api_model: str, speed: float,
                port: int = 0, data: dict | None = None) -> GatewayConfig:
    """``speed``: simulated seconds per real second (the tick stays ~4 a real second)."""
    data = copy.deepcopy(data if data is not None else default_config_data())
    backends = data["backends"]
    api = next(name for name, b in backends.items() if b.get("type") == "openai")
    endpoint = next(name for name, b in backends.items() if b.get("type") == "sagemaker")
    backends[api].update(base_url=openai_url, api_key_env=OPENAI_KEY_ENV)
    backends[api].pop("prices", None)  # the API model's litellm prices
    backends[endpoint].update(endpoint_url=runtime_url, assumed_instances=0,
                              poll_interval_s=max(15.0, speed / 4))  # about four polls a real second at most
    # The default config's chat model, renamed to the API model it is priced against.
    chat = next(name for name, m in data["models"].items() if m.get("kind", "chat") == "chat")
    routes = [{"backend": r["backend"], "model": api_model} for r in data["models"].pop(chat)["backends"]]
    data["models"] = {api_model: {"backends": routes}, **data["models"]}
    data.setdefault("routing", {})["dry_run"] = False
    data["state"] = {"redis_url": "", "flush_interval_s": 0.25}
    data.setdefault("server", {}).update(host="127.0.0.1", port=port, workers=1, access_log=False)
    # No variable of the user's shell reaches the demo's config: ${...} take their defaults.
    return parse_config(data, f"{BUNDLED_CONFIG} (demo)", {OPENAI_KEY_ENV: openai_key})
