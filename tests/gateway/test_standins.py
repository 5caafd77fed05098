"""The stand-ins speak the real wire formats: checked with the official openai SDK, boto3 and httpx."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import boto3
import botocore.config
import botocore.exceptions
import httpx
import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.standins.openai_server import OpenAIStandIn

MESSAGES = [{"role": "user", "content": "Say hello to the stand-in, please."}]


@pytest.fixture
def oai(openai_standin):
    return openai.OpenAI(base_url=openai_standin.base_url, api_key=openai_standin.api_key, max_retries=0)


def runtime(sm, secret=None, key=None):
    return boto3.client("sagemaker-runtime", endpoint_url=sm.base_url, region_name=sm.region,
                        aws_access_key_id=key or sm.access_key, aws_secret_access_key=secret or sm.secret_key,
                        config=botocore.config.Config(retries={"total_max_attempts": 1}))


def test_starts_and_stops_fast():
    t0 = time.perf_counter()
    server = OpenAIStandIn().start()
    started = time.perf_counter() - t0
    server.stop()
    # far from what a wait on a timeout would take, so a loaded machine does not fail it
    assert started < 2.0 and time.perf_counter() - t0 < 4.0


# ---- OpenAI ----

def test_chat_non_stream_reports_scripted_usage(openai_standin, oai):
    openai_standin.script(text="Hi there", prompt_tokens=12, completion_tokens=7, cached_tokens=4)
    reply = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == "Hi there"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (12, 7, 19)
    assert reply.usage.prompt_tokens_details.cached_tokens == 4
    seen = openai_standin.last_request
    assert (seen.method, seen.path, seen.json["model"]) == ("POST", "/v1/chat/completions", "gpt-4o-mini")
    assert seen.headers["authorization"] == f"Bearer {openai_standin.api_key}" and seen.status == 200


def test_chat_without_usage(openai_standin, oai):
    openai_standin.script(usage=False)
    assert oai.chat.completions.create(model="m", messages=MESSAGES).usage is None


def test_chat_stream_with_usage_chunk(openai_standin, oai):
    openai_standin.script(text=["Hel", "lo", " wor", "ld"], prompt_tokens=9, cached_tokens=2)
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 2
    assert openai_standin.last_request.json["stream_options"] == {"include_usage": True}


def test_chat_stream_wire_format_without_usage(openai_standin):
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {openai_standin.api_key}"}
    with httpx.stream("POST", f"{openai_standin.base_url}/chat/completions", json=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all("usage" not in e for e in events) and len(events) == 1 + 4 + 1


def test_stream_cut_mid_way(openai_standin, oai):
    openai_standin.script(text=["a", "b", "c", "d"], stop_after_chunks=2)
    received = []
    with pytest.raises(openai.APIConnectionError):  # incomplete chunked read, as from a crashed upstream
        for chunk in oai.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "a", "b"]


def test_stream_in_band_error(openai_standin, oai):
    openai_standin.script(text=["a", "b", "c"], stop_after_chunks=1, stream_error="upstream fell over")
    with pytest.raises(openai.APIError, match="upstream fell over"):
        list(oai.chat.completions.create(model="m", messages=MESSAGES, stream=True))


def test_delays(openai_standin):
    openai_standin.script(text=["a", "b", "c"], delay=0.2, chunk_delay=0.1)
    headers = {"authorization": f"Bearer {openai_standin.api_key}"}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{openai_standin.base_url}/chat/completions", headers=headers,
                      json={"model": "m", "messages": MESSAGES, "stream": True}) as r:
        first_byte = time.perf_counter() - t0
        list(r.iter_bytes())
    # lower bounds only: a loaded machine can only make the stand-in later, never earlier
    assert first_byte >= 0.2 and time.perf_counter() - t0 >= 0.5


def test_scripted_errors_then_recovery(openai_standin, oai):
    openai_standin.fail_next(429, headers={"retry-after": "1"})
    openai_standin.fail_next(500)
    with pytest.raises(openai.RateLimitError) as rate_limited:
        oai.chat.completions.create(model="m", messages=MESSAGES)
    assert rate_limited.value.code == "rate_limit_exceeded"
    assert rate_limited.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=MESSAGES)
    openai_standin.script_next(text="just once")
    assert oai.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == "just once"
    assert oai.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content != "just once"
    assert [r.status for r in openai_standin.requests] == [429, 500, 200, 200]


def test_wrong_or_missing_key_is_401(openai_standin):
    bad = openai.OpenAI(base_url=openai_standin.base_url, api_key="sk-wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        bad.chat.completions.create(model="m", messages=MESSAGES)
    assert denied.value.code == "invalid_api_key" and denied.value.type == "invalid_request_error"
    r = httpx.get(f"{openai_standin.base_url}/models")
    assert r.status_code == 401 and "didn't provide an API key" in r.json()["error"]["message"]


def test_embeddings_float_and_base64(oai):
    as_float = oai.embeddings.create(model="text-embedding-3-small", input=["one", "two"], encoding_format="float")
    as_b64 = oai.embeddings.create(model="text-embedding-3-small", input=["one", "two"], encoding_format="base64")
    assert len(as_float.data) == 2 and len(as_float.data[0].embedding) == 8 and as_float.usage.prompt_tokens >= 2
    assert isinstance(as_b64.data[0].embedding, str)


def test_models(openai_standin, oai):
    assert [m.id for m in oai.models.list()] == openai_standin.models


def test_async_client(openai_standin):
    async def ask():
        client = openai.AsyncOpenAI(base_url=openai_standin.base_url, api_key=openai_standin.api_key, max_retries=0)
        async with client:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream])

    assert asyncio.run(ask()) == "Hello from the stand-in."


# ---- SageMaker ----

def test_sagemaker_invoke_messages(sagemaker_standin):
    sagemaker_standin.script(text="Hi from SageMaker", prompt_tokens=5)
    out = runtime(sagemaker_standin).invoke_endpoint(
        EndpointName="standin-endpoint", ContentType="application/json",
        Body=json.dumps({"messages": MESSAGES, "max_tokens": 20}))
    body = json.loads(out["Body"].read())
    assert body["choices"][0]["message"]["content"] == "Hi from SageMaker" and body["usage"]["prompt_tokens"] == 5
    assert out["InvokedProductionVariant"] == "AllTraffic"
    assert sagemaker_standin.last_request.json["max_tokens"] == 20


def test_sagemaker_invoke_tgi(sagemaker_standin):
    out = runtime(sagemaker_standin).invoke_endpoint(
        EndpointName="standin-endpoint", Body=json.dumps({"inputs": "Hi", "parameters": {"max_new_tokens": 8}}))
    assert json.loads(out["Body"].read()) == [{"generated_text": "Hello from the stand-in."}]


def _stream(sm, body):
    out = runtime(sm).invoke_endpoint_with_response_stream(EndpointName="standin-endpoint", Body=json.dumps(body))
    return [event["PayloadPart"]["Bytes"] for event in out["Body"]]


def test_sagemaker_stream_messages_split_anywhere(sagemaker_standin):
    sagemaker_standin.script(text="Grüße aus dem Stand-in, Wörter über Wörter.")
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    parts = _stream(sagemaker_standin, body)
    raw = b"".join(parts)
    assert len(parts) > 5 and any(not p.endswith(b"\n\n") for p in parts)  # parts cut mid-event
    events = [json.loads(e[6:]) for e in raw.decode().split("\n\n") if e and e != "data: [DONE]"]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == \
        "Grüße aus dem Stand-in, Wörter über Wörter."
    assert events[-1]["usage"]["completion_tokens"] == 7 and raw.endswith(b"data: [DONE]\n\n")


def test_sagemaker_stream_paced_and_tgi(sagemaker_standin):
    sagemaker_standin.script(text=["a", "b"], chunk_delay=0.01, split_seed=None)  # one part per event
    parts = _stream(sagemaker_standin, {"inputs": "Hi", "parameters": {}, "stream": True})
    records = [json.loads(p[5:]) for p in parts]
    assert [r["token"]["text"] for r in records] == ["a", "b"]
    assert [r["generated_text"] for r in records] == [None, "ab"]


def test_sagemaker_stream_error_frame(sagemaker_standin):
    sagemaker_standin.script(text=["a", "b", "c"], stop_after_chunks=1, stream_error="CUDA out of memory")
    with pytest.raises(botocore.exceptions.EventStreamError) as failed:
        _stream(sagemaker_standin, {"messages": MESSAGES, "stream": True})
    assert failed.value.response["Error"]["Code"] == "ModelStreamError"
    assert "CUDA out of memory" in failed.value.response["Error"]["Message"]


def test_sagemaker_rejects_bad_signatures(sagemaker_standin):
    body = json.dumps({"messages": MESSAGES})
    with pytest.raises(botocore.exceptions.ClientError) as wrong_secret:
        runtime(sagemaker_standin, secret="not-the-secret").invoke_endpoint(EndpointName="standin-endpoint", Body=body)
    assert wrong_secret.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert wrong_secret.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(botocore.exceptions.ClientError) as wrong_key:
        runtime(sagemaker_standin, key="AKIDUNKNOWN").invoke_endpoint(EndpointName="standin-endpoint", Body=body)
    assert wrong_key.value.response["Error"]["Code"] == "UnrecognizedClientException"
    url = sagemaker_standin.invocations_url("standin-endpoint")
    unsigned = httpx.post(url, content=body)
    assert unsigned.status_code == 403 and unsigned.json() == {"message": "Missing Authentication Token"}
    # a correct signature over a different body: what a proxy that rewrites the body after signing sends
    signed = AWSRequest(method="POST", url=url, data=body.encode(), headers={"content-type": "application/json"})
    SigV4Auth(Credentials("testing", "testing"), "sagemaker", "us-east-1").add_auth(signed)
    tampered = httpx.post(url, content=body.replace("please", "PLEASE"), headers=dict(signed.headers))
    assert tampered.status_code == 403
    assert tampered.headers["x-amzn-errortype"].startswith("InvalidSignatureException")
    assert httpx.post(url, content=body, headers=dict(signed.headers)).status_code == 200


def test_sagemaker_unknown_endpoint_and_scripted_errors(sagemaker_standin):
    client = runtime(sagemaker_standin)
    with pytest.raises(client.exceptions.ClientError, match="Endpoint nope of account 123456789012 not found"):
        client.invoke_endpoint(EndpointName="nope", Body=b"{}")
    sagemaker_standin.fail_next(429)
    sagemaker_standin.fail_next(424)
    body = json.dumps({"messages": MESSAGES})
    with pytest.raises(botocore.exceptions.ClientError) as throttled:
        client.invoke_endpoint(EndpointName="standin-endpoint", Body=body)
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    with pytest.raises(client.exceptions.ModelError) as model_error:
        client.invoke_endpoint(EndpointName="standin-endpoint", Body=body)
    assert model_error.value.response["OriginalStatusCode"] == 500


# ---- network guard ----

def test_guard_blocks_non_loopback(network_guard):
    t0 = time.perf_counter()
    with pytest.raises(ConnectionRefusedError, match="network guard"):
        socket.create_connection(("10.1.2.3", 80), timeout=5)
    with pytest.raises(ConnectionRefusedError, match="network guard"):
        socket.getaddrinfo("example.com", 443)
    with socket.socket() as raw, pytest.raises(ConnectionRefusedError, match="network guard"):
        raw.connect(("93.184.215.14", 80))  # a literal IP never goes through getaddrinfo
    with socket.socket() as raw, pytest.raises(ConnectionRefusedError, match="network guard"):
        raw.connect_ex(("example.com", 80))
    assert time.perf_counter() - t0 < 2.5  # refused before any packet, not the 5 s timeout
    assert len(network_guard.violations) == 4
    network_guard.violations.clear()


def test_guard_covers_sdk_clients(network_guard):
    """The real client stacks (openai on httpx2, boto3 on urllib3) go through the patched sockets."""
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-x", max_retries=0).models.list()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        boto3.client("sagemaker-runtime", config=botocore.config.Config(retries={"total_max_attempts": 1})) \
            .invoke_endpoint(EndpointName="e", Body=b"{}")
    assert any("api.openai.com" in v for v in network_guard.violations)
    assert any("runtime.sagemaker.us-east-1.amazonaws.com" in v for v in network_guard.violations)
    network_guard.violations.clear()


def test_guard_allows_loopback_and_unix(openai_standin, tmp_path):
    with socket.create_connection(("localhost", openai_standin.port)):
        pass
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(str(tmp_path / "s"))
        server.listen()
        client.connect(str(tmp_path / "s"))
