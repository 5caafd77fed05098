"""Two gateway processes on one real Redis (and on a real Redis Cluster): same volume, same routing, endpoint time counted once."""
from __future__ import annotations

import time
from decimal import Decimal

import httpx
import yaml
from gateway_harness import RunningGateway, ServedGateway, build_config, standin_config, wait_until
from openai import OpenAI

MSG = [{"role": "user", "content": "hello"}]


def _config_file(openai_standin, sagemaker_standin, redis, path):
    data = standin_config(openai_standin, sagemaker_standin,
                          routing={"policy": "break_even", "capacity_interval_s": 0.2},
                          state={"redis_url": redis.url, "redis_cluster": redis.cluster,
                                 "flush_interval_s": 0.2})
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
    data["backends"]["sagemaker"]["assumed_instances"] = 0
    path.write_text(yaml.safe_dump(data))
    return path


def test_two_gateways_share_volume_and_decide_the_same(openai_standin, sagemaker_standin, shared_redis, tmp_path):
    path = _config_file(openai_standin, sagemaker_standin, shared_redis, tmp_path / "config.yaml")
    env = {"STANDIN_OPENAI_KEY": openai_standin.api_key}
    with ServedGateway(path, env) as a, ServedGateway(path, env) as b:
        openai_standin.script(prompt_tokens=3000, completion_tokens=400)
        client_a = OpenAI(base_url=a.base_url, api_key="x", max_retries=0)
        for _ in range(25):
            client_a.chat.completions.create(model="gpt-4o-mini", messages=MSG)

        def view(gw):
            return httpx.get(f"{gw.url}/admin/routing").json()

        def same_volume():
            va, vb = view(a), view(b)
            totals = lambda v: {k: v["volume"]["gpt-4o-mini"]["3600s"][k]  # noqa: E731
                                for k in ("requests", "prompt_tokens", "completion_tokens")}
            return totals(va) == totals(vb) == {"requests": 25, "prompt_tokens": 75000, "completion_tokens": 10000}

        assert wait_until(same_volume), "B never saw the traffic A served"

        def same_recommendation():
            ra = view(a)["endpoints"]["sagemaker"]["recommendation"]
            rb = view(b)["endpoints"]["sagemaker"]["recommendation"]
            # the first decision scales up; later ones hold it ("at_cheapest")
            scaled = ("volume_above_break_even", "at_cheapest")
            return ra and rb and ra["instances"] == rb["instances"] >= 1 \
                and ra["reason"] in scaled and rb["reason"] in scaled

        assert wait_until(same_recommendation)
        # the API spend both see in the shared ledger is the same, to the nano-dollar
        sa, sb = view(a)["savings"], view(b)["savings"]
        assert wait_until(lambda: view(a)["spend_usd"] == view(b)["spend_usd"])
        assert Decimal(sa["api_only_spend_usd"]) > 0 and sb["api_only_spend_usd"]
        # a request to B routes as it would on A
        client_b = OpenAI(base_url=b.base_url, api_key="x", max_retries=0)
        ra = client_a.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        rb = client_b.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert ra.headers["x-gateway-route-reason"] == rb.headers["x-gateway-route-reason"]


def test_endpoint_time_is_counted_once_across_processes(openai_standin, sagemaker_standin, shared_redis):
    data = standin_config(openai_standin, sagemaker_standin,
                          state={"redis_url": shared_redis.url, "redis_cluster": shared_redis.cluster})
    cfg = build_config(data, openai=openai_standin)
    started = time.time()
    with RunningGateway(cfg) as a, RunningGateway(cfg) as b:
        both_up = time.time()  # startup can take seconds on a loaded machine: not counted below
        time.sleep(3.0)
        both_stopping = time.time()
    elapsed = time.time() - started
    spent = sum(gw.sample("gateway_spend_usd_total", backend="sagemaker", model="") or 0 for gw in (a, b))
    per_second = 1.408 / 3600
    assert spent <= elapsed * per_second * 1.05, "two processes each charged the endpoint's time"
    assert spent >= (both_stopping - both_up - 1.5) * per_second
