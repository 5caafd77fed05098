"""POST /v1/responses end to end: the official SDK → gateway → OpenAI stand-in (as sent) or SageMaker
stand-in (a chat-only container: translated to chat and back)."""
from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest
from gateway_harness import RunningGateway, build_config, standin_config
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

GPT4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}  # USD / 1M
BACKENDS = ["openai", "sagemaker"]
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
CALL = [{"name": "get_weather", "arguments": '{"city":"Paris"}'}]


def api_cost(prompt, completion, cached=0):
    return ((prompt - cached) * GPT4O_MINI["input"] + cached * GPT4O_MINI["cached"]
            + completion * GPT4O_MINI["output"]) / Decimal(1_000_000)


def upstream(backend, openai_standin, sagemaker_standin):
    return openai_standin if backend == "openai" else sagemaker_standin


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_answers_text_with_usage_and_cost(gateway, client, openai_standin, sagemaker_standin, backend):
    upstream(backend, openai_standin, sagemaker_standin).script(
        text="Bonjour, gateway.", prompt_tokens=1200, completion_tokens=30, cached_tokens=1000, reasoning_tokens=20)
    raw = client.responses.with_raw_response.create(model=f"{backend}/gpt-4o-mini", instructions="Answer in French.",
                                                    input="Say hello.", max_output_tokens=64)
    response = raw.parse()
    assert response.output_text == "Bonjour, gateway."
    assert response.status == "completed"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1200, 30)
    assert response.usage.input_tokens_details.cached_tokens == 1000
    assert raw.headers["x-gateway-backend"] == backend
    assert raw.headers["x-gateway-prompt-tokens"] == "1200"
    assert raw.headers["x-gateway-completion-tokens"] == "30"
    entry = gateway.entries()[-1]
    assert entry["kind"] == "responses" and entry["usage_source"] == "upstream"
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == Decimal(entry["cost_usd"])
    sent = upstream(backend, openai_standin, sagemaker_standin).last_request
    if backend == "openai":
        # cached input at its own price, reasoning tokens inside output_tokens at the output price
        assert Decimal(raw.headers["x-gateway-cost-usd"]) == api_cost(1200, 30, cached=1000)
        assert sent.path == "/v1/responses"
        assert sent.json == {"model": "gpt-4o-mini", "instructions": "Answer in French.", "input": "Say hello.",
                             "max_output_tokens": 64}
    else:
        assert sent.json["messages"] == [{"role": "system", "content": "Answer in French."},
                                         {"role": "user", "content": "Say hello."}]
        assert sent.json["max_tokens"] == 64 and "input" not in sent.json
        assert Decimal(raw.headers["x-gateway-cost-usd"]) > 0  # its share of the endpoint's instance time


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_gives_typed_events_and_final_usage(gateway, client, openai_standin, sagemaker_standin, backend):
    upstream(backend, openai_standin, sagemaker_standin).script(
        text="one two three", prompt_tokens=40, completion_tokens=3)
    with client.responses.stream(model=f"{backend}/gpt-4o-mini", input="Count to three.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "one two three" and len(deltas) == 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "one two three"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 3)
    entry = gateway.entries()[-1]
    assert (entry["kind"], entry["stream"], entry["backend"]) == ("responses", True, backend)
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["usage_source"]) == (40, 3, "upstream")
    if backend == "openai":
        assert Decimal(entry["cost_usd"]) == api_cost(40, 3)
        assert "stream_options" not in openai_standin.last_request.json  # Responses streams always carry usage
    else:
        assert sagemaker_standin.last_request.json["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_function_calling_round_trip(gateway, client, openai_standin, sagemaker_standin, backend, stream):
    up = upstream(backend, openai_standin, sagemaker_standin)
    model = f"{backend}/gpt-4o-mini"
    question = {"role": "user", "content": "What is the weather in Paris?"}
    up.script(tool_calls=CALL, prompt_tokens=80, completion_tokens=12)
    if stream:
        with client.responses.stream(model=model, input=[question], tools=TOOLS) as s:
            argument_deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
            first = s.get_final_response()
        assert "".join(argument_deltas) == '{"city":"Paris"}'
    else:
        first = client.responses.create(model=model, input=[question], tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city":"Paris"}')]
    if backend == "sagemaker":
        sent = sagemaker_standin.last_request.json
        assert sent["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city.", "parameters": TOOLS[0]["parameters"]}}]

    up.script(tool_calls=None, text="It is sunny in Paris.", prompt_tokens=100, completion_tokens=6)
    follow_up = [question, {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name,
                            "arguments": calls[0].arguments},
                 {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"sky":"sunny"}'}]
    second = client.responses.create(model=model, input=follow_up, tools=TOOLS)
    assert second.output_text == "It is sunny in Paris."
    sent = up.last_request.json
    if backend == "openai":
        assert sent["input"] == follow_up  # as the client sent it
    else:
        assert sent["messages"] == [
            question,
            {"role": "assistant", "content": None, "tool_calls": [{"id": calls[0].call_id, "type": "function",
                                                                   "function": {"name": "get_weather",
                                                                                "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": calls[0].call_id, "content": '{"sky":"sunny"}'},
        ]


def test_stateful_and_hosted_tool_requests_go_to_the_api_backend(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin)
    data["models"]["gpt-4o-mini"]["backends"].reverse()  # the endpoint first: it would take a plain request
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        plain = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
        assert plain.headers["x-gateway-backend"] == "sagemaker"
        # (an empty id or conversation object read as absent and went to the endpoint, which ignores them)
        for extra in ({"previous_response_id": "resp_123"}, {"tools": [{"type": "web_search"}]}, {"store": True},
                      {"previous_response_id": ""}, {"conversation": {}}):
            raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", **extra)
            assert raw.headers["x-gateway-backend"] == "openai", extra
            assert openai_standin.last_request.json == {"model": "gpt-4o-mini", "input": "hi", **extra}
        # pinned to the endpoint, it cannot be served: an OpenAI-shaped 400 naming the parameter
        for extra, param in (({"previous_response_id": "resp_123"}, "previous_response_id"),
                             ({"tools": [TOOLS[0], {"type": "file_search"}]}, "tools[1].type")):
            with pytest.raises(openai.BadRequestError) as err:
                client.responses.create(model="sagemaker/gpt-4o-mini", input="hi", **extra)
            assert err.value.body["param"] == param
            assert err.value.body["code"] == "unsupported_parameter"


@pytest.mark.parametrize("body, param", [
    ({"model": "gpt-4o-mini"}, "input"),
    ({"model": "gpt-4o-mini", "input": 3}, "input"),
    ({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "gpt-4o-mini", "input": "hi", "stream": "yes"}, "stream"),
    ({"model": "gpt-4o-mini", "input": "hi", "store": "yes"}, "store"),  # read as false: served on the endpoint
    ({"model": "sagemaker/gpt-4o-mini", "input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
    ({"model": "text-embedding-3-small", "input": "hi"}, "model"),
])
def test_bad_requests_get_openai_shaped_400s(gateway, body, param):
    r = httpx.post(f"{gateway.base_url}/responses", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


def test_metrics_spend_equals_the_sum_of_request_costs(gateway, client, openai_standin, sagemaker_standin):
    openai_standin.script(text="a b", prompt_tokens=500, completion_tokens=2, cached_tokens=100)
    sagemaker_standin.script(text="c d", prompt_tokens=300, completion_tokens=2)
    costs = {"openai": Decimal(0), "sagemaker": Decimal(0)}
    done = 0
    for backend in BACKENDS:
        for _ in range(2):
            raw = client.responses.with_raw_response.create(model=f"{backend}/gpt-4o-mini", input="hi")
            costs[backend] += Decimal(raw.headers["x-gateway-cost-usd"])
        with client.responses.stream(model=f"{backend}/gpt-4o-mini", input="hi") as s:
            s.get_final_response()
        done += 3
        costs[backend] += Decimal(gateway.entries(at_least=done)[-1]["cost_usd"])  # a stream's cost: its log line
    logged = {b: sum(Decimal(e["cost_usd"]) for e in gateway.entries(at_least=6) if e["backend"] == b)
              for b in BACKENDS}
    assert logged == costs
    text = httpx.get(f"{gateway.url}/metrics").text
    samples = {(s.name, s.labels.get("backend")): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.labels.get("model") == "gpt-4o-mini"}
    assert samples[("gateway_spend_usd_total", "openai")] == pytest.approx(float(costs["openai"]), abs=1e-12)
    assert costs["openai"] == 2 * api_cost(500, 2, 100) + api_cost(500, 2, 100)
    # an endpoint's attributed share has more digits than a header shows: each of the 3 costs summed
    # here is display_usd's rounding to the pico-dollar, within 0.5e-12 of what the metric added
    assert samples[("gateway_attributed_cost_usd_total", "sagemaker")] == pytest.approx(
        float(costs["sagemaker"]), abs=3 * 0.5e-12 + 1e-15)


def test_models_list_what_each_model_serves(gateway, client):
    listed = {m.id: m for m in client.models.list().data}
    assert "/v1/responses" in listed["gpt-4o-mini"].endpoints
    assert "/v1/completions" in listed["sagemaker/gpt-4o-mini"].endpoints
    assert listed["text-embedding-3-small"].endpoints == ["/v1/embeddings"]
