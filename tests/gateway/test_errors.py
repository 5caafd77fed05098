"""OpenAI-shaped error bodies, and passive backend health (what the gateway does when an upstream fails)."""
from __future__ import annotations

import orjson
import pytest

from gateway.http.errors import GatewayError, bad_request, error_body
from gateway.http.upstream_errors import client_error_body, log_upstream_error, redact
from gateway.routes.health import BackendHealth

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


# ---- upstream errors: the gateway's words to the client, the upstream's to the log ----------------

def test_an_upstream_401_names_the_backend_and_never_the_key():
    raw = orjson.dumps({"error": {"message": "Incorrect API key provided: sk-proj-****9z7q.",
                                  "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}})
    err = parsed(client_error_body("openai", 401, 502, raw))
    assert "openai" in err["message"] and "401" in err["message"] and "credentials" in err["message"]
    assert "sk-" not in err["message"] and err["code"] == "upstream_http_401" and err["type"] == "upstream_error"


def test_a_client_side_upstream_refusal_keeps_param_and_code_as_tokens_only():
    raw = orjson.dumps({"error": {"message": "This model's maximum context length is 8192 tokens ...",
                                  "type": "invalid_request_error", "param": "messages",
                                  "code": "context_length_exceeded"}})
    err = parsed(client_error_body("openai", 400, 400, raw))
    assert (err["param"], err["code"], err["type"]) == ("messages", "context_length_exceeded", "invalid_request_error")
    assert "maximum context" not in err["message"]
    weird = orjson.dumps({"error": {"param": "a b <script>", "code": "x" * 200}})
    assert parsed(client_error_body("openai", 400, 400, weird))["param"] is None
    assert parsed(client_error_body("openai", 429, 429, b"{}"))["type"] == "rate_limit_error"


@pytest.mark.parametrize("raw", [b"<html>502 Bad Gateway</html>", b"", b"\xff\xfe", b'{"detail": "x"}', b"[1]"])
def test_any_upstream_body_becomes_the_gateways_own_error(raw):
    assert parsed(client_error_body("sagemaker", 500, 502, raw)) == {
        "message": "Backend 'sagemaker' failed (upstream HTTP 500).", "type": "upstream_error", "param": None,
        "code": "upstream_http_500"}


@pytest.mark.parametrize("secret", ["sk-proj-abcdEFGH1234567890", "AKIAIOSFODNN7EXAMPLE", "Bearer eyJhbGciOi.abc.def",
                                    "api_key=hunter2hunter2", '"token": "t0k3n-value"',
                                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"])
def test_key_like_strings_are_redacted_for_the_log(secret):
    value = secret.split("=")[-1].split(": ")[-1].strip('"').removeprefix("Bearer ")
    assert value not in redact(f"upstream said: {secret} (see docs)")


def test_the_upstreams_words_go_to_the_log_redacted(caplog):
    with caplog.at_level("WARNING", logger="gateway"):
        log_upstream_error("openai", "gw-1", 401, b'{"error": {"message": "Incorrect API key provided: sk-proj-9z7q9z7q"}}')
    assert "Incorrect API key provided" in caplog.text and "9z7q9z7q" not in caplog.text and "gw-1" in caplog.text


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
