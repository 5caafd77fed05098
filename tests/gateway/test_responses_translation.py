"""Responses ⇄ chat translation and usage reading, on recorded payloads (tests/gateway/fixtures/responses).

The synthesized stream is checked against the official SDK's own types and stream state machine,
the code `client.responses.stream(...)` runs.
"""
from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pydantic
import pytest
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from openai import omit

from gateway.apis import RESPONSES
from gateway.apis.responses import ResponsesEvents, usage_from_responses
from gateway.apis.responses_stream import responses_events
from gateway.apis.responses_translate import from_chat, to_chat
from gateway.http.errors import GatewayError
from gateway.spend.cost import Usage, api_cost
from gateway.sse_tap import SseTap
from gateway.tokens import TokenCounter

FIXTURES = Path(__file__).parent / "fixtures" / "responses"
EVENT = pydantic.TypeAdapter(ResponseStreamEvent)


def load(name: str):
    text = (FIXTURES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text.encode()


def synthesize(req: dict, chat_sse: bytes, piece: int = 17) -> list[dict]:
    async def chunks():
        for i in range(0, len(chat_sse), piece):  # cut anywhere, as the network does
            yield chat_sse[i:i + piece]

    async def run():
        return b"".join([out async for out in responses_events(req, chunks())])

    raw = asyncio.run(run())
    events = []
    for block in raw.split(b"\n\n")[:-1]:
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        parsed = json.loads(data[6:])
        assert parsed["type"] == name[7:].decode()
        events.append(parsed)
    return events


def test_request_items_tools_images_and_format_map_to_chat():
    req = load("request_tools_images.json")
    assert to_chat(req, "llama-endpoint") == load("request_tools_images.chat.json")


@pytest.mark.parametrize("item, param", [
    ({"type": "item_reference", "id": "msg_1"}, "input[0]"),
    ({"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}, "input[0].content[0]"),
    ({"role": "user", "content": 7}, "input[0].content"),
])
def test_items_a_container_cannot_take_are_refused_by_name(item, param):
    with pytest.raises(GatewayError) as err:
        to_chat({"model": "m", "input": [item]}, "m")
    assert (err.value.status, err.value.param) == (400, param)


def test_a_chat_completion_becomes_a_valid_incomplete_response():
    req = {"model": "gpt-4o-mini", "input": "List primes.", "max_output_tokens": 12}
    response = Response.model_validate(from_chat(req, load("chat_completion_length.json")))
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "The first three primes are 2, 3 and"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (18, 12)
    assert response.model == "gpt-4o-mini" and response.max_output_tokens == 12


def test_reasoning_response_is_priced_with_cached_input_and_reasoning_as_output():
    body = load("response_reasoning.json")
    assert RESPONSES.usage(body) == (1536, 300, 1024)  # output_tokens already include the 256 reasoning tokens
    prices = type("P", (), {"input": Decimal("1.10"), "cached_input": Decimal("0.275"), "output": Decimal("4.40")})
    cost = api_cost(prices, Usage(1536, 300, 1024))
    assert cost == (512 * Decimal("1.10") + 1024 * Decimal("0.275") + 300 * Decimal("4.40")) / 1_000_000
    assert RESPONSES.text(body) == "The answer is 42."


def test_usage_reader_ignores_other_shapes():
    assert usage_from_responses(None) is None
    assert usage_from_responses({"prompt_tokens": 3, "completion_tokens": 1}) is None  # chat's shape
    assert usage_from_responses({"input_tokens": 3}) == (3, 0, 0)


def test_tap_reads_usage_from_response_completed_at_every_split_point():
    stream = load("stream_text.sse")
    for cut in range(1, len(stream)):
        tap = SseTap(strip_usage=True, reader=ResponsesEvents)
        out = tap.feed(stream[:cut]) + tap.feed(stream[cut:]) + tap.flush()
        assert out == stream, cut  # passed through as it came: nothing withheld
        assert tap.usage == (37, 11, 0), cut
    assert tap.generated_text() == "Hi thére ✓"


def test_synthesized_stream_is_what_the_sdk_expects():
    req = {"model": "gpt-4o-mini", "input": "Weather in Paris and Lyon?", "tools": [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]}
    events = synthesize(req, load("chat_stream_text_then_tools.sse"))
    for event in events:
        EVENT.validate_python(event)  # every field the SDK's types require, with the right types
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    state = ResponseStreamState(input_tools=req["tools"], text_format=omit)
    for event in events:
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=event))
    final = events[-1]["response"]
    assert final["usage"]["input_tokens"] == 212 and final["usage"]["input_tokens_details"]["cached_tokens"] == 128
    parsed = Response.model_validate(final)
    assert parsed.output_text == "Let me check."
    calls = [(o.call_id, o.name, o.arguments) for o in parsed.output if o.type == "function_call"]
    assert calls == [("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "get_weather", '{"city":"Lyon"}')]
    assert [o.type for o in parsed.output] == ["message", "function_call", "function_call"]


def test_a_stream_cut_by_max_tokens_ends_incomplete():
    chat = (b'data: {"choices":[{"index":0,"delta":{"content":"2, 3 and"},"finish_reason":null}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n')
    events = synthesize({"model": "m", "input": "primes"}, chat, piece=5)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["usage"] is None  # the container said nothing: the gateway counts


def test_prompt_count_covers_instructions_items_and_tools():
    counter = TokenCounter.for_model("gpt-4o-mini")
    req = load("request_tools_images.json")
    n = RESPONSES.count(counter, req)
    chat = load("request_tools_images.chat.json")
    assert n == counter.chat(chat)  # the same formula as the chat it becomes
    without = RESPONSES.count(counter, {**req, "instructions": None, "tools": None})
    assert 0 < without < n
    # with a limit the count may stop early, but only once past it
    assert RESPONSES.count(counter, req, limit=5) > 5


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"tools": [{"type": "function", "name": "f"}, {"type": "web_search_preview"}]}, "tools[1].type"),
    ({"store": False, "tools": [{"type": "function", "name": "f"}]}, None),
])
def test_what_needs_an_api_backend(extra, param):
    assert RESPONSES.needs_api({"model": "m", "input": "hi", **extra}) == param
