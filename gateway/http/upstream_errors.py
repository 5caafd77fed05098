"""What a client is told when an upstream refuses a request, and what the log keeps.

An upstream's error body is written for the gateway's operator, not for the gateway's
client: an OpenAI 401 names part of the operator's key and tells the client *its* key is
wrong. So the client gets the gateway's own sentence (which backend, what kind of failure,
the upstream's status) and, from the upstream's error, only the machine-readable ``param``
and ``code`` where they describe the client's request; the upstream's words go to the log,
key-like strings redacted.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

import orjson

from .errors import error_body

log = logging.getLogger("gateway")

_KINDS = {
    400: "rejected the request as invalid",
    401: "refused the gateway's credentials",
    403: "refused the gateway's credentials",
    404: "does not know the model or path",
    408: "timed out",
    409: "reported a conflict",
    413: "found the request too large",
    422: "could not process the request",
    424: "failed in the model container",
    429: "is rate-limiting the gateway",
    503: "is unavailable",
    504: "timed out",
}
# An upstream's code/param that is about the client's request, passed on as a token only.
_CLIENT_STATUSES = frozenset({400, 404, 409, 413, 422, 429})
_TOKEN = re.compile(r"[A-Za-z0-9_.\[\]-]{1,64}")
_AUTH_CODES = frozenset({"invalid_api_key", "invalid_organization", "unauthorized", "forbidden"})

_SECRETS = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    (re.compile(r"\bsk-[A-Za-z0-9_*.-]{4,}"), "sk-[REDACTED]"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}"), "[REDACTED-AWS-KEY-ID]"),
    (re.compile(r"(?i)((?:api[_-]?key|secret|token|password|authorization|signature|credential)s?"
                r"[\"']?\s*[:=]\s*[\"']?)[^\"'\s,;}&]+"), r"\1[REDACTED]"),
    (re.compile(r"\b[A-Za-z0-9/+]{40}\b"), "[REDACTED-40]"),  # shaped like an AWS secret access key
]
_LOG_MAX_CHARS = 2000


def redact(text: str) -> str:
    """``text`` with anything shaped like a key, token or secret replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _fields(raw: bytes) -> tuple[str | None, str | None]:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict):
        return None, None
    param, code = err.get("param"), err.get("code")
    return (param if isinstance(param, str) and _TOKEN.fullmatch(param) else None,
            code if isinstance(code, str) and _TOKEN.fullmatch(code) and code not in _AUTH_CODES else None)


def client_error_body(backend: str, upstream_status: int, status: int, raw: bytes) -> bytes:
    """The OpenAI-shaped body the client gets for an upstream's ``upstream_status`` answer."""
    kind = _KINDS.get(upstream_status, "failed" if upstream_status >= 500 else "refused the request")
    message = f"Backend '{backend}' {kind} (upstream HTTP {upstream_status})."
    if upstream_status in (401, 403):
        message += (" This is the gateway's configuration, not your key: the operator has the details in its log "
                    f"and sets the credentials in backends.{backend} (api_key_env for an API, the AWS credential "
                    "chain for an endpoint).")
    param, code = _fields(raw) if upstream_status in _CLIENT_STATUSES else (None, None)
    if status >= 500:
        type_ = "upstream_error"
    elif status == 429:
        type_ = "rate_limit_error"
    else:
        type_ = "invalid_request_error"
    return error_body(message, type_, param, code or f"upstream_http_{upstream_status}")


def log_text(raw: bytes) -> str:
    """What the log may hold of an upstream's words: their start, decoded, with secrets redacted."""
    return redact(raw[: _LOG_MAX_CHARS * 4].decode("utf-8", "replace"))[:_LOG_MAX_CHARS]


def log_upstream_error(backend: str, request_id: str, status: int, raw: bytes) -> None:
    log.warning("backend %s answered HTTP %d to request %s: %s", backend, status, request_id, log_text(raw))


def _what_to_configure(cfg) -> str:
    """The settings that decide whether a backend can be reached (names only, never values)."""
    if getattr(cfg, "type", None) == "openai":
        return (f"check backends.{cfg.name}.base_url ({_public_url(cfg.base_url)}; OPENAI_BASE_URL in the default config) "
                f"and the key in {cfg.api_key_env}")
    if getattr(cfg, "type", None) == "sagemaker":
        return (f"check backends.{cfg.name}.endpoint_name ({cfg.endpoint_name}; SAGEMAKER_ENDPOINT_NAME), "
                f"region ({cfg.region}; AWS_REGION), AWS credentials, and endpoint_url or "
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME if calls go elsewhere")
    return "check its settings in the config"


def _public_url(url: str) -> str:
    """``url`` without user info, query or fragment (where credentials could hide)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def unavailable_message(cfg, detail: str) -> str:
    """A 502/504's message: which backend failed, how, and what the operator configures for it."""
    return f"Backend '{cfg.name}' could not be used: {detail}; {_what_to_configure(cfg)}."
