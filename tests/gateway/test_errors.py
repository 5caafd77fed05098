"""OpenAI-shaped error bodies, and passive backend health (what the gateway does when an upstream fails)."""
from __future__ import annotations

import orjson
import pytest

from gateway.errors import GatewayError, bad_request, error_body, upstream_error_body
from gateway.health import BackendHealth

KEYS = {"message", "type", "param", "code"}


def parsed(body: bytes) -> dict:
    data = orjson.loads(body)
    assert set(data) == {"error"} and set(data["error"]) == KEYS, data
    return data["error"]


# ---- error_body / GatewayError ---------------------------------------------------------------------

def test_error_body_shape():
    assert parsed(error_body("no such model", "invalid_request_error", "model", "model_not_found")) == {
        "message": "no such model", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_error_body_nulls_are_present():
    assert parsed(error_body("boom", "server_error")) == {
        "message": "boom", "type": "server_error", "param": None, "code": None}


def test_error_body_escapes_json():
    assert parsed(error_body('a "quoted"\nline ✓', "x"))["message"] == 'a "quoted"\nline ✓'


@pytest.mark.parametrize("status, type_", [
    (400, "invalid_request_error"), (401, "invalid_request_error"), (403, "permission_error"),
    (404, "invalid_request_error"), (413, "invalid_request_error"), (429, "rate_limit_error"),
    (500, "server_error"), (502, "server_error"), (503, "server_error"), (418, "invalid_request_error"),
])
def test_gateway_error_type_from_status(status, type_):
    err = GatewayError(status, "msg")
    assert (err.status, err.type, str(err)) == (status, type_, "msg")
    assert parsed(err.body()) == {"message": "msg", "type": type_, "param": None, "code": None}


def test_gateway_error_explicit_fields_win():
    err = GatewayError(429, "over budget", type="insufficient_quota", param="user", code="budget_exceeded")
    assert parsed(err.body()) == {"message": "over budget", "type": "insufficient_quota", "param": "user",
                                  "code": "budget_exceeded"}


def test_bad_request():
    err = bad_request("messages must be a list", param="messages", code="invalid_type")
    assert err.status == 400
    assert parsed(err.body()) == {"message": "messages must be a list", "type": "invalid_request_error",
                                  "param": "messages", "code": "invalid_type"}


# ---- upstream_error_body ------------------------------------------------------------------------

def test_openai_error_passes_through():
    raw = orjson.dumps({"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests",
                                  "param": None, "code": "rate_limit_exceeded"}})
    assert parsed(upstream_error_body(429, raw)) == {
        "message": "Rate limit reached for gpt-4o-mini", "type": "requests", "param": None,
        "code": "rate_limit_exceeded"}


def test_openai_error_with_param_passes_through():
    raw = orjson.dumps({"error": {"message": "Invalid 'messages'", "type": "invalid_request_error",
                                  "param": "messages", "code": None}})
    assert parsed(upstream_error_body(400, raw))["param"] == "messages"


def test_partial_openai_error_is_completed():
    assert parsed(upstream_error_body(429, b'{"error": {}}')) == {
        "message": "upstream error", "type": "rate_limit_error", "param": None, "code": None}
    assert parsed(upstream_error_body(502, b'{"error": {"message": "bad"}}'))["type"] == "upstream_error"


def test_extra_fields_are_dropped():
    raw = orjson.dumps({"error": {"message": "m", "type": "t", "param": None, "code": None, "internal": "x"},
                        "trace": "secret-ish"})
    body = upstream_error_body(400, raw)
    assert b"secret-ish" not in body and b"internal" not in body


@pytest.mark.parametrize("raw", [
    b"<html><body>502 Bad Gateway</body></html>",
    b"",
    b"\xff\xfe not utf-8",
    b'{"detail": "Not Found"}',  # JSON, but not OpenAI's shape
    b'{"error": "a string, not an object"}',
    b"[1, 2]",
    b"null",
])
def test_anything_else_is_wrapped(raw):
    assert parsed(upstream_error_body(502, raw)) == {
        "message": "upstream returned HTTP 502", "type": "upstream_error", "param": None, "code": None}


# ---- BackendHealth ------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_backend_trips_after_consecutive_failures_and_returns_after_cooldown():
    clock = Clock()
    health = BackendHealth(failures_to_trip=2, cooldown_s=5.0, clock=clock)
    assert health.usable("api")
    health.failed("api")
    assert health.usable("api")  # one failure is not enough
    health.failed("api")
    assert not health.usable("api")
    assert health.usable("sagemaker")  # per backend
    clock.now += 4.9
    assert not health.usable("api")
    clock.now += 0.1
    assert health.usable("api")


def test_success_resets_the_count_and_the_cooldown():
    clock = Clock()
    health = BackendHealth(failures_to_trip=2, cooldown_s=5.0, clock=clock)
    health.failed("api")
    health.succeeded("api")
    health.failed("api")
    assert health.usable("api")  # not two in a row
    health.failed("api")
    assert not health.usable("api")
    health.succeeded("api")
    assert health.usable("api")


def test_each_failure_past_the_trip_extends_the_cooldown():
    clock = Clock()
    health = BackendHealth(failures_to_trip=1, cooldown_s=5.0, clock=clock)
    health.failed("api")
    clock.now += 3
    health.failed("api")
    clock.now += 3
    assert not health.usable("api")
    clock.now += 2
    assert health.usable("api")
