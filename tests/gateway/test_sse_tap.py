"""SseTap: whole SSE events forwarded in order whatever the read boundaries, usage learned, usage chunk withheld."""
from __future__ import annotations

import random

import orjson
import pytest

from gateway.sse_tap import SseTap

USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
         "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 0}}


def chunk(delta: dict | None = None, finish: str | None = None, *, choices=True, usage=None) -> dict:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if choices else [],
            "usage": usage}
    return body


def event(body) -> bytes:
    return b"data: " + (body if isinstance(body, bytes) else orjson.dumps(body)) + b"\n\n"


# An OpenAI stream with stream_options.include_usage: every chunk carries "usage": null, then a
# usage chunk with no choices, then [DONE]. Non-ASCII content so splits land inside characters.
EVENTS = [
    event(chunk({"role": "assistant", "content": ""})),
    event(chunk({"content": "Hello"})),
    event(chunk({"content": " wörld ✓"})),
    event(chunk({}, "stop")),
    event(chunk(choices=False, usage=USAGE)),
    b"data: [DONE]\n\n",
]
USAGE_EVENT = EVENTS[4]
STREAM = b"".join(EVENTS)
STRIPPED = STREAM.replace(USAGE_EVENT, b"")


def run(tap: SseTap, pieces) -> list[bytes]:
    out = [tap.feed(p) for p in pieces]
    out.append(tap.flush())
    return out


def assert_whole_events(outputs: list[bytes], allowed: list[bytes]) -> None:
    for out in outputs:
        if not out:
            continue
        assert out.endswith(b"\n\n"), out
        for ev in out.split(b"\n\n")[:-1]:
            assert ev + b"\n\n" in allowed, ev


# ---- forwarding ------------------------------------------------------------------------------

@pytest.mark.parametrize("strip, expected", [(True, STRIPPED), (False, STREAM)])
def test_every_single_split_point(strip, expected):
    allowed = [e for e in EVENTS if not (strip and e == USAGE_EVENT)]
    for i in range(len(STREAM) + 1):
        tap = SseTap(strip_usage=strip)
        out = run(tap, [STREAM[:i], STREAM[i:]])
        assert b"".join(out) == expected, i
        assert_whole_events(out, allowed)
        assert tap.usage == (9, 3, 4), i


@pytest.mark.parametrize("strip, expected", [(True, STRIPPED), (False, STREAM)])
def test_random_multi_way_splits(strip, expected):
    rng = random.Random(1234)
    allowed = [e for e in EVENTS if not (strip and e == USAGE_EVENT)]
    for _ in range(300):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 12)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
        tap = SseTap(strip_usage=strip)
        out = run(tap, pieces)
        assert b"".join(out) == expected, cuts
        assert_whole_events(out, allowed)
        assert tap.usage == (9, 3, 4)


def test_byte_by_byte():
    tap = SseTap(strip_usage=True)
    out = run(tap, [STREAM[i:i + 1] for i in range(len(STREAM))])
    assert b"".join(out) == STRIPPED
    assert_whole_events(out, EVENTS)
    # each event leaves the tap the moment its blank line arrives, not later
    assert [o for o in out if o] == [e for e in EVENTS if e != USAGE_EVENT]


def test_event_is_forwarded_as_soon_as_it_is_complete():
    tap = SseTap(strip_usage=False)
    assert tap.feed(EVENTS[1][:-1]) == b""  # one newline short
    assert tap.feed(b"\n") == EVENTS[1]
    assert tap.feed(EVENTS[2] + EVENTS[3][:10]) == EVENTS[2]
    assert tap.feed(EVENTS[3][10:]) == EVENTS[3]


def test_keepalive_comments_pass_through():
    tap = SseTap(strip_usage=True)
    stream = b": keep-alive\n\n" + EVENTS[1] + b": keep-alive\n\n"
    assert b"".join(run(tap, [stream])) == stream


# ---- the usage chunk ---------------------------------------------------------------------------

def test_usage_chunk_withheld_only_when_asked():
    kept = SseTap(strip_usage=False)
    assert kept.feed(USAGE_EVENT) == USAGE_EVENT
    assert kept.usage == (9, 3, 4)
    dropped = SseTap(strip_usage=True)
    assert dropped.feed(USAGE_EVENT) == b""
    assert dropped.usage == (9, 3, 4)


def test_usage_on_a_chunk_with_choices_is_never_withheld():
    # some servers (vLLM with continuous usage stats) put usage on content chunks
    ev = event(chunk({"content": "hi"}, usage=USAGE))
    tap = SseTap(strip_usage=True)
    assert tap.feed(ev) == ev
    assert tap.usage == (9, 3, 4)
    assert tap.generated_text() == "hi"


def test_null_usage_on_ordinary_chunks_is_not_usage():
    tap = SseTap(strip_usage=True)
    assert b"".join(run(tap, [EVENTS[1], EVENTS[2]])) == EVENTS[1] + EVENTS[2]
    assert tap.usage is None


def test_the_word_usage_in_content_is_harmless():
    ev = event(chunk({"content": 'the "usage" field'}))
    tap = SseTap(strip_usage=True)
    assert tap.feed(ev) == ev
    assert tap.usage is None


def test_last_usage_wins_and_data_without_space_parses():
    tap = SseTap(strip_usage=True)
    first = event(chunk(choices=False, usage={"prompt_tokens": 1, "completion_tokens": 1}))
    second = b"data:" + orjson.dumps(chunk(choices=False, usage={"prompt_tokens": 5, "completion_tokens": 7})) + b"\n\n"
    assert tap.feed(first + second) == b""
    assert tap.usage == (5, 7, 0)


def test_malformed_usage_event_is_forwarded():
    bad = b'data: {"usage": {"prompt_tokens": 1, \n\n'
    tap = SseTap(strip_usage=True)
    assert tap.feed(bad) == bad
    assert tap.usage is None


# ---- generated text ---------------------------------------------------------------------------

def test_generated_text_concatenates_content():
    tap = SseTap(strip_usage=True)
    run(tap, [STREAM[:37], STREAM[37:]])
    assert tap.generated_text() == "Hello wörld ✓"


def test_generated_text_includes_tool_call_arguments_and_refusals():
    events = [
        event(chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})),
        event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]})),
        event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ation": "SF"}'}}]})),
        event(chunk({"refusal": " no."})),
        event(chunk({}, "tool_calls")),
        b"data: [DONE]\n\n",
    ]
    tap = SseTap(strip_usage=False)
    run(tap, [b"".join(events)])
    assert tap.generated_text() == 'get_weather{"location": "SF"} no.'


def test_generated_text_skips_done_and_garbage():
    tap = SseTap(strip_usage=False)
    run(tap, [b"data: not json\n\n" + b"data: [DONE]\n\n" + event([1, 2]) + EVENTS[1]])
    assert tap.generated_text() == "Hello"


# ---- end of stream ---------------------------------------------------------------------------

def test_flush_returns_an_unterminated_tail_once():
    tap = SseTap(strip_usage=False)
    tail = b'data: {"choices": [{"delta": {"content": "!"}}]}'
    assert tap.feed(EVENTS[1] + tail) == EVENTS[1]
    assert tap.flush() == tail
    assert tap.flush() == b""
    assert tap.generated_text() == "Hello!"


def test_flush_with_nothing_pending():
    tap = SseTap(strip_usage=False)
    assert tap.feed(EVENTS[1]) == EVENTS[1]
    assert tap.flush() == b""
    assert tap.events == [EVENTS[1]]
