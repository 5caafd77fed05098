"""SageMaker wire formats: AWS event-stream decoding, the messages pass-through, and the TGI codec.

Event-stream frames are built here from the spec (prelude, CRC32s, typed headers) rather than with
botocore's own parser, so the decoder is checked against bytes it did not produce.
"""
from __future__ import annotations

import asyncio
import binascii
import random
import struct

import orjson
import pytest

from gateway.backends.base import UpstreamUnavailable
from gateway.backends.sagemaker_codec import MessagesCodec, TgiCodec, codec_for, event_stream_payloads


# ---- a small event-stream encoder (application/vnd.amazon.eventstream) ---------------------------

def _header(name: str, value: str) -> bytes:
    n, v = name.encode(), value.encode()
    return struct.pack("!B", len(n)) + n + b"\x07" + struct.pack("!H", len(v)) + v  # 7: string


def frame(payload: bytes, headers: dict[str, str]) -> bytes:
    hdrs = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack("!II", 12 + len(hdrs) + len(payload) + 4, len(hdrs))
    msg = prelude + struct.pack("!I", binascii.crc32(prelude)) + hdrs + payload
    return msg + struct.pack("!I", binascii.crc32(msg))


def payload_part(data: bytes) -> bytes:
    return frame(data, {":event-type": "PayloadPart", ":content-type": "application/octet-stream",
                        ":message-type": "event"})


def exception_frame(kind: str = "ModelStreamError") -> bytes:
    body = orjson.dumps({"Message": "Your model stream failed", "ErrorCode": "ModelError"})
    return frame(body, {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"})


def error_frame(code: str = "InternalFailure") -> bytes:
    return frame(b"", {":error-code": code, ":error-message": "boom", ":message-type": "error"})


async def _agen(pieces):
    for piece in pieces:
        await asyncio.sleep(0)
        yield piece


def collect(agen) -> list[bytes]:
    async def run():
        return [x async for x in agen]
    return asyncio.run(run())


def payloads(pieces) -> list[bytes]:
    return collect(event_stream_payloads(_agen(pieces)))


def split(data: bytes, cuts) -> list[bytes]:
    cuts = sorted(cuts)
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


PARTS = [b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n', b'data: {"choices":[{"delta":{"content":"lo ',
         "wörld\"}}]}\n\n".encode(), b"data: [DONE]\n\n"]
STREAM = b"".join(payload_part(p) for p in PARTS)


# ---- event_stream_payloads -------------------------------------------------------------------------

def test_frames_in_one_chunk():
    assert payloads([STREAM]) == PARTS


def test_frames_split_at_every_byte_position():
    for i in range(len(STREAM) + 1):
        assert payloads([STREAM[:i], STREAM[i:]]) == PARTS, i


def test_frames_split_randomly_and_byte_by_byte():
    rng = random.Random(7)
    for _ in range(50):
        assert payloads(split(STREAM, rng.sample(range(1, len(STREAM)), 8))) == PARTS
    assert payloads([STREAM[i:i + 1] for i in range(len(STREAM))]) == PARTS


def test_frames_without_payload_are_skipped():
    empty = frame(b"", {":event-type": "initial-response", ":message-type": "event"})
    assert payloads([empty + STREAM + empty]) == PARTS


def test_exception_frame_raises_after_the_payloads_before_it():
    seen: list[bytes] = []

    async def run():
        async for p in event_stream_payloads(_agen([payload_part(PARTS[0]) + exception_frame()])):
            seen.append(p)

    with pytest.raises(UpstreamUnavailable, match="ModelStreamError"):
        asyncio.run(run())
    assert seen == [PARTS[0]]


def test_error_frame_raises_with_its_code():
    with pytest.raises(UpstreamUnavailable, match="InternalFailure"):
        payloads([error_frame()])


def test_corrupt_frame_is_not_passed_on():
    bad = bytearray(payload_part(PARTS[0]))
    bad[20] ^= 0xFF  # a payload byte: the message CRC no longer matches
    with pytest.raises(Exception) as info:
        payloads([bytes(bad)])
    assert not isinstance(info.value, AssertionError)


# ---- messages codec ------------------------------------------------------------------------------

def test_codec_for():
    assert type(codec_for("messages")) is MessagesCodec
    assert type(codec_for("tgi")) is TgiCodec
    with pytest.raises(KeyError):
        codec_for("grpc")


def test_messages_codec_passes_bodies_through():
    codec = MessagesCodec()
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    assert codec.encode_request(body) is body
    assert codec.decode_response(b'{"id":"x"}', body) == b'{"id":"x"}'
    assert collect(codec.decode_stream(_agen(split(STREAM, [5, 50, 100])), body)) == PARTS


def test_messages_codec_error_replies():
    codec = MessagesCodec()
    own = b'{"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}}'
    assert codec.error_reply(400, own) == (400, own)
    # SageMaker refusing the gateway's own call (unknown endpoint): not the client's to fix
    status, body = codec.error_reply(400, b'{"message": "Endpoint x not found"}')
    assert status == 502 and orjson.loads(body)["error"]["message"] == "SageMaker endpoint: Endpoint x not found"
    # a ModelError wraps the container's answer: its 4xx is the client's, its 5xx the server's
    model_4xx = orjson.dumps({"OriginalStatusCode": 400, "OriginalMessage": "temperature must be positive",
                              "message": "Received client error (400) from primary"})
    status, body = codec.error_reply(424, model_4xx)
    assert status == 400
    assert orjson.loads(body)["error"] == {"message": "model server: temperature must be positive",
                                           "type": "invalid_request_error", "param": None, "code": None}
    inner = {"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": None}}
    status, body = codec.error_reply(424, orjson.dumps({"OriginalStatusCode": 422, "OriginalMessage": orjson.dumps(inner).decode()}))
    assert (status, orjson.loads(body)) == (422, inner)
    status, body = codec.error_reply(424, orjson.dumps({"OriginalStatusCode": 500, "OriginalMessage": "CUDA OOM"}))
    assert status == 502 and orjson.loads(body)["error"]["type"] == "upstream_error"
    for raw in (b"<html>busy</html>", b"", b'{"other": 1}', b"[]"):
        status, body = codec.error_reply(503, raw)
        err = orjson.loads(body)["error"]
        assert status == 503 and err["message"] == "SageMaker endpoint returned HTTP 503" and err["type"] == "upstream_error"


# ---- TGI codec: requests ----------------------------------------------------------------------------

def tgi_request(**fields) -> dict:
    body = {"model": "my-llama", "messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Hi"}], **fields}
    return orjson.loads(TgiCodec().encode_request(orjson.dumps(body)))


def test_tgi_prompt_template():
    req = tgi_request()
    assert req["inputs"] == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
    assert req["parameters"] == {"details": True}
    assert req["stream"] is False


def test_tgi_prompt_from_content_parts():
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                                    {"type": "text", "text": "lo"}]},
                                       {"role": "assistant", "content": None}]}
    req = orjson.loads(TgiCodec().encode_request(orjson.dumps(body)))
    assert req["inputs"] == "<|user|>\nHello\n<|assistant|>\n\n<|assistant|>\n"


def test_tgi_parameters_are_mapped():
    req = tgi_request(max_tokens=64, temperature=0.7, top_p=0.9, stop="###", seed=42, stream=True)
    assert req["parameters"] == {"details": True, "max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9,
                                 "stop": ["###"], "seed": 42}
    assert req["stream"] is True
    assert tgi_request(stop=["a", "b"])["parameters"]["stop"] == ["a", "b"]


def test_tgi_max_completion_tokens():
    # the current OpenAI name for max_tokens; without it TGI stops at its own default (20 tokens)
    assert tgi_request(max_completion_tokens=99)["parameters"]["max_new_tokens"] == 99


def test_tgi_no_op_sampling_values_that_tgi_rejects_are_dropped():
    # TGI's router answers 422 to temperature <= 0 ("must be strictly positive") and top_p >= 1;
    # to OpenAI these mean greedy decoding and no nucleus cut, which is what TGI does without them.
    params = tgi_request(temperature=0, top_p=1)["parameters"]
    assert "temperature" not in params and "top_p" not in params
    assert tgi_request(temperature=0.0, top_p=1.0)["parameters"] == {"details": True}


def test_tgi_frequency_penalty_keeps_openai_meaning():
    # TGI has OpenAI's frequency_penalty (-2..2, 0 = none); repetition_penalty is a different scale
    # (1 = none, must be > 0), so 0 would be rejected and 0.5 would encourage repetition.
    params = tgi_request(frequency_penalty=0.5)["parameters"]
    assert params.get("frequency_penalty") == 0.5 and "repetition_penalty" not in params


# ---- TGI codec: responses -------------------------------------------------------------------------

REQUEST = orjson.dumps({"model": "my-llama", "messages": [{"role": "user", "content": "Hi"}]})


@pytest.mark.parametrize("raw, text, finish, tokens", [
    (b'[{"generated_text": "Hello!", "details": {"finish_reason": "eos_token", "generated_tokens": 3}}]',
     "Hello!", "stop", 3),
    (b'{"generated_text": "Hel", "details": {"finish_reason": "length", "generated_tokens": 1}}', "Hel", "length", 1),
    (b'[{"generated_text": "x", "details": {"finish_reason": "stop_sequence", "generated_tokens": 2}}]',
     "x", "stop", 2),
])
def test_tgi_response_becomes_a_chat_completion(raw, text, finish, tokens):
    out = orjson.loads(TgiCodec().decode_response(raw, REQUEST))
    assert out["object"] == "chat.completion" and out["model"] == "my-llama"
    assert out["id"].startswith("chatcmpl-") and isinstance(out["created"], int)
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]
    assert out["usage"] == {"completion_tokens": tokens}


def test_tgi_response_without_details_has_no_usage():
    out = orjson.loads(TgiCodec().decode_response(b'[{"generated_text": "Hi"}]', REQUEST))
    assert out["choices"][0]["message"]["content"] == "Hi" and "usage" not in out


def tgi_token_events(texts: list[str], finish: str = "eos_token") -> bytes:
    lines = []
    for i, text in enumerate(texts):
        last = i == len(texts) - 1
        lines.append(b"data:" + orjson.dumps({
            "index": i + 1, "token": {"id": i + 1, "text": text, "logprob": -0.1, "special": last and text == "</s>"},
            "generated_text": "".join(texts[:-1]) if last else None,
            "details": {"finish_reason": finish, "generated_tokens": len(texts)} if last else None}) + b"\n\n")
    return b"".join(lines)


def decode_tgi_stream(frames: bytes, cuts=()) -> list[dict | str]:
    out = collect(TgiCodec().decode_stream(_agen(split(frames, cuts)), REQUEST))
    assert all(o.startswith(b"data: ") and o.endswith(b"\n\n") for o in out)
    return [o[6:-2].decode() if o == b"data: [DONE]\n\n" else orjson.loads(o[6:-2]) for o in out]


def test_tgi_stream_becomes_chat_completion_chunks():
    sse = tgi_token_events(["Hel", "lo", " wörld", "</s>"])
    # payload parts cut through lines and through a multi-byte character
    cut = sse.index("ö".encode()) + 1
    frames = b"".join(payload_part(p) for p in split(sse, [7, 60, cut]))
    events = decode_tgi_stream(frames, cuts=[3, 100])
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"content": "Hel", "role": "assistant"}, {"content": "lo"}, {"content": " wörld"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"my-llama"}
    assert len({c["id"] for c in chunks}) == 1


def test_tgi_stream_length_finish():
    frames = payload_part(tgi_token_events(["a", "b"], finish="length"))
    chunks = decode_tgi_stream(frames)[:-1]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {"content": "b"}, "finish_reason": "length"}


def test_tgi_stream_exception_frame_raises():
    frames = payload_part(tgi_token_events(["a", "b"])[:40]) + exception_frame()
    with pytest.raises(UpstreamUnavailable, match="ModelStreamError"):
        decode_tgi_stream(frames)


def test_tgi_stream_error_event_raises():
    # TGI reports a failure during generation as an SSE event with "error"; it must not end as a success
    sse = tgi_token_events(["a", "b", "c"]).split(b"\n\n")[0] + b"\n\n"
    sse += b'data:{"error": "Request failed during generation: Server error: CUDA out of memory", ' \
           b'"error_type": "generation"}\n\n'
    with pytest.raises(UpstreamUnavailable, match="generation"):
        decode_tgi_stream(payload_part(sse))


def test_runtime_endpoint_url_follows_the_sdk_order():
    from gateway.backends.sagemaker import runtime_endpoint_url

    assert runtime_endpoint_url("eu-west-1", None, {}) == "https://runtime.sagemaker.eu-west-1.amazonaws.com"
    assert runtime_endpoint_url("cn-north-1", None, {}) == "https://runtime.sagemaker.cn-north-1.amazonaws.com.cn"
    env = {"AWS_ENDPOINT_URL": "http://global:1", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": "http://svc:2/"}
    assert runtime_endpoint_url("us-east-1", None, env) == "http://svc:2"
    assert runtime_endpoint_url("us-east-1", None, {"AWS_ENDPOINT_URL": "http://global:1"}) == "http://global:1"
    assert runtime_endpoint_url("us-east-1", "http://cfg:3", env) == "http://cfg:3"
    ignored = {**env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert runtime_endpoint_url("us-east-1", None, ignored) == "https://runtime.sagemaker.us-east-1.amazonaws.com"
