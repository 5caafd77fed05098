"""A Redis outage under a serving gateway: requests keep flowing, no spend is lost or doubled."""
from __future__ import annotations

from decimal import Decimal

import httpx
from gateway_harness import RunningGateway, build_config, standin_config, wait_until
from openai import OpenAI

MSG = [{"role": "user", "content": "hello"}]


def test_spend_made_during_a_redis_outage_lands_once_redis_is_back(openai_standin, persistent_shared_redis):
    redis = persistent_shared_redis  # one server, then every master of the cluster at once
    data = standin_config(openai_standin, state={"redis_url": redis.url, "redis_cluster": redis.cluster,
                                                 "flush_interval_s": 0.2})
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        admin = lambda: httpx.get(f"{gw.url}/admin/routing").json()  # noqa: E731
        costs = []
        openai_standin.script(prompt_tokens=1000, completion_tokens=100)
        for _ in range(3):
            costs.append(Decimal(client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MSG).headers["x-gateway-cost-usd"]))
        assert wait_until(lambda: admin()["spend_usd"].get("openai/gpt-4o-mini") == str(sum(costs)))

        redis.stop()  # SIGKILL: an outage, not a clean shutdown
        for _ in range(4):
            r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
            assert r.status_code == 200
            costs.append(Decimal(r.headers["x-gateway-cost-usd"]))
        assert wait_until(lambda: not admin()["state_store"]["healthy"])
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 200 and ready.json()["state_store_healthy"] is False

        redis.restart()
        assert wait_until(lambda: admin()["state_store"]["healthy"], timeout=15)
        # every request's cost exactly once: the 3 before (kept by Redis' AOF) + the 4 buffered
        assert wait_until(lambda: admin()["spend_usd"].get("openai/gpt-4o-mini") == str(sum(costs)), timeout=15), \
            (admin()["spend_usd"], sum(costs))
