"""Offline token counting with tiktoken, using the encoding files litellm's wheel ships.

tiktoken's own wheel downloads encodings on first use; litellm's carries
o200k_base and cl100k_base named the way tiktoken's cache expects, so pointing
``TIKTOKEN_CACHE_DIR`` there keeps every count off the network.

Chat prompts follow OpenAI's published formula (cookbook "How to count tokens
with tiktoken"): 3 tokens per message, 1 per name, 3 to prime the reply, plus
the function-definition formula for ``tools``.
"""
from __future__ import annotations

import ctypes
import os
import threading

from .spend.cost_map import litellm_dir

DEFAULT_ENCODING = "o200k_base"
_LOCK = threading.Lock()
_ENCODINGS: dict = {}
# Per-function overhead of ``tools``: the cookbook measured 7 for gpt-4o-class models
# (o200k_base) and 10 for gpt-3.5-turbo/gpt-4 (cl100k_base).
_FUNCTION_INIT = {"cl100k_base": 10}
# Conversations resend their whole history every turn: most message texts were
# counted moments ago. Keyed by (hash, length) so the cache holds no text.
_CACHE: dict[tuple[str, int, int], int] = {}
_CACHE_MAX = 16384
_CACHE_MIN_CHARS = 64  # shorter texts encode faster than a lookup pays off
# One tiktoken call encodes at most this many characters: about 1-2 ms whatever the text (a
# single 30M-character word costs ~0.3 us/char, linearly, in pieces this size), and far below
# the ~1M-character whitespace run that overflows the stack of tiktoken's regex engine.
CHUNK_CHARS = 8192
_MAX_CUT_TRIES = 8


def _chunks(text: str):
    """``text`` in pieces of at most ``CHUNK_CHARS``, cut before a space that follows a
    non-space character where there is one.

    Such a cut is exact: in both encodings' split patterns a space after a non-space character
    can only begin a pre-token, never sit inside one, so the pieces encode to the same tokens as
    the whole. A span with no such space (one giant word, a whitespace run) is cut at the limit,
    which can shift a token or two per cut.
    """
    start, n = 0, len(text)
    while n - start > CHUNK_CHARS:
        end = start + CHUNK_CHARS
        cut = end
        probe = end
        for _ in range(_MAX_CUT_TRIES):
            probe = text.rfind(" ", start + CHUNK_CHARS // 2, probe)
            if probe < 0:
                break
            if not text[probe - 1].isspace():
                cut = probe
                break
        yield text[start:cut]
        start = cut
    yield text[start:]


def _prepare_offline() -> None:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(litellm_dir(), "litellm_core_utils", "tokenizers"))


def encoding_name_for(model: str) -> str:
    import tiktoken.model

    base = model.rsplit("/", 1)[-1]
    try:
        return tiktoken.model.encoding_name_for_model(base)
    except KeyError:
        return DEFAULT_ENCODING


def get_encoding(name: str):
    enc = _ENCODINGS.get(name)
    if enc is not None:
        return enc
    with _LOCK:
        if name not in _ENCODINGS:
            _prepare_offline()
            import tiktoken

            enc = tiktoken.get_encoding(name)
            # The Python copy of the merge table (~30 MB for o200k) is only kept
            # for pickling; the Rust core has its own.
            enc._mergeable_ranks = None
            _ENCODINGS[name] = enc
            _release_freed_memory()
    return _ENCODINGS[name]


def _release_freed_memory() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class TokenCounter:
    """Counts tokens for one encoding. ``TokenCounter.for_model("gpt-4o-mini").chat(body)``."""

    __slots__ = ("name", "_encode")

    def __init__(self, encoding_name: str):
        self.name = encoding_name
        self._encode = get_encoding(encoding_name).encode_ordinary

    @classmethod
    def for_model(cls, model: str, override: str | None = None) -> "TokenCounter":
        return cls(override or encoding_name_for(model))

    def text(self, text: str, limit: int | None = None) -> int:
        """Tokens of ``text``; with ``limit``, counting may stop once the count is above it
        (the answer is then some number > ``limit``): a context fit needs no more."""
        if not text:
            return 0
        if len(text) <= CHUNK_CHARS:
            return self._piece(text)
        n = 0
        for chunk in _chunks(text):
            n += self._piece(chunk)
            if limit is not None and n > limit:
                break
        return n

    def _piece(self, text: str) -> int:
        if len(text) < _CACHE_MIN_CHARS:
            return self._encoded_len(text)
        key = (self.name, hash(text), len(text))
        n = _CACHE.get(key)
        if n is None:
            n = self._encoded_len(text)
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()  # cheap bound; the working set refills in one turn
            _CACHE[key] = n
        return n

    def _encoded_len(self, text: str) -> int:
        try:
            return len(self._encode(text))
        except BaseException as e:  # noqa: BLE001 — pyo3's PanicException derives from BaseException
            if type(e).__name__ != "PanicException":
                raise
            # tiktoken's regex engine gave up (stack, backtracking): its UTF-8 length bounds the
            # count from above, which is the safe side for a context fit
            return len(text.encode("utf-8", "replace"))

    def _content(self, content, limit: int | None = None) -> int:
        if isinstance(content, str):
            return self.text(content, limit)
        n = 0
        if isinstance(content, list):
            for part in content:
                left = None if limit is None else limit - n
                if isinstance(part, dict):
                    if part.get("type") == "text" or "text" in part:
                        n += self.text(str(part.get("text") or ""), left)
                    elif part.get("type") == "image_url":
                        n += 85  # low-detail image; high detail is billed by tiles upstream
                elif isinstance(part, str):
                    n += self.text(part, left)
                if limit is not None and n > limit:
                    break
        return n

    def _tool_calls(self, calls) -> int:
        n = 0
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                n += 3 + self.text(str(fn.get("name") or "")) + self.text(str(fn.get("arguments") or ""))
        return n

    def messages(self, messages, limit: int | None = None) -> int:
        n = 3  # every reply is primed with <|start|>assistant<|message|>
        for m in messages if isinstance(messages, list) else ():
            if limit is not None and n > limit:
                break
            if not isinstance(m, dict):
                continue
            n += 3
            for key, value in m.items():
                if key == "content":
                    n += self._content(value, None if limit is None else limit - n)
                elif key == "tool_calls":
                    n += self._tool_calls(value)
                elif key == "function_call" and isinstance(value, dict):
                    n += self._tool_calls([{"function": value}])
                elif isinstance(value, str):
                    n += self.text(value, None if limit is None else limit - n)
                    if key == "name":
                        n += 1
        return n

    def tools(self, tools) -> int:
        """Function definitions, per the cookbook's formula (``num_tokens_for_tools``)."""
        if not isinstance(tools, list) or not tools:
            return 0
        n = 0
        for tool in tools:
            fn = tool.get("function", tool) if isinstance(tool, dict) else None
            if not isinstance(fn, dict):
                continue
            n += _FUNCTION_INIT.get(self.name, 7)
            desc = str(fn.get("description") or "").removesuffix(".")
            n += self.text(f"{fn.get('name', '')}:{desc}")
            params = fn.get("parameters") or {}
            props = params.get("properties") if isinstance(params, dict) else None
            if isinstance(props, dict) and props:
                n += 3
                for key, prop in props.items():
                    prop = prop if isinstance(prop, dict) else {}
                    n += 3
                    if isinstance(prop.get("enum"), list):
                        n -= 3
                        for item in prop["enum"]:
                            n += 3 + self.text(str(item))
                    pdesc = str(prop.get("description") or "").removesuffix(".")
                    n += self.text(f"{key}:{prop.get('type', '')}:{pdesc}")
        return n + 12

    def chat(self, body: dict, limit: int | None = None) -> int:
        """Prompt tokens of a chat completion request body; ``limit`` as for ``text``."""
        n = self.messages(body.get("messages"), limit)
        if limit is not None and n > limit:
            return n
        tools = body.get("tools")
        if tools is None and body.get("functions"):
            tools = [{"function": f} for f in body["functions"]]
        return n + self.tools(tools)

    def embedding_input(self, value) -> int:
        """OpenAI's four shapes (str, [str], [int], [[int]]), without recursion: anything
        nested deeper counts 0 (the proxy refuses it before it gets here)."""
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, list):
            return 0
        n = 0
        for x in value:
            if isinstance(x, str):
                n += self.text(x)
            elif isinstance(x, int):
                n += 1  # already a token
            elif isinstance(x, list):
                n += sum(1 for t in x if isinstance(t, int))
        return n
