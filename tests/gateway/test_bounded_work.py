"""No request can hurt another (issue 8): the cases a probe of the running gateway found, on the real server.

Each body here once froze the event loop or crashed the gateway into a text/plain 500.
"""
from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest
from gateway_harness import RunningGateway, build_config, standin_config
from probes import healthz

from gateway.state.memory import MemoryStore

ERROR_FIELDS = {"message", "type", "param", "code"}


def _nested(levels: int) -> str:
    """JSON text of a string inside ``levels`` arrays (too deep for orjson or json to build)."""
    return "[" * levels + '"x"' + "]" * levels


def _raw(template: dict, **deep: str) -> bytes:
    """``template`` as JSON, each ``"@name"`` string replaced by the raw JSON text ``deep[name]``."""
    out = orjson.dumps(template).decode()
    for name, text in deep.items():
        out = out.replace(f'"@{name}"', text)
    return out.encode()


def test_a_30mb_single_word_does_not_freeze_healthz(gateway, openai_standin):
    # 30M characters in one word: counted whole on the loop this took 30 s and held /healthz as long
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a" * 30_000_000}]})
    with healthz(gateway.url) as probe:
        time.sleep(0.1)
        t0 = time.monotonic()
        r = httpx.post(f"{gateway.base_url}/chat/completions", content=body, timeout=120)
        elapsed = time.monotonic() - t0
        polls_during = probe.polls
    assert r.status_code < 500, r.text[:300]
    assert polls_during >= 2 and not probe.failures
    assert probe.slowest < 2.0, f"/healthz waited {probe.slowest:.2f} s while a 30 MB body was handled"
    # far too long for the endpoint's 8k window: decided from a partial count, sent to the API
    assert r.headers["x-gateway-backend"] == "openai"
    print(f"30 MB word: answered in {elapsed:.2f} s, slowest /healthz {probe.slowest * 1000:.0f} ms "
          f"over {polls_during} polls")


@pytest.mark.parametrize("stream", [False, True])
def test_a_million_whitespace_characters_are_no_500(gateway, stream):
    # ~1M whitespace characters overflowed tiktoken's regex stack (a PanicException past every handler)
    for content in (" " * 1_200_000, "\n" * 1_100_000, " \t" * 600_000):
        r = httpx.post(f"{gateway.base_url}/chat/completions", timeout=120, json={
            "model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": content}]})
        assert r.status_code < 500, r.text[:300]


@pytest.mark.parametrize("body, param", [
    ({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}],
      "metadata": {"deep": "@d300"}}, "metadata"),
    ({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": "@d600"}, "metadata"),
    ({"model": "sagemaker/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tools": [{"x": "@d400"}]},
     "tools"),
])
def test_json_too_deep_to_rewrite_is_a_400_naming_the_parameter(gateway, body, param):
    # parsed to 1,024 levels but serialised only to 254: a rewritten body (stream_options, a pin) crashed
    raw = _raw(body, d300=_nested(300), d400=_nested(400), d600=_nested(600))
    r = httpx.post(f"{gateway.base_url}/chat/completions", content=raw, timeout=30)
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert set(err) == ERROR_FIELDS and err["code"] == "nested_too_deep" and err["param"] == param


def test_deep_json_the_gateway_need_not_rewrite_is_forwarded(gateway, openai_standin):
    raw = _raw({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": "@d"},
               d=_nested(300))
    r = httpx.post(f"{gateway.base_url}/chat/completions", content=raw, timeout=30)
    assert r.status_code < 500 and openai_standin.last_request.body == raw


def test_json_deeper_than_the_parser_takes_is_a_400(gateway):
    r = httpx.post(f"{gateway.base_url}/chat/completions", content=b'{"model": "gpt-4o-mini", "m": ' + b"[" * 2000
                   + b"]" * 2000 + b"}", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("value", [_nested(1000), '[["a"]]', '[1, "a"]', "[[]]", "[true]", '{"a": 1}', "5", '""'])
def test_embeddings_input_outside_openais_shapes_is_a_400(gateway, openai_standin, value):
    # input nested 1,000 deep, with an upstream error, hit a RecursionError in the token counter
    openai_standin.fail_next(400)
    r = httpx.post(f"{gateway.base_url}/embeddings", timeout=30,
                   content=_raw({"model": "text-embedding-3-small", "input": "@v"}, v=value))
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


class _BrokenStore(MemoryStore):
    """A state store with a fault injected: recording traffic raises (a stand-in for any bug after the upstream)."""

    def record(self, *args, **kwargs):
        raise RuntimeError("injected fault")


def test_the_gateways_own_500_is_openai_shaped_counted_and_logged(openai_standin):
    cfg = build_config(standin_config(openai_standin), openai=openai_standin)
    with RunningGateway(cfg, store=_BrokenStore()) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 500 and set(e.value.body) == ERROR_FIELDS
        assert e.value.body["type"] == "server_error" and "injected" not in e.value.message
        assert gw.sample("gateway_requests_total", backend="openai", model="gpt-4o-mini", status="500") == 1
        entry = gw.entries()[-1]
        assert entry["status"] == 500 and entry["error"] == "internal error (RuntimeError)"
        assert entry["request_id"] == e.value.response.headers["x-request-id"]
