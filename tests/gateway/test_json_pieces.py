"""json_pieces: the same answer as one orjson.loads, with no orjson call over a piece.

The pieces are made tiny here (``PIECE`` = 256 bytes) so that small generated documents take
every path that a 30 MB body takes at the real size: batches, one by one, entered objects,
arrays and strings, and the cuts inside strings.
"""
from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http import json_pieces

SETTINGS = settings(max_examples=400, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

text = st.text(alphabet=st.sampled_from(list('ab ,{}[]":\\\n\té€😀') + ["\x01"]), max_size=400)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False,
                                                                                   allow_infinity=False) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=30) | st.dictionaries(text, inner, max_size=8),
                      max_leaves=200)


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(json_pieces, "PIECE", 256)
    calls = []
    real = orjson.loads

    def counted(data):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(json_pieces.orjson, "loads", counted)
    return calls


def _same(raw: bytes):
    try:
        expected = orjson.loads(raw)
    except orjson.JSONDecodeError:
        with pytest.raises(ValueError):
            json_pieces.loads(raw)
        return
    got = json_pieces.loads(raw)
    assert got == expected and orjson.dumps(got) == orjson.dumps(expected)


@SETTINGS
@given(value=values, indent=st.booleans())
def test_any_document_parses_as_orjson_parses_it(small_pieces, value, indent):
    raw = orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)
    small_pieces.clear()  # one list for every example of the test
    json_pieces.loads(raw)
    # a piece is at most PIECE bytes, plus the brackets a batch is proved with; a number
    # longer than a piece, or absurd strings, fall back to the whole body in one call
    assert all(n <= 256 + 2 for n in small_pieces) or small_pieces[-1] == len(raw)
    _same(raw)


@SETTINGS
@given(value=values, at=st.integers(0, 10**6), junk=st.sampled_from([b"", b",", b"]", b"}", b'"', b"\\", b"x",
                                                                      b"\xc3", b"\x00", b" "]))
def test_a_broken_document_is_refused_as_orjson_refuses_it(small_pieces, value, at, junk):
    raw = bytearray(orjson.dumps({"model": "m", "messages": [value, value]}))
    at %= len(raw)
    raw[at:at + 1] = junk
    _same(bytes(raw))


def test_a_million_tiny_messages_are_parsed_in_pieces():
    calls = []
    real = orjson.loads

    def counted(data):
        calls.append(len(data))
        return real(data)

    body = {"model": "m", "messages": [{"role": "user", "content": "a},{b"}] * 200_000}
    raw = orjson.dumps(body)
    json_pieces.orjson.loads, saved = counted, json_pieces.orjson.loads
    try:
        assert json_pieces.loads(raw) == body
    finally:
        json_pieces.orjson.loads = saved
    assert max(calls) <= json_pieces.PIECE + 2 and len(raw) > 40 * json_pieces.PIECE


@pytest.mark.parametrize("content", ["x" * 3_000_000, "é€😀" * 300_000, "\\n\\u00e9\\ud83d\\ude00" * 100_000])
def test_long_strings_are_decoded_whole_or_in_pieces(content):
    raw = b'{"model":"m","messages":[{"role":"user","content":"' + content.encode() + b'"}]}'
    assert json_pieces.loads(raw) == orjson.loads(raw)


def test_a_rewrite_splices_the_members_into_the_clients_bytes():
    raw = b'{"model" : "a",  "messages": ' + orjson.dumps([{"role": "user", "content": "hi"}] * 50_000) + b"}"
    req = json_pieces.loads(raw)
    out = json_pieces.spliced(raw, req, {"model": "b", "stream_options": {"include_usage": True}})
    assert orjson.loads(out) == {**orjson.loads(raw), "model": "b", "stream_options": {"include_usage": True}}
    assert out.endswith(raw[raw.index(b',  "messages"'):])  # the rest byte for byte
    assert json_pieces.spliced(b'{"model":"a"}', {"model": "a"}, {"model": "b"}) is None  # small: re-serialise


def test_dispose_empties_what_it_frees():
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * 100}] * 10_000, "n": 1}
    json_pieces.dispose(body)
    assert body == {}
