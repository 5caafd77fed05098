"""The admin view, live config reload and the live capacity recommendation."""
from __future__ import annotations

import time
from decimal import Decimal

import httpx
import yaml
from gateway_harness import RunningGateway, build_config, standin_config, wait_until
from openai import OpenAI

from gateway.config import load_config

MSG = [{"role": "user", "content": "hello"}]


def _write(path, data):
    path.write_text(yaml.safe_dump(data))



def test_admin_routing_needs_the_admin_key_and_shows_the_savings(openai_standin, sagemaker_standin):
    env = {"GATEWAY_API_KEYS": "app-key", "GATEWAY_ADMIN_KEYS": "admin-key"}
    cfg = build_config(standin_config(openai_standin, sagemaker_standin,
                                      routing={"policy": "break_even", "capacity_interval_s": 0.2}),
                       env=env, openai=openai_standin)
    with RunningGateway(cfg) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="app-key", max_retries=0)
        # chat-like mix: at gpt-4o-mini prices the API charges ~$0.65 per 1M completion tokens
        # worth of traffic, a fully used g5.xlarge ~$1.30
        openai_standin.script(prompt_tokens=100, completion_tokens=300)
        sagemaker_standin.script(prompt_tokens=100, completion_tokens=300)
        # an instance in service is paid for either way: break_even uses it
        r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert r.headers["x-gateway-route-reason"] == "endpoint_in_service"
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
        assert httpx.get(f"{gw.url}/admin/routing", headers={"Authorization": "Bearer app-key"}).status_code == 401
        r = httpx.get(f"{gw.url}/admin/routing", headers={"Authorization": "Bearer admin-key"})
        assert r.status_code == 200
        view = r.json()
        assert view["policy"] == "break_even"
        assert view["volume"]["gpt-4o-mini"]["60s"]["requests_per_hour"] > 0
        # gpt-4o-mini is so cheap that a g5.xlarge never pays off: the gateway says so
        recommendation = lambda: httpx.get(f"{gw.url}/admin/routing",  # noqa: E731
                                           headers={"Authorization": "Bearer admin-key"}).json()[
            "endpoints"]["sagemaker"]["recommendation"]
        assert wait_until(lambda: recommendation()["reason"] == "endpoint_never_pays_off")
        assert recommendation()["instances"] == 0 and recommendation()["break_even_requests_per_hour"] is None
        savings = view["savings"]
        # two requests of 100+300 tokens priced at gpt-4o-mini: 2 × (100×0.15 + 300×0.60)/1e6
        assert Decimal(savings["api_only_spend_usd"]) == 2 * (100 * Decimal("0.15") + 300 * Decimal("0.60")) / 10**6
        assert "admin-key" not in r.text and "app-key" not in r.text


def test_admin_view_closed_when_only_app_keys_exist(openai_standin):
    cfg = build_config(standin_config(openai_standin), env={"GATEWAY_API_KEYS": "k"}, openai=openai_standin)
    with RunningGateway(cfg) as gw:
        assert httpx.get(f"{gw.url}/admin/routing", headers={"Authorization": "Bearer k"}).status_code == 403


def test_recommendation_scales_up_against_a_pricey_api(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin,
                          routing={"policy": "break_even", "capacity_interval_s": 0.2})
    # gpt-4o prices: a busy endpoint pays off
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "cached_input": 1.25, "output": 10}}
    data["backends"]["sagemaker"]["assumed_instances"] = 0
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        openai_standin.script(prompt_tokens=3000, completion_tokens=400)
        for _ in range(30):
            r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
            # nothing in service: the endpoint cannot take it
            assert r.headers["x-gateway-backend"] == "openai"
        def recommended():
            rec = httpx.get(f"{gw.url}/admin/routing").json()["endpoints"]["sagemaker"]["recommendation"]
            return rec and rec["instances"] >= 1 and rec["reason"] == "volume_above_break_even"
        assert wait_until(recommended)
        assert gw.sample("gateway_endpoint_recommended_instances", backend="sagemaker",
                         reason="volume_above_break_even") >= 1


def test_config_file_change_applies_thresholds_and_a_bad_file_is_refused(openai_standin, sagemaker_standin,
                                                                          tmp_path, caplog):
    path = tmp_path / "config.yaml"
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "first_healthy"})
    _write(path, data)
    env = {"STANDIN_OPENAI_KEY": openai_standin.api_key}
    with RunningGateway(load_config(str(path), env=env)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        reason = lambda: client.chat.completions.with_raw_response.create(  # noqa: E731
            model="gpt-4o-mini", messages=MSG).headers["x-gateway-route-reason"]
        assert reason() == "first_healthy"
        data["routing"]["policy"] = "always_selfhosted"
        data["backends"]["sagemaker"]["max_instances"] = 3
        _write(path, data)
        assert wait_until(lambda: reason() == "endpoint_in_service")
        assert gw.app.actuators["sagemaker"].cfg.max_instances == 3  # bounds reach the actuator too
        path.write_text("routing: [this is not a mapping\n")
        time.sleep(1.5)
        assert reason() == "endpoint_in_service"  # the running config stayed
        assert gw.app.config.routing.policy == "always_selfhosted"
        data["backends"]["openai"]["base_url"] = "http://127.0.0.1:1/v1"
        _write(path, data)
        time.sleep(1.5)
        assert gw.app.config.backends["openai"].base_url == openai_standin.base_url
        assert any("restart" in r.getMessage() for r in caplog.records)


def test_capacity_is_sized_for_the_traffic_that_fits_the_endpoint(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin,
                          routing={"policy": "break_even", "capacity_interval_s": 0.2})
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
    data["backends"]["sagemaker"].update(assumed_instances=0, context_window=8192)
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        recommendation = lambda: httpx.get(f"{gw.url}/admin/routing").json()["endpoints"]["sagemaker"][  # noqa: E731
            "recommendation"]
        openai_standin.script(prompt_tokens=9000, completion_tokens=400)  # beyond the 8k window
        for _ in range(30):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        time.sleep(0.6)
        assert recommendation()["reason"] == "no_traffic"
        assert httpx.get(f"{gw.url}/admin/routing").json()["volume"]["gpt-4o-mini"]["60s"]["requests"] == 30
        openai_standin.script(prompt_tokens=3000, completion_tokens=400)
        for _ in range(30):
            client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert wait_until(lambda: recommendation()["reason"] == "volume_above_break_even")


def test_a_fresh_gateway_does_not_scale_down_on_empty_windows(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin,
                          routing={"policy": "break_even", "capacity_interval_s": 0.2, "params": {"min_dwell_s": 900}})
    data["backends"]["openai"]["prices"] = {"gpt-4o-mini": {"input": 2.5, "output": 10}}
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        time.sleep(0.6)
        rec = httpx.get(f"{gw.url}/admin/routing").json()["endpoints"]["sagemaker"]["recommendation"]
        # a restart knows no traffic yet (in-process state): keep the instance for min_dwell_s
        assert (rec["instances"], rec["reason"]) == (1, "min_dwell")
