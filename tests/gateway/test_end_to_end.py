"""The gateway end to end: the official openai SDK → gateway → stand-in OpenAI / SageMaker."""
from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest
from gateway_harness import RunningGateway, build_config, standin_config
from openai import OpenAI

from gateway.tokens import TokenCounter

MSG = [{"role": "user", "content": "Say hello to the gateway, please."}]
GPT4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}  # USD / 1M


def api_cost(prompt, completion, cached=0):
    return ((prompt - cached) * GPT4O_MINI["input"] + cached * GPT4O_MINI["cached"]
            + completion * GPT4O_MINI["output"]) / Decimal(1_000_000)


def test_chat_non_stream_reports_tokens_and_exact_cost(gateway, client, openai_standin):
    openai_standin.script(text="Hello there, friend.", prompt_tokens=1234, completion_tokens=7, cached_tokens=1000)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello there, friend."
    assert raw.headers["x-gateway-backend"] == "openai"
    assert raw.headers["x-gateway-route-reason"] == "first_healthy"
    assert raw.headers["x-gateway-prompt-tokens"] == "1234"
    assert raw.headers["x-gateway-completion-tokens"] == "7"
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == api_cost(1234, 7, cached=1000)
    # the upstream got the client's body and the gateway's upstream key, never the client's
    assert openai_standin.last_request.json["messages"] == MSG
    assert openai_standin.last_request.headers["authorization"] == f"Bearer {openai_standin.api_key}"
    entry = gateway.entries()[-1]
    assert entry["backend"] == "openai" and entry["usage_source"] == "upstream"
    assert Decimal(entry["cost_usd"]) == api_cost(1234, 7, cached=1000)
    assert openai_standin.api_key not in str(gateway.entries())


def test_stream_passes_chunks_and_withholds_usage_the_client_did_not_ask_for(gateway, client, openai_standin):
    openai_standin.script(text="one two three four", prompt_tokens=50, completion_tokens=4)
    with client.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MSG, stream=True) as raw:
        headers = raw.headers
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "one two three four"
    assert all(c.choices for c in chunks), "a usage-only chunk leaked to a client that did not ask for it"
    assert openai_standin.last_request.json["stream_options"] == {"include_usage": True}
    assert headers["x-gateway-backend"] == "openai"
    assert headers["content-type"].startswith("text/event-stream")
    entry = gateway.entries()[-1]
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["usage_source"]) == (50, 4, "upstream")


def test_stream_with_include_usage_gets_the_usage_chunk(gateway, client, openai_standin):
    openai_standin.script(text="a b c", prompt_tokens=9, completion_tokens=3)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 9 and chunks[-1].usage.completion_tokens == 3


def test_stream_without_upstream_usage_is_counted_with_tiktoken(gateway, client, openai_standin):
    text = "Counting tokens offline is what this gateway does best."
    openai_standin.script(text=text, usage=False)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MSG, stream=True))
    entry = gateway.entries()[-1]
    counter = TokenCounter("o200k_base")
    assert entry["usage_source"] == "counted"
    assert entry["completion_tokens"] == counter.text(text)
    assert entry["prompt_tokens"] == counter.chat({"messages": MSG})
    assert Decimal(entry["cost_usd"]) == api_cost(entry["prompt_tokens"], entry["completion_tokens"])


@pytest.mark.parametrize("stream", [False, True])
def test_sagemaker_pinned_signed_call(gateway, client, sagemaker_standin, stream):
    sagemaker_standin.script(text="from the endpoint", prompt_tokens=11, completion_tokens=3)
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model="sagemaker/gpt-4o-mini", messages=MSG, stream=True) as raw:
            headers = raw.headers
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model="sagemaker/gpt-4o-mini", messages=MSG)
        headers, text = raw.headers, raw.parse().choices[0].message.content
    assert text == "from the endpoint"
    assert headers["x-gateway-backend"] == "sagemaker"
    assert headers["x-gateway-route-reason"] == "pinned"
    req = sagemaker_standin.last_request
    assert req.path.endswith("/invocations-response-stream" if stream else "/invocations")
    assert req.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert req.json["model"] == "gpt-4o-mini"
    entry = gateway.entries()[-1]
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (11, 3)
    assert gateway.sample("gateway_tokens_total", backend="sagemaker", model="gpt-4o-mini", kind="completion") == 3


def test_openai_pinned_and_models_list(gateway, client):
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MSG)
    assert raw.headers["x-gateway-backend"] == "openai"
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "openai/gpt-4o-mini", "sagemaker/gpt-4o-mini", "text-embedding-3-small"} <= ids


def test_embeddings(gateway, client, openai_standin):
    out = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 8
    entry = gateway.entries()[-1]
    assert entry["kind"] == "embeddings" and entry["backend"] == "openai"
    assert entry["prompt_tokens"] == out.usage.prompt_tokens


def test_openai_spend_in_metrics_is_the_sum_of_request_costs(gateway, client, openai_standin):
    total = Decimal(0)
    for i in range(5):
        openai_standin.script(prompt_tokens=100 + i, completion_tokens=10 * i + 1)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        total += Decimal(raw.headers["x-gateway-cost-usd"])
    assert total == sum(api_cost(100 + i, 10 * i + 1) for i in range(5))
    spend = gateway.sample("gateway_spend_usd_total", backend="openai", model="gpt-4o-mini")
    assert spend == pytest.approx(float(total), rel=1e-12)
    assert gateway.sample("gateway_requests_total", backend="openai", model="gpt-4o-mini", status="200") == 5


def test_unknown_model_bad_json_and_bad_fields_are_openai_shaped_4xx(gateway, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="text-embedding-3-small", messages=MSG)
    for body in (b"{not json", b"[1,2]", b'{"model": "gpt-4o-mini", "messages": "hi"}',
                 b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "max_tokens": -1}',
                 b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}'):
        r = httpx.post(f"{gateway.base_url}/chat/completions", content=body)
        assert r.status_code == 400, body
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{gateway.base_url}/chat/completions")
    assert r.status_code == 405
    assert httpx.get(f"{gateway.url}/nope").status_code == 404


@pytest.mark.parametrize("status,expected,exc", [
    (429, 429, openai.RateLimitError), (400, 400, openai.BadRequestError), (500, 502, openai.InternalServerError),
    (401, 502, openai.InternalServerError),
])
def test_upstream_errors_pass_through_in_openai_shape(gateway, client, openai_standin, status, expected, exc):
    openai_standin.fail_next(status)
    with pytest.raises(exc) as e:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == expected
    assert gateway.sample("gateway_requests_total", backend="openai", model="gpt-4o-mini",
                          status=str(expected)) == 1


def test_unreachable_backend_fails_over_to_the_next(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin)
    data["backends"]["openai"]["base_url"] = "http://127.0.0.1:9/v1"  # discard port: refused
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert raw.headers["x-gateway-backend"] == "sagemaker"
        assert raw.headers["x-gateway-route-reason"] == "failover_openai_unreachable"
        with pytest.raises(openai.InternalServerError) as e:  # pinned: no failover
            client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
        assert e.value.status_code == 502


def test_gateway_keys_are_required_when_configured(openai_standin):
    data = standin_config(openai_standin)
    cfg = build_config(data, env={"GATEWAY_API_KEYS": "gw-key-1, gw-key-2"}, openai=openai_standin)
    with RunningGateway(cfg) as gw:
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).chat.completions.create(
                model="gpt-4o-mini", messages=MSG)
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=gw.base_url, api_key="wrong", max_retries=0).models.list()
        assert openai_standin.requests == [], "a request without a valid key reached the paid upstream"
        ok = OpenAI(base_url=gw.base_url, api_key="gw-key-2", max_retries=0)
        assert ok.chat.completions.create(model="gpt-4o-mini", messages=MSG).choices
        assert "gw-key" not in str(gw.entries())


def test_metrics_endpoint_is_prometheus_text(gateway, client):
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    r = httpx.get(f"{gateway.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'gateway_spend_usd_total{backend="openai",model="gpt-4o-mini"}' in r.text
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert httpx.get(f"{gateway.url}/readyz").json()["ready"] is True


def test_busy_endpoint_fails_over_to_the_api_unless_pinned(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "always_selfhosted"})
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        sagemaker_standin.fail_next(503)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSG)
        assert raw.headers["x-gateway-backend"] == "openai"
        assert raw.headers["x-gateway-route-reason"] == "failover_sagemaker_http_503"
        sagemaker_standin.fail_next(503)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="sagemaker/gpt-4o-mini", messages=MSG)
        assert e.value.status_code == 503


def test_endpoint_model_errors_reach_the_client_with_the_containers_status(gateway, client, sagemaker_standin,
                                                                            caplog):
    sagemaker_standin.fail_next(424, {"OriginalStatusCode": 400, "OriginalMessage": "max_tokens too large",
                                      "message": "Received client error (400) from primary"})
    with caplog.at_level("WARNING", logger="gateway"), pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="sagemaker/gpt-4o-mini", messages=MSG)
    # the gateway's words to the client (backend, kind, status); the container's to the log
    assert "Backend 'sagemaker' rejected the request as invalid (upstream HTTP 400)" in e.value.message
    assert "max_tokens too large" not in e.value.message and "max_tokens too large" in caplog.text
    sagemaker_standin.endpoints.discard("standin-endpoint")  # the gateway's endpoint is gone
    with caplog.at_level("WARNING", logger="gateway"), pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="sagemaker/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 502 and "sagemaker" in e.value.message and "not found" in caplog.text


def test_request_id_is_the_clients_when_sane(gateway):
    r = httpx.post(f"{gateway.base_url}/chat/completions", headers={"x-request-id": "trace-42.a"},
                   json={"model": "gpt-4o-mini", "messages": MSG})
    assert r.headers["x-request-id"] == "trace-42.a"
    assert gateway.entries()[-1]["request_id"] == "trace-42.a"
    r = httpx.post(f"{gateway.base_url}/chat/completions", headers={"x-request-id": "bad id\\n" + "x" * 300},
                   json={"model": "gpt-4o-mini", "messages": MSG})
    assert r.headers["x-request-id"].startswith("gw-")
