"""POST /v1/completions (legacy text completions) end to end, on the API and on a SageMaker endpoint.

The endpoint is the SageMaker stand-in with the ``tgi`` wire format (the raw prompt as ``inputs``);
with the ``messages`` wire format the completions body is forwarded as it is (vLLM and LMI serve it).
"""
from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest
from gateway_harness import RunningGateway, build_config, standin_config
from openai import OpenAI

from gateway.tokens import TokenCounter

PROMPT = "Once upon a time, in a gateway far away,"
GPT4O_MINI = {"input": Decimal("0.15"), "cached": Decimal("0.075"), "output": Decimal("0.60")}  # USD / 1M


@pytest.fixture
def tgi_gateway(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin)
    data["backends"]["sagemaker"]["wire_format"] = "tgi"
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        yield gw, OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


def test_api_backend_plain_and_streamed(gateway, client, openai_standin):
    openai_standin.script(text="there lived a proxy.", prompt_tokens=11, completion_tokens=4, cached_tokens=3)
    raw = client.completions.with_raw_response.create(model="gpt-4o-mini", prompt=PROMPT, max_tokens=20)
    completion = raw.parse()
    assert completion.choices[0].text == "there lived a proxy."
    assert openai_standin.last_request.path == "/v1/completions"
    assert openai_standin.last_request.json == {"model": "gpt-4o-mini", "prompt": PROMPT, "max_tokens": 20}
    expected = ((11 - 3) * GPT4O_MINI["input"] + 3 * GPT4O_MINI["cached"] + 4 * GPT4O_MINI["output"]) / 1_000_000
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == expected
    assert raw.headers["x-gateway-backend"] == "openai"

    chunks = list(client.completions.create(model="gpt-4o-mini", prompt=PROMPT, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "there lived a proxy."
    assert all(c.choices for c in chunks), "the usage chunk the gateway asked for leaked to the client"
    assert openai_standin.last_request.json["stream_options"] == {"include_usage": True}
    entry = gateway.entries(at_least=2)[-1]
    assert (entry["kind"], entry["stream"], entry["usage_source"]) == ("completions", True, "upstream")
    assert Decimal(entry["cost_usd"]) == expected


def test_stream_with_include_usage_keeps_the_usage_chunk(gateway, client, openai_standin):
    openai_standin.script(text="a b", prompt_tokens=5, completion_tokens=2)
    chunks = list(client.completions.create(model="gpt-4o-mini", prompt="x", stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 5 and chunks[-1].choices == []


@pytest.mark.parametrize("stream", [False, True])
def test_tgi_endpoint_takes_the_raw_prompt(tgi_gateway, sagemaker_standin, stream):
    gw, client = tgi_gateway
    sagemaker_standin.script(text="there lived a proxy.")
    if stream:
        chunks = list(client.completions.create(model="sagemaker/gpt-4o-mini", prompt=PROMPT, max_tokens=30,
                                                stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        raw = client.completions.with_raw_response.create(model="sagemaker/gpt-4o-mini", prompt=PROMPT,
                                                          max_tokens=30)
        assert raw.headers["x-gateway-backend"] == "sagemaker"
        assert Decimal(raw.headers["x-gateway-cost-usd"]) > 0
        completion = raw.parse()
        assert completion.object == "text_completion"
        text = completion.choices[0].text
    assert text == "there lived a proxy."
    sent = sagemaker_standin.last_request.json
    assert sent["inputs"] == PROMPT  # no chat template around it
    assert sent["parameters"]["max_new_tokens"] == 30
    entry = gw.entries()[-1]
    # TGI reports no prompt tokens: counted here, offline, as the plain text it is
    assert entry["prompt_tokens"] == TokenCounter.for_model("gpt-4o-mini").text(PROMPT)
    assert entry["kind"] == "completions" and entry["status"] == 200


def test_tgi_endpoint_refuses_token_id_prompts(tgi_gateway, sagemaker_standin):
    _, client = tgi_gateway
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="sagemaker/gpt-4o-mini", prompt=[[1, 2, 3]])
    assert err.value.body["param"] == "prompt"
    assert sagemaker_standin.requests == []


def test_messages_endpoint_gets_the_completions_body_as_sent(gateway, client, sagemaker_standin):
    """Documented: a messages-format container must serve OpenAI completions bodies itself; this
    chat-only stand-in refuses one, and the client gets the gateway's 400, not a 5xx."""
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="sagemaker/gpt-4o-mini", prompt=PROMPT)
    assert sagemaker_standin.last_request.json == {"model": "gpt-4o-mini", "prompt": PROMPT}


@pytest.mark.parametrize("body, param", [
    ({"model": "gpt-4o-mini"}, "prompt"),
    ({"model": "gpt-4o-mini", "prompt": []}, "prompt"),
    ({"model": "gpt-4o-mini", "prompt": [1, "a"]}, "prompt"),
    ({"model": "gpt-4o-mini", "prompt": "a", "max_tokens": -1}, "max_tokens"),
    ({"model": "gpt-4o-mini", "prompt": "a", "suffix": 1}, "suffix"),
])
def test_bad_requests_get_openai_shaped_400s(gateway, body, param):
    r = httpx.post(f"{gateway.base_url}/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_prompt_too_long_for_the_endpoint_goes_to_the_api(openai_standin, sagemaker_standin):
    data = standin_config(openai_standin, sagemaker_standin)
    data["models"]["gpt-4o-mini"]["backends"].reverse()
    data["backends"]["sagemaker"].update(context_window=64, wire_format="tgi")
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        short = client.completions.with_raw_response.create(model="gpt-4o-mini", prompt="hi", max_tokens=8)
        assert short.headers["x-gateway-backend"] == "sagemaker"
        long = client.completions.with_raw_response.create(model="gpt-4o-mini", prompt="word " * 200, max_tokens=8)
        assert long.headers["x-gateway-backend"] == "openai"
