"""Stand-in upstream servers (OpenAI API, SageMaker runtime) on 127.0.0.1, and how to script them.

The tests and `gateway demo` both run them: they speak the real wire formats, so what works
against them works against the real services.

The servers live in `openai_server` (OpenAI API), `sagemaker_server` (SageMaker runtime) and
`sagemaker_control` (SageMaker control plane with inference components, which moto lacks);
tests usually get them from the `openai_standin` / `sagemaker_standin` fixtures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Script:
    """How the stand-in answers. Seconds for delays; token counts are what `usage` reports."""

    text: str | Sequence[str] = "Hello from the stand-in."  # str: streamed word by word; list: exact chunks
    completion_tokens: int | None = None  # None: number of content chunks
    prompt_tokens: int | None = None  # None: ~4 characters per token of the request's text
    cached_tokens: int | None = None  # set: usage.prompt_tokens_details.cached_tokens
    usage: bool = True  # False: no usage at all (body nor stream usage chunk)
    model: str | None = None  # None: echo the request's model
    finish_reason: str = "stop"
    delay: float = 0.0  # before the first response byte
    chunk_delay: float = 0.0  # before each streamed content chunk
    stop_after_chunks: int | None = None  # abort the connection after k content chunks (non-stream: before any byte)
    stream_error: str | None = None  # after stop_after_chunks (or 0) chunks, send an in-band error, end cleanly
    error_status: int | None = None  # answer with this HTTP status instead (see fail_next)
    error_body: Mapping[str, Any] | bytes | str | None = None  # None: the provider's usual body for the status
    error_headers: Mapping[str, str] | None = None
    embedding_dim: int = 8
    tool_calls: Sequence[Mapping[str, str]] | None = None  # [{"name", "arguments"}]: call these instead of text
    reasoning_tokens: int | None = None  # set: part of completion_tokens reported as reasoning (Responses)
    split_seed: int | None = 0  # SageMaker only: None = one PayloadPart per SSE event, else random cuts


@dataclasses.dataclass
class RecordedRequest:
    """One request as received (header names lower-cased; json is None unless the body parsed)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int | None = None  # status the stand-in answered with (None: aborted before replying)
