"""Spend is never lost: endpoint instance time, abandoned streams, broken upstreams."""
from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import pytest
import redis
from gateway_harness import RunningGateway, build_config, standin_config, wait_until
from routing_policies import build_policy

from gateway.app import create_app
from gateway.access_log import AccessLog
from gateway.tokens import TokenCounter

MSG = [{"role": "user", "content": "Tell me a long story."}]


class StepClock:
    """A settable wall clock (seconds), handed to the app instead of time.time."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_endpoint_spend_is_instance_time_times_price(openai_standin, sagemaker_standin, tmp_path):
    data = standin_config(openai_standin, sagemaker_standin)
    data["backends"]["sagemaker"]["assumed_instances"] = 2
    clock = StepClock(1_000_000.0)
    app = create_app(build_config(data, openai=openai_standin), clock=clock,
                     access_log=AccessLog(open(tmp_path / "log", "wb")))

    async def run():
        await app.startup()
        for step in (0.5, 1.0, 1798.5, 1800.0):  # 3600 s in all
            clock.now += step
            await app.tick()
        await app.shutdown()

    asyncio.run(run())
    # 2 instances × 1.408 USD/h × 1 h
    assert app.endpoint_clock.accrued_usd["sagemaker"] == Decimal("2.816")
    assert app.registry.get_sample_value("gateway_spend_usd_total", {"backend": "sagemaker", "model": ""}) \
        == pytest.approx(2.816, rel=1e-12)


def test_unconfirmed_endpoint_costs_nothing_not_even_later(openai_standin, sagemaker_standin, tmp_path):
    data = standin_config(openai_standin, sagemaker_standin)
    data["backends"]["sagemaker"]["assumed_instances"] = 0  # never described (poll_interval_s 0), nothing assumed
    clock = StepClock(1_000_000.0)
    app = create_app(build_config(data, openai=openai_standin), clock=clock,
                     access_log=AccessLog(open(tmp_path / "log", "wb")))
    spend = lambda: app.registry.get_sample_value(  # noqa: E731
        "gateway_spend_usd_total", {"backend": "sagemaker", "model": ""})

    async def run():
        await app.startup()
        for _ in range(2):
            clock.now += 1800.0
            await app.tick()
        unconfirmed = (app.endpoints["sagemaker"].state, spend())
        # The operator then says one instance runs: charged from now, not for the hour before.
        data["backends"]["sagemaker"]["assumed_instances"] = 1
        config = build_config(data, openai=openai_standin)
        app.apply_config(config, build_policy(config.routing.policy, config.routing.params))
        await app.tick()  # ticks come every second: the first one starts the clock
        for _ in range(2):
            clock.now += 1800.0
            await app.tick()
        await app.shutdown()
        return unconfirmed

    assert asyncio.run(run()) == ("unconfirmed", 0.0)
    assert app.endpoints["sagemaker"].state == "assumed"
    assert app.endpoint_clock.accrued_usd["sagemaker"] == Decimal("1.408")  # 1 instance × 1 h


def test_endpoint_spend_accrues_in_real_time(gateway):
    started = time.time()
    time.sleep(2.2)
    spent = gateway.sample("gateway_spend_usd_total", backend="sagemaker", model="")
    elapsed = time.time() - started
    per_second = 1.408 / 3600
    # ticks run once a second: the metric trails wall time by at most one tick
    assert (elapsed - 1.5) * per_second <= spent <= (elapsed + 1.0) * per_second


def test_client_leaving_mid_stream_is_still_charged(gateway, openai_standin):
    openai_standin.script(text=[f"word{i} " for i in range(200)], chunk_delay=0.01, usage=False)
    body = {"model": "gpt-4o-mini", "messages": MSG, "stream": True}
    got = b""
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body) as r:
        for part in r.iter_raw():
            got += part
            if got.count(b"data:") >= 20:
                break  # hang up after ~20 events
    entry = gateway.entries()[-1]
    assert entry.get("client_disconnected") is True
    assert entry["usage_source"] == "counted"
    assert 15 <= entry["completion_tokens"] < 400
    assert Decimal(entry["cost_usd"]) > 0
    assert gateway.sample("gateway_tokens_total", backend="openai", model="gpt-4o-mini", kind="completion") \
        == entry["completion_tokens"]


def test_upstream_breaking_mid_stream_is_charged_for_what_arrived(gateway, openai_standin):
    openai_standin.script(text=[f"tok{i} " for i in range(10)], stop_after_chunks=4, usage=False)
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions",
                      json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}) as r:
        assert r.status_code == 200
        text = b"".join(r.iter_raw())
    assert text.count(b"tok") == 4
    entry = gateway.entries()[-1]
    assert entry["completion_tokens"] == TokenCounter("o200k_base").text("tok0 tok1 tok2 tok3 ")
    assert entry.get("error")
    assert Decimal(entry["cost_usd"]) > 0


@pytest.mark.parametrize("path, model", [("chat/completions", "gpt-4o-mini"), ("responses", "gpt-4o-mini"),
                                         ("completions", "gpt-4o-mini")])
def test_in_band_stream_error_is_forwarded_in_the_gateways_words_and_charged(gateway, openai_standin, path, model):
    # the upstream's own words (here a key-shaped string) went to the client verbatim
    openai_standin.script(text=["a ", "b ", "c "], stop_after_chunks=2,
                          stream_error="model overloaded on host-7 sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX")
    body = {"model": model, "stream": True}
    body.update({"chat/completions": {"messages": MSG}, "responses": {"input": "hi"},
                 "completions": {"prompt": "hi"}}[path])
    with httpx.stream("POST", f"{gateway.base_url}/{path}", json=body) as r:
        text = b"".join(r.iter_raw())
    assert r.status_code == 200
    assert b"upstream_stream_error" in text and b"the answer above is incomplete" in text
    assert b"overloaded" not in text and b"sk-proj" not in text and b"host-7" not in text
    entry = gateway.entries()[-1]
    assert entry["completion_tokens"] >= 2 and entry["error"] == "upstream stream error event"


def test_sagemaker_stream_error_frame_becomes_an_sse_error(gateway, sagemaker_standin):
    sagemaker_standin.script(text=["x ", "y ", "z "], stop_after_chunks=1, stream_error="boom")
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions",
                      json={"model": "sagemaker/gpt-4o-mini", "messages": MSG, "stream": True}) as r:
        text = b"".join(r.iter_raw())
    assert b'"error"' in text and b"ModelStreamError" in text
    assert gateway.entries()[-1]["backend"] == "sagemaker"


def test_silent_upstream_times_out_but_a_slow_stream_does_not(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin)
    data["backends"]["openai"]["timeout_s"] = 0.5
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        # 12 chunks 0.2 s apart: 2.4 s in all, never 0.5 s silent
        openai_standin.script(text=[f"w{i} " for i in range(12)], chunk_delay=0.2)
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", timeout=10,
                          json={"model": "openai/gpt-4o-mini", "messages": MSG, "stream": True}) as r:
            body = b"".join(r.iter_raw())
        assert body.count(b"w") >= 12 and b"[DONE]" in body
        openai_standin.script(delay=1.5)  # silent before the first byte
        r = httpx.post(f"{gw.base_url}/chat/completions", timeout=10,
                       json={"model": "openai/gpt-4o-mini", "messages": MSG})
        assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_error"


def test_streamed_and_cut_off_requests_reach_the_shared_ledger(openai_standin, shared_redis):
    """On one Redis and on a Redis Cluster: the ledger every replica reads holds the sum of
    every request's cost (access log), streamed, cut off by the client or not."""
    data = standin_config(openai_standin, state={"redis_url": shared_redis.url, "redis_cluster": shared_redis.cluster,
                                                 "flush_interval_s": 0.2})
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        openai_standin.script(prompt_tokens=200, completion_tokens=30)
        assert httpx.post(f"{gw.base_url}/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": MSG}).status_code == 200
        openai_standin.script(text=[f"w{i} " for i in range(30)])
        with httpx.stream("POST", f"{gw.base_url}/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}) as r:
            assert b"[DONE]" in b"".join(r.iter_raw())
        openai_standin.script(text=[f"word{i} " for i in range(200)], chunk_delay=0.01, usage=False)
        got = b""
        with httpx.stream("POST", f"{gw.base_url}/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}) as r:
            for part in r.iter_raw():
                got += part
                if got.count(b"data:") >= 10:
                    break  # hang up mid-stream
        entries = gw.entries(at_least=3)
        assert entries[-1].get("client_disconnected") is True
        costs = sum((Decimal(e["cost_usd"]) for e in entries), Decimal(0))
        assert costs > 0
        ledger = lambda: httpx.get(f"{gw.url}/admin/routing").json()["spend_usd"].get("openai/gpt-4o-mini")  # noqa: E731
        assert wait_until(lambda: ledger() == str(costs)), (ledger(), costs)
        assert httpx.get(f"{gw.url}/admin/routing").json()["state_store"] == {"kind": "redis", "healthy": True}
        # and it is in Redis itself (whole nano-USD; a sub-nano remainder waits in the process)
        client = (redis.RedisCluster if shared_redis.cluster else redis.Redis).from_url(shared_redis.url)
        stored = lambda: int(client.hget("{gw}:spend", "openai\x1fgpt-4o-mini") or 0)  # noqa: E731
        assert wait_until(lambda: stored() == int(costs.scaleb(9))), (stored(), costs)
        client.close()


@pytest.mark.parametrize("usage, counted", [
    ({"prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 1_000_000_000}, False),  # cached > prompt
    ({"prompt_tokens": -10, "completion_tokens": 5}, "prompt"),  # the prompt counted here
    ({"prompt_tokens": 10, "completion_tokens": -5}, True),  # the whole report dropped: counted here
    ({"prompt_tokens": 10, "completion_tokens": 10**18}, True),  # was billed 750 billion USD
])
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_usage_that_cannot_be_true_is_not_what_is_billed(gateway, openai_standin, usage, counted, stream):
    # Negative counts crashed the metrics (a counter cannot go down): a 500, or a stream cut before
    # its end, the request missing from the access log and its cost dropped.
    openai_standin.script(text=["a ", "b ", "c "], **usage)
    body = {"model": "gpt-4o-mini", "messages": MSG, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
        with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body) as r:
            status, text = r.status_code, b"".join(r.iter_raw())
        assert text.rstrip().endswith(b"data: [DONE]")
    else:
        r = httpx.post(f"{gateway.base_url}/chat/completions", json=body)
        status = r.status_code
    assert status == 200
    entry = gateway.entries()[-1]
    assert entry["status"] == 200 and 0 <= entry["completion_tokens"] <= 100 and entry["prompt_tokens"] >= 0
    assert 0 <= entry["cached_tokens"] <= entry["prompt_tokens"]
    assert entry["usage_source"] == ("upstream" if counted is False else "counted")
    assert 0 < Decimal(entry["cost_usd"]) < Decimal("0.01")
    if counted == "prompt":
        assert entry["prompt_tokens"] > 0  # counted with tiktoken, not the -10 reported


@pytest.mark.parametrize("model", ["gpt-4o-mini", "sagemaker/gpt-4o-mini"])
def test_an_error_object_in_a_200_answer_is_the_gateways_502(gateway, openai_standin, sagemaker_standin, model):
    # a container (or an API) answering 200 with an error object was passed through as an answer
    standin = sagemaker_standin if model.startswith("sagemaker/") else openai_standin
    standin.script(error_status=200, error_body={"error": {"message": "CUDA OOM on node gpu-7, token=abc123",
                                                           "type": "server_error"}})
    r = httpx.post(f"{gateway.base_url}/chat/completions", json={"model": model, "messages": MSG})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
    assert "CUDA" not in r.text and "abc123" not in r.text
    assert gateway.entries()[-1]["status"] == 502
