"""Malformed requests get an OpenAI-shaped 4xx or are served; never a 5xx, never a crash."""
from __future__ import annotations

import random

import httpx
import orjson
import pytest

WEIRD_VALUES = [None, True, 0, -1, 1.5, "", "x", [], {}, [1, 2], ["a"], [{}], [None], {"a": 1}, {"type": 5},
                [{"type": "text"}], [{"type": "text", "text": 5}], [{"type": "image_url"}], "\u0000\ud7ff",
                [{"function": 5}], [{"function": {"parameters": 5}}],
                [{"function": {"name": 1, "parameters": {"properties": {"a": 5, "b": {"enum": 5}}}}}],
                [{"function": {"parameters": {"properties": {"a": {"enum": [1, None, {}]}}}}}]]
FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "tools",
          "functions", "n", "temperature"]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "function_call", "tool_call_id"]


def _bodies(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        msg = {"role": "user", "content": "hi"}
        for key in rng.sample(MESSAGE_FIELDS, rng.randint(0, 3)):
            msg[key] = rng.choice(WEIRD_VALUES)
        body = {"model": "gpt-4o-mini", "messages": [msg]}
        for key in rng.sample(FIELDS, rng.randint(1, 3)):
            body[key] = rng.choice(WEIRD_VALUES + [[msg], [msg, "x"]])
        yield body


@pytest.mark.parametrize("path", ["/chat/completions", "/embeddings"])
def test_random_malformed_bodies_never_get_a_5xx(gateway, path):
    failures = []
    for body in _bodies(hash(path) % 1000, 300):
        if path == "/embeddings":
            body = {"model": random.choice(["text-embedding-3-small", body.get("model")]),
                    "input": body.get("messages")}
        r = httpx.post(f"{gateway.base_url}{path}", content=orjson.dumps(body), timeout=10)
        if r.status_code >= 500:
            failures.append((r.status_code, body, r.text[:200]))
        elif r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert not failures, failures[:3]


@pytest.mark.parametrize("raw", [b"", b"null", b"{", b"\xff\xfe", b'{"model": "gpt-4o-mini", "messages": [' * 50,
                                 b'"just a string"', b"1e999", b'{"model": "gpt-4o-mini"}'])
def test_unparseable_bodies_are_400(gateway, raw):
    r = httpx.post(f"{gateway.base_url}/chat/completions", content=raw)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
