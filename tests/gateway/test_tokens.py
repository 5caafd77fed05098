"""Token counting against OpenAI's published counts (cookbook "How to count tokens with tiktoken").

Encodings load from the files litellm's wheel ships; the test-wide network guard in
tests/conftest.py fails any test here that tries to download one.
"""
from __future__ import annotations

import pytest

from gateway import tokens
from gateway.tokens import TokenCounter, encoding_name_for, get_encoding

ENCODINGS = ("cl100k_base", "o200k_base")

# The cookbook's example conversation (names on four of the system messages).
COOKBOOK_MESSAGES = [
    {"role": "system",
     "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user",
     "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user",
     "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
]

# The cookbook's tools example (num_tokens_for_tools).
WEATHER_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "description": "The unit of temperature to return",
                         "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}]
WEATHER_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


def _tool(n_params: int, enum: list[str] | None = None) -> dict:
    props = {f"p{i}": {"type": "string", "description": f"parameter number {i}"} for i in range(n_params)}
    if enum is not None:
        props["choice"] = {"type": "string", "description": "pick one", "enum": enum}
    return {"type": "function", "function": {"name": "do_it", "description": "Does it.",
                                             "parameters": {"type": "object", "properties": props}}}


# ---- encodings -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENCODINGS)
def test_encodings_load_offline(name, network_guard):
    assert get_encoding(name).name == name
    assert get_encoding(name) is get_encoding(name)  # loaded once per process
    assert network_guard.violations == []


@pytest.mark.parametrize("model, expected", [
    ("gpt-4o-mini", "o200k_base"),
    ("gpt-4o", "o200k_base"),
    ("openai/gpt-4o", "o200k_base"),  # provider prefix ignored
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("gpt-4-0613", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"),
    ("my-llama-finetune", "o200k_base"),  # unknown: the default
])
def test_encoding_name_for(model, expected):
    assert encoding_name_for(model) == expected


def test_for_model_override_wins():
    assert TokenCounter.for_model("gpt-4o-mini").name == "o200k_base"
    assert TokenCounter.for_model("gpt-4o-mini", override="cl100k_base").name == "cl100k_base"


# ---- plain text: published counts -------------------------------------------------------------

@pytest.mark.parametrize("text, cl100k, o200k", [
    ("hello world", 2, 2),
    ("tiktoken is great!", 6, 6),
    ("antidisestablishmentarianism", 6, 6),
    ("2 + 2 = 4", 7, 7),
    ("お誕生日おめでとう", 9, 8),
    ("", 0, 0),
])
def test_text_known_counts(text, cl100k, o200k):
    assert TokenCounter("cl100k_base").text(text) == cl100k
    assert TokenCounter("o200k_base").text(text) == o200k


def test_special_token_text_is_counted_as_ordinary_text():
    # A prompt that contains "<|endoftext|>" must be counted, not rejected (tiktoken's encode() raises).
    assert TokenCounter("o200k_base").text("<|endoftext|>") > 1


# ---- chat: published counts ------------------------------------------------------------------

@pytest.mark.parametrize("model, expected", [
    ("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124),
])
def test_cookbook_messages(model, expected):
    assert TokenCounter.for_model(model).chat({"model": model, "messages": COOKBOOK_MESSAGES}) == expected


@pytest.mark.parametrize("model, expected", [
    ("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101),
])
def test_cookbook_tools(model, expected):
    body = {"model": model, "messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS}
    assert TokenCounter.for_model(model).chat(body) == expected


def test_messages_formula():
    c = TokenCounter("o200k_base")
    assert c.messages([]) == 3  # reply priming only
    assert c.messages(None) == 3
    # 3 per message + role + content; a name adds its text + 1
    assert c.messages([{"role": "user", "content": "hello world"}]) == 3 + 3 + 1 + 2
    assert c.messages([{"role": "user", "name": "bob", "content": "hello world"}]) == 3 + 3 + 1 + 2 + 1 + 1
    assert c.messages(["not a message", 7]) == 3


# ---- tools ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENCODINGS)
def test_tools_nonzero_and_growing_with_parameters(name):
    c = TokenCounter(name)
    assert c.tools(None) == 0 and c.tools([]) == 0
    counts = [c.tools([_tool(n)]) for n in range(4)]
    assert counts[0] > 0
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert c.tools([_tool(1, enum=["a", "b", "c"])]) > c.tools([_tool(1, enum=["a"])]) > c.tools([_tool(1)])
    assert c.tools([_tool(2), _tool(2)]) > c.tools([_tool(2)])


def test_legacy_functions_count_like_tools():
    c = TokenCounter("o200k_base")
    fn = WEATHER_TOOLS[0]["function"]
    assert c.chat({"messages": WEATHER_MESSAGES, "functions": [fn]}) == 101


def test_tool_description_trailing_period_is_ignored():
    c = TokenCounter("o200k_base")
    a, b = _tool(1), _tool(1)
    b["function"]["description"] = "Does it"
    assert c.tools([a]) == c.tools([b])


# ---- content parts and tool calls ---------------------------------------------------------------

def test_content_part_array_counts_its_text():
    c = TokenCounter("o200k_base")
    plain = c.messages([{"role": "user", "content": "hello world"}])
    parts = c.messages([{"role": "user", "content": [{"type": "text", "text": "hello world"}]}])
    assert parts == plain
    two = c.messages([{"role": "user", "content": [{"type": "text", "text": "hello world"},
                                                   {"type": "text", "text": "hello world"}]}])
    assert two == plain + 2


def test_image_part_counts_low_detail_tile():
    c = TokenCounter("o200k_base")
    plain = c.messages([{"role": "user", "content": [{"type": "text", "text": "hello world"}]}])
    with_image = c.messages([{"role": "user", "content": [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}])
    assert with_image == plain + 85


def test_assistant_tool_calls_are_counted():
    c = TokenCounter("o200k_base")
    name, args = "get_current_weather", '{"location": "San Francisco, CA", "unit": "celsius"}'
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}
    base = c.messages([{"role": "assistant", "content": None}])
    one = c.messages([{"role": "assistant", "content": None, "tool_calls": [call]}])
    assert one == base + 3 + c.text(name) + c.text(args)
    two = c.messages([{"role": "assistant", "content": None, "tool_calls": [call, call]}])
    assert two == base + 2 * (one - base)
    # the tool's answer is an ordinary message (tool_call_id is a string field)
    assert c.messages([{"role": "tool", "tool_call_id": "call_1", "content": "20C"}]) > 3 + 3


def test_legacy_function_call_counts_like_a_tool_call():
    c = TokenCounter("o200k_base")
    fn = {"name": "f", "arguments": '{"x": 1}'}
    assert (c.messages([{"role": "assistant", "function_call": fn}])
            == c.messages([{"role": "assistant", "tool_calls": [{"type": "function", "function": fn}]}]))


# ---- the per-text cache ------------------------------------------------------------------------

def test_cache_returns_the_same_count_and_holds_no_text():
    c = TokenCounter("cl100k_base")
    text = "The quick brown fox jumps over the lazy dog. " * 20
    first = c.text(text)
    assert first == len(get_encoding("cl100k_base").encode_ordinary(text))
    assert c.text(text) == first
    assert (c.name, hash(text), len(text)) in tokens._CACHE
    assert all(part in ENCODINGS for key in tokens._CACHE for part in key if isinstance(part, str))
    # same text, other encoding: its own entry
    assert TokenCounter("o200k_base").text(text) == len(get_encoding("o200k_base").encode_ordinary(text))


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(tokens, "_CACHE", {})
    monkeypatch.setattr(tokens, "_CACHE_MAX", 4)
    c = TokenCounter("o200k_base")
    for i in range(10):
        text = f"{i} " + "x" * 80
        assert c.text(text) == len(get_encoding("o200k_base").encode_ordinary(text))
        assert len(tokens._CACHE) <= 4


# ---- embeddings ------------------------------------------------------------------------------

def test_embedding_input_forms():
    c = TokenCounter("cl100k_base")
    assert c.embedding_input("hello world") == 2
    assert c.embedding_input(["hello world", "tiktoken is great!"]) == 2 + 6
    assert c.embedding_input([15339, 1917]) == 2  # already tokens
    assert c.embedding_input([[15339, 1917], [1, 2, 3]]) == 5  # a batch of token arrays
    assert c.embedding_input([]) == 0
    assert c.embedding_input(None) == 0


# ---- bounded work per call (issue 8: one long word froze the loop; 1M spaces crashed tiktoken) ----

def _mixed_text(n_words: int) -> str:
    words = ["Gateway", "routes", "each", "request,", "counting", "tokens", "offline:", "42", "ms;", "\n\n",
             "naïve", "café", "l'été", "don't", "x=1;", "—", "日本語の", "text"]
    return " ".join(words[(i * 7) % len(words)] for i in range(n_words))


@pytest.mark.parametrize("name", ENCODINGS)
def test_long_text_counted_in_pieces_matches_the_whole(name):
    c = TokenCounter(name)
    text = _mixed_text(40_000)  # ~250k characters: ~30 pieces, each cut before a space
    assert len(text) > 20 * tokens.CHUNK_CHARS
    assert c.text(text) == len(get_encoding(name).encode_ordinary(text))


def test_pieces_are_bounded_and_cover_the_text():
    for text in ("a" * 100_000, " " * 100_000, _mixed_text(20_000), "ab " * 40_000):
        parts = list(tokens._chunks(text))
        assert "".join(parts) == text
        assert max(map(len, parts)) <= tokens.CHUNK_CHARS


def test_a_million_spaces_do_not_crash_the_tokenizer():
    c = TokenCounter("o200k_base")
    n = c.text(" " * 1_200_000)  # whole, this overflows tiktoken's regex stack (a PanicException)
    assert 0 < n <= 1_200_000


def test_one_giant_word_is_counted_close_to_exactly():
    c = TokenCounter("o200k_base")
    text = "a" * 300_000
    exact = len(get_encoding("o200k_base").encode_ordinary(text))
    assert abs(c.text(text) - exact) <= 2 * len(list(tokens._chunks(text)))


def test_a_limit_stops_counting_once_passed():
    c = TokenCounter("o200k_base")
    body = {"messages": [{"role": "user", "content": "a" * 3_000_000}] + [{"role": "user", "content": "b"}] * 1000}
    # about 375k tokens in all; with a limit only the first pieces are counted
    assert 8192 < c.chat(body, limit=8192) < 8192 + 2 * tokens.CHUNK_CHARS
    small = {"messages": [{"role": "user", "content": "hello there"}]}
    assert c.chat(small, limit=8192) == c.chat(small)


def test_embedding_input_nested_deeply_counts_without_recursion():
    deep = "x"
    for _ in range(5000):
        deep = [deep]
    assert TokenCounter("cl100k_base").embedding_input(deep) == 0
