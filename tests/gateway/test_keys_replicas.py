"""Two `gateway serve` processes on one real Redis (and on a real Redis Cluster): a budget, rpm and a revocation hold across both."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import openai
import pytest
import yaml
from gateway_harness import ServedGateway, wait_until
from keys_helpers import MSG, SECRET_ENV, admin, create_key, keys_config
from openai import OpenAI


@pytest.fixture
def two_gateways(openai_standin, sagemaker_standin, shared_redis, tmp_path):
    """On one Redis, then on a three-master Redis Cluster; gpt-4o-mini on the API, llama-endpoint
    on the SageMaker endpoint (1 instance at 1.408 USD/h, max_instances 1)."""
    path = tmp_path / "config.yaml"
    state = {"redis_url": shared_redis.url, "redis_cluster": shared_redis.cluster}
    path.write_text(yaml.safe_dump(keys_config(openai_standin, sagemaker_standin, state=state)))
    env = {"STANDIN_OPENAI_KEY": openai_standin.api_key, **SECRET_ENV}
    with ServedGateway(path, env) as a, ServedGateway(path, env) as b:
        yield a, b


def _chat(gw, key, **extra) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "gpt-4o-mini", "messages": MSG, **extra}, timeout=30)


def test_a_burst_through_both_spends_at_most_budget_plus_one_request(two_gateways, openai_standin):
    a, b = two_gateways
    openai_standin.script(prompt_tokens=10, completion_tokens=20, delay=0.05)  # 0.000225 USD each
    budget = Decimal("0.002")
    key = create_key(a.url, alias="burst", budget_usd=str(budget), budget_period="month")
    assert admin(b.url, "GET", "/admin/keys/burst").status_code == 200  # B reloads its records now
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: _chat((a, b)[i % 2], key, max_tokens=40), range(40)))
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert refused and all(r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert "'burst'" in refused[0].json()["error"]["message"]
    costs = [Decimal(r.headers["x-gateway-cost-usd"]) for r in ok]
    assert sum(costs) <= budget + max(costs), "more than one request past the budget"
    assert {i % 2 for i, r in enumerate(replies) if r.status_code == 200} == {0, 1}, "not served by both"

    def reported(gw):
        return Decimal(admin(gw.url, "GET", "/admin/keys/burst").json()["spend_usd"])

    # either replica reports what both served, to the micro-dollar, once the settlements are pushed
    micro = Decimal("0.000001")
    assert wait_until(lambda: all(abs(reported(gw) - sum(costs)) < micro for gw in (a, b))), \
        [reported(gw) for gw in (a, b)]
    # worst cases reserved by the burst were held until settled (refusing a little early, never
    # late); what is left of the budget is then served, one at a time, until it is crossed
    refusals = 0
    for i in range(40):
        r = _chat((a, b)[i % 2], key, max_tokens=40)
        if r.status_code != 200:
            assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
            refusals += 1
            if refusals == 2:  # refused again once every settlement had landed: the budget is spent
                break
            assert wait_until(lambda: all(abs(reported(gw) - sum(costs)) < micro for gw in (a, b)))
            continue
        refusals = 0
        costs.append(Decimal(r.headers["x-gateway-cost-usd"]))
    assert budget <= sum(costs) <= budget + max(costs)
    assert wait_until(lambda: all(abs(reported(gw) - sum(costs)) < micro for gw in (a, b)))
    assert all(_chat(gw, key).status_code == 429 for gw in (a, b))


def test_an_endpoint_only_model_is_cut_off_at_budget_plus_one_request(two_gateways, sagemaker_standin):
    """An endpoint request is charged its share of the last minute's instance time: at most the
    whole minute, 1.408 USD/h x 1 instance x 60 s. That is what each one reserves, so a burst
    cannot run past the budget while its requests are in flight (it reserved 0 before)."""
    a, b = two_gateways
    cap = Decimal("1.408") / 60
    sagemaker_standin.script(prompt_tokens=10, completion_tokens=20, delay=0.05)
    budget = Decimal("0.03")
    key = create_key(a.url, alias="ep-burst", budget_usd=str(budget), budget_period="day")
    assert admin(b.url, "GET", "/admin/keys/ep-burst").status_code == 200  # B reloads its records now
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: _chat((a, b)[i % 2], key, model="llama-endpoint", max_tokens=40),
                                range(40)))
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert ok and all(r.headers["x-gateway-backend"] == "sagemaker" for r in ok)
    assert refused and all(r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert "'ep-burst'" in refused[0].json()["error"]["message"]
    costs = [Decimal(r.headers["x-gateway-cost-usd"]) for r in ok]
    assert all(0 < c <= cap for c in costs), costs
    assert sum(costs) <= budget + max(costs), f"{sum(costs)} spent: more than one request past {budget}"
    micro = Decimal("0.000001")
    assert wait_until(lambda: all(abs(Decimal(admin(gw.url, "GET", "/admin/keys/ep-burst").json()["spend_usd"])
                                      - sum(costs)) < micro for gw in (a, b)))


def test_rpm_holds_across_both_and_says_when_to_retry(two_gateways):
    a, b = two_gateways
    key = create_key(a.url, alias="slow", rpm=5)
    assert admin(b.url, "GET", "/admin/keys/slow").status_code == 200  # B reloads its records now
    replies = [_chat((a, b)[i % 2], key) for i in range(8)]
    assert [r.status_code for r in replies] == [200] * 5 + [429] * 3
    r = replies[-1]
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-limit-requests"] == "5" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    listed = admin(b.url, "GET", "/admin/keys/slow").json()
    assert listed["rpm"] == 5


def test_every_answer_carries_the_rate_limits_counting_down_across_both(two_gateways, openai_standin):
    """OpenAI's x-ratelimit-* on 2xx answers too, every API, streamed or not, from the one reserve
    round trip: the remaining requests count down by one per request whichever replica serves it."""
    a, b = two_gateways
    key = create_key(a.url, alias="counted", rpm=20, tpm=100_000)
    assert admin(b.url, "GET", "/admin/keys/counted").status_code == 200  # B reloads its records now
    ca, cb = (OpenAI(base_url=gw.base_url, api_key=key, max_retries=0) for gw in (a, b))
    gen = {"model": "gpt-4o-mini", "max_tokens": 50}
    calls = [  # (client, how, streamed)
        (ca.chat.completions, dict(messages=MSG, **gen), False),
        (cb.chat.completions, dict(messages=MSG, stream=True, **gen), True),
        (ca.completions, dict(prompt="hello", **gen), False),
        (cb.completions, dict(prompt="hello", stream=True, **gen), True),
        (ca.responses, dict(model="gpt-4o-mini", input="hello", max_output_tokens=50), False),
        (cb.responses, dict(model="gpt-4o-mini", input="hello", max_output_tokens=50, stream=True), True),
        (ca.embeddings, dict(model="text-embedding-3-small", input="hello"), False),
        (cb.embeddings, dict(model="text-embedding-3-small", input="hello"), False),
    ]
    tokens_left = 100_000
    for i, (api, kwargs, streamed) in enumerate(calls, 1):
        raw = api.with_raw_response.create(**kwargs)
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "20" and h["x-ratelimit-limit-tokens"] == "100000"
        assert h["x-ratelimit-remaining-requests"] == str(20 - i), (i, kwargs)
        left = int(h["x-ratelimit-remaining-tokens"])
        # generation counts prompt + max_tokens (as OpenAI does); embeddings their input
        assert left <= tokens_left - (51 if "max_tokens" in kwargs or "max_output_tokens" in kwargs else 1)
        tokens_left = left
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
            assert h[name].endswith("s") and 0 < float(h[name][:-1]) <= 60, h[name]
        parsed = raw.parse()
        if streamed:
            assert list(parsed)  # the whole stream is served after those headers
    # an upstream failure's answer carries them too (it was admitted and counted)
    openai_standin.fail_next(500)
    with pytest.raises(openai.InternalServerError) as e:
        ca.chat.completions.create(messages=MSG, **gen)
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == str(20 - len(calls) - 1)
    # a key with neither rpm nor tpm has none
    plain = OpenAI(base_url=b.base_url, api_key=create_key(a.url, alias="unlimited"), max_retries=0)
    assert wait_until(lambda: _chat(b, plain.api_key).status_code == 200)
    raw = plain.chat.completions.with_raw_response.create(messages=MSG, **gen)
    assert not [k for k in raw.headers if k.startswith("x-ratelimit")]


def test_revocation_reaches_both_within_two_seconds(two_gateways):
    a, b = two_gateways
    key = create_key(a.url, alias="leaky")
    assert wait_until(lambda: _chat(b, key).status_code == 200, timeout=5), "B never learned the new key"
    assert _chat(a, key).status_code == 200
    assert admin(a.url, "DELETE", "/admin/keys/leaky").status_code == 200
    revoked = time.monotonic()
    assert wait_until(lambda: _chat(a, key).status_code == 401 and _chat(b, key).status_code == 401, timeout=2.0)
    assert time.monotonic() - revoked <= 2.0
    assert admin(b.url, "GET", "/admin/keys/leaky").status_code == 404
