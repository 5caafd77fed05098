"""``POST /v1/completions`` (legacy text completions), on both backends.

API backends take the body as sent. SageMaker: the ``tgi`` wire format takes the raw
prompt as ``inputs`` (no chat template), the ``messages`` wire format forwards the
OpenAI completions body (``prompt``), which vLLM and LMI containers serve on
``/invocations``; see docs/apis.md.
"""
from __future__ import annotations

from ..http.errors import bad_request
from ..spend.cost import usage_from_openai
from .base import Api
from .chat import check_max_tokens, check_stream


def _is_tokens(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def check_prompt(value) -> None:
    """OpenAI's four shapes: a string, an array of strings, of token ids, or of token-id arrays."""
    ok = isinstance(value, str) or isinstance(value, list) and value != [] and (
        all(isinstance(x, str) for x in value) or _is_tokens(value) or all(_is_tokens(x) for x in value))
    if not ok:
        raise bad_request("'prompt' must be a string, or a non-empty array of strings, of token ids "
                          "(integers) or of non-empty token-id arrays.", param="prompt")


class CompletionsEvents:
    """A completions stream: chat's shape with ``choices[].text`` in place of a delta."""

    @staticmethod
    def usage(parsed):
        return usage_from_openai(parsed.get("usage"))

    @staticmethod
    def usage_only(parsed):
        return not parsed.get("choices")

    @staticmethod
    def texts(parsed):
        for choice in parsed.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                yield choice["text"]


class CompletionsApi(Api):
    name = "completions"
    events = CompletionsEvents

    def check(self, req):
        check_prompt(req.get("prompt"))
        if req.get("suffix") is not None and not isinstance(req["suffix"], str):
            raise bad_request("'suffix' must be a string.", param="suffix")
        so = req.get("stream_options")
        if so is not None and not isinstance(so, dict):
            raise bad_request("'stream_options' must be an object.", param="stream_options")
        return check_stream(req), check_max_tokens(req, "max_tokens")

    def count(self, counter, req, limit=None):
        prompt = req.get("prompt")
        n = 0
        for piece in [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else ():
            if isinstance(piece, str):
                n += counter.text(piece, None if limit is None else limit - n)
            elif isinstance(piece, int):
                n += 1  # already a token
            elif isinstance(piece, list):
                n += len(piece)
            if limit is not None and n > limit:
                break
        if isinstance(req.get("suffix"), str):
            n += counter.text(req["suffix"])
        return n

    async def call(self, backend, body, stream, req):
        return await backend.completions(body, stream)

    def text(self, parsed):
        return "".join(CompletionsEvents.texts(parsed))


COMPLETIONS = CompletionsApi()
