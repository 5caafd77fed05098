"""Streams (whole, cut off by the upstream, abandoned by the client) are charged to the key; a Redis
outage keeps requests flowing on the local view (or refuses them, if so configured) and the spend
made meanwhile lands in Redis exactly once when it is back."""
from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest
import time

import redis
from redis.cluster import RedisCluster

from gateway.keys.periods import period_id
from gateway_harness import RunningGateway, build_config, wait_until
from keys_helpers import MSG, SECRET_ENV, admin, create_key, keys_config
from openai import OpenAI


def _gateway(openai_standin, redis_url, cluster=False, **keys):
    data = keys_config(openai_standin, state={"redis_url": redis_url, "flush_interval_s": 0.2,
                                              "redis_cluster": cluster})
    data["keys"].update(keys)
    return RunningGateway(build_config(data, SECRET_ENV, openai=openai_standin))


def _costs(gw, alias, n):
    entries = [e for e in gw.entries(at_least=n) if e.get("key_alias") == alias and e["status"] == 200]
    return [Decimal(e["cost_usd"]) for e in entries]


def _ledger_nanos(redis_url: str, alias: str, period: str = "month", cluster: bool = False) -> int:
    """What Redis itself holds for the key's current period (read straight from the server)."""
    r = (RedisCluster if cluster else redis.Redis).from_url(redis_url)
    try:
        return int(r.get(f"{{gw}}:kspend:{alias}:{period_id(period, time.time())}") or 0)
    finally:
        r.close()


def test_whole_cut_off_and_abandoned_streams_are_charged(openai_standin, shared_redis):
    redis_server = shared_redis
    with _gateway(openai_standin, redis_server.url, redis_server.cluster) as gw:
        key = create_key(gw.url, alias="streamer", budget_usd=1)
        client = OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        openai_standin.script(text="one two three four five six seven eight", chunk_delay=0.01)
        assert "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True) if c.choices)
        openai_standin.script(text="one two three four five six seven eight", stop_after_chunks=3)
        with pytest.raises(openai.APIError):  # the upstream drops the connection mid-stream
            for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True):
                pass
        openai_standin.script(text="word " * 200, chunk_delay=0.02)
        with httpx.stream("POST", f"{gw.base_url}/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "gpt-4o-mini", "messages": MSG, "stream": True}) as r:
            next(r.iter_raw())  # the client reads the first bytes and hangs up
        costs = _costs(gw, "streamer", 3)
        assert len(costs) == 3 and all(c > 0 for c in costs), costs
        total = sum(costs)
        nanos = int((total * 10**9).to_integral_value())
        assert wait_until(lambda: abs(_ledger_nanos(redis_server.url, "streamer", cluster=redis_server.cluster)
                                      - nanos) <= 3)
        assert Decimal(admin(gw.url, "GET", "/admin/keys/streamer").json()["spend_usd"]) - total < Decimal("1e-6")


def test_redis_outage_runs_on_the_local_view_and_catches_up_once(openai_standin, redis_server):
    openai_standin.script(prompt_tokens=10, completion_tokens=20)
    with _gateway(openai_standin, redis_server.url) as gw:
        key = create_key(gw.url, alias="outage", budget_usd="0.0015", budget_period="total")
        client = OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=30)
        redis_server.pause()  # a hung Redis: every call times out
        try:
            served = 1
            with pytest.raises(openai.RateLimitError) as e:
                for _ in range(20):  # the local view still enforces the budget
                    client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=30)
                    served += 1
            assert e.value.body["code"] == "budget_exceeded"
            assert not gw.app.keys.ledger.healthy
        finally:
            redis_server.resume()
        costs = _costs(gw, "outage", served)
        assert len(costs) == served == 7  # 0.000225 USD each: the 7th crosses 0.0015
        nanos = int((sum(costs) * 10**9).to_integral_value())
        assert wait_until(lambda: gw.app.keys.ledger.healthy and _ledger_nanos(redis_server.url, "outage", "total") == nanos)
        # the outage's batch is acknowledged; later syncs (every 0.2 s) never apply it again
        seq = gw.app.keys.ledger._seq
        assert wait_until(lambda: gw.app.keys.ledger._outstanding is None)
        assert not wait_until(lambda: _ledger_nanos(redis_server.url, "outage", "total") != nanos, timeout=1.0)
        assert gw.app.keys.ledger._seq == seq


def test_redis_outage_with_deny_refuses_in_openai_shape(openai_standin, redis_server):
    with _gateway(openai_standin, redis_server.url, on_redis_down="deny") as gw:
        key = create_key(gw.url, alias="strict", budget_usd=1)
        client = OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        redis_server.pause()
        try:
            for _ in range(2):  # the call that finds Redis hung, and one while it is known down
                with pytest.raises(openai.APIStatusError) as e:
                    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
                assert e.value.status_code == 503 and e.value.body["code"] == "budget_unavailable"
        finally:
            redis_server.resume()
        assert wait_until(lambda: gw.app.keys.ledger.healthy)
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
