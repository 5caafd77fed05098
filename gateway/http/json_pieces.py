"""Parse a large JSON body in pieces of bounded size, so that a worker thread parsing it
hands the GIL back to the event loop between pieces.

orjson holds the GIL for a whole call, so running it in a thread does not help the loop:
a 30 MB body of a million small messages is one 0.3-0.6 s call, and every other request
(``/healthz`` included) waits that long. Here no orjson call sees more than ``PIECE``
bytes (about 1-2 ms for the densest JSON). The glue between pieces is Python, which
releases the GIL every ``sys.getswitchinterval()`` (5 ms).

How a piece is found without a scanner of our own:
* A value that fits in a window parses as it is; when more follows, orjson says where its
  value ended ("unexpected content after document"), and that is its end.
* An array's elements are parsed in batches: a cut is guessed at a ``},{``-like boundary
  past ``PIECE`` bytes and *proved* by parsing ``[`` + batch + ``]``. A parse that starts at
  an element and succeeds up to the cut can only do so if the cut is a boundary at the
  array's own depth. A wrong guess (inside a string, one level down) fails and costs one
  piece; the next ``PIECE`` bytes are then taken element by element.
* A value longer than a piece is entered: an object member by member, an array as above,
  a string decoded in pieces cut where no escape or UTF-8 sequence can straddle the cut.

Same result as ``orjson.loads`` (last key wins), and ``ValueError`` for what it refuses.
Two shapes are not split and fall back to one ``orjson.loads`` of the whole body: values
nested more than ``MAX_DESCENT`` levels deep that each exceed a piece, and a long string
of nothing but low surrogate escapes (both invalid or absurd). Nesting limits are orjson's per piece, so a body up to
``MAX_DESCENT`` levels deeper than orjson's 1,024 can pass; nothing downstream recurses on it.
"""
from __future__ import annotations

import re

import orjson

PIECE = 128 * 1024  # bytes per orjson call: ~1.3 ms at its slowest (~100 MB/s for tiny objects)
MAX_DESCENT = 64
_FIRST_WINDOW = 64

_WS = re.compile(rb"[ \t\r\n]*")
# where the next element may start after a cut, by the first byte of the array's first element
_CUTS = {
    ord("{"): re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{"),
    ord("["): re.compile(rb"\][ \t\r\n]*,[ \t\r\n]*\["),
    ord('"'): re.compile(rb'"[ \t\r\n]*,[ \t\r\n]*"'),
}
_ANY_CUT = re.compile(rb"[}\]\"0-9el][ \t\r\n]*,")
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_CLEAN_RUN = re.compile(rb"[^\\]{12}")  # 12 bytes with no backslash: no escape straddles their end
# else: a cut just before an escape (an even run of backslashes before it) other than the low
# half of a surrogate pair, which must stay with its high half
_ESCAPE_START = re.compile(rb"[^\\](?:\\\\)*(?=\\(?:[^u]|u(?![dD][c-fC-F])))")
_CONTROL = re.compile(rb"[\x00-\x1f]")  # not allowed raw in a JSON string
_NUMBER_TAIL = frozenset(b"0123456789+-.eE")
_AFTER = "unexpected content after document"


class Body(dict):
    """A top-level object parsed in pieces, with where each member's value lies in the raw
    bytes (``spans``: key -> (start, end)) and its ``{`` (``start``): a rewrite of a few
    members can then splice the client's bytes instead of serialising everything again."""

    __slots__ = ("spans", "start")


class _Fallback(Exception):
    """A shape not worth splitting: the caller parses the whole body in one call."""


def loads(raw: bytes):
    """``orjson.loads(raw)``, in pieces of at most ``PIECE`` bytes; ``ValueError`` if invalid."""
    if len(raw) <= PIECE:
        return orjson.loads(raw)
    try:
        p = _Pieces(raw)
        i = p.ws(0)
        value, end = p.value(i, 0)
        if p.ws(end) != len(raw):
            raise ValueError("unexpected content after document")
        return value
    except _Fallback:
        return orjson.loads(raw)


def _bad(at: int):
    return ValueError(f"invalid JSON near byte {at}")


class _Pieces:
    __slots__ = ("buf", "mv", "n", "window")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.mv = memoryview(buf)
        self.n = len(buf)
        self.window = _FIRST_WINDOW  # grows to about twice the last value seen

    def ws(self, i: int) -> int:
        while True:  # bounded steps even over megabytes of blanks
            stop = min(self.n, i + PIECE)
            i = _WS.match(self.buf, i, stop).end()
            if i < stop or stop == self.n:
                return i

    def _utf8_end(self, end: int) -> int:
        """``end`` moved back off a UTF-8 continuation byte (orjson checks a piece's UTF-8 first)."""
        buf = self.buf
        while end < self.n and 0x80 <= buf[end] < 0xC0:
            end -= 1
        return end

    def value(self, i: int, depth: int):
        """(the value starting at byte ``i``, the byte after it)."""
        if i >= self.n:
            raise _bad(i)
        w = min(PIECE, max(_FIRST_WINDOW, self.window))
        while True:
            end = self._utf8_end(min(self.n, i + w))
            try:
                v = orjson.loads(self.mv[i:end])
                # a number cut by the window parses too: it must be followed by a non-digit
                if end == self.n or not (isinstance(v, (int, float)) and self.buf[end] in _NUMBER_TAIL):
                    self.window = 2 * (end - i)
                    return v, end
            except orjson.JSONDecodeError as e:
                if e.msg.startswith(_AFTER):
                    stop = i + len(e.doc[:e.pos].encode("utf-8", "surrogatepass"))
                    self.window = 2 * (stop - i)
                    return orjson.loads(self.mv[i:stop]), stop
                if end == self.n:
                    raise _bad(i) from None
            if w >= PIECE:
                break
            w = min(PIECE, w * 8)
        # longer than a piece (or invalid, which the parts below find): enter it
        if depth >= MAX_DESCENT:
            raise _Fallback
        first = self.buf[i]
        if first == 0x7B:  # {
            return self.object(i, depth + 1)
        if first == 0x5B:  # [
            return self.array(i, depth + 1)
        if first == 0x22:  # "
            return self.string(i)
        raise _Fallback  # a number longer than a piece: rare enough for one call

    def object(self, i: int, depth: int):
        out = Body() if depth == 1 else {}
        if depth == 1:
            out.start, out.spans = i, {}
        buf = self.buf
        j = self.ws(i + 1)
        if j < self.n and buf[j] == 0x7D:
            return out, j + 1
        while True:
            if j >= self.n or buf[j] != 0x22:
                raise _bad(j)
            key, j = self.value(j, depth)
            j = self.ws(j)
            if j >= self.n or buf[j] != 0x3A:
                raise _bad(j)
            start = self.ws(j + 1)
            out[key], j = self.value(start, depth)
            if depth == 1:
                out.spans[key] = (start, j)
            j = self.ws(j)
            if j < self.n and buf[j] == 0x2C:
                j = self.ws(j + 1)
            elif j < self.n and buf[j] == 0x7D:
                return out, j + 1
            else:
                raise _bad(j)

    def array(self, i: int, depth: int):
        out = []
        buf, n = self.buf, self.n
        j = self.ws(i + 1)
        if j < n and buf[j] == 0x5D:
            return out, j + 1
        cut_at = _CUTS.get(buf[j], _ANY_CUT) if j < n else _ANY_CUT
        one_by_one_until = j
        while True:
            if j >= one_by_one_until and n - j > PIECE:
                # a batch of whole elements, proved by parsing it as an array of its own
                m = cut_at.search(buf, j + PIECE // 2, min(n, j + PIECE))
                if m is not None:
                    cut = m.start() + 1
                    try:
                        batch = orjson.loads(b"[" + self.mv[j:cut] + b"]")
                    except orjson.JSONDecodeError:
                        one_by_one_until = j + PIECE  # a wrong guess: the next piece one by one
                    else:
                        out += batch
                        j = self.ws(cut)  # at the "," that the cut pattern matched
                        j = self.ws(j + 1)
                        continue
                else:
                    one_by_one_until = j + PIECE
            v, j = self.value(j, depth)
            out.append(v)
            j = self.ws(j)
            if j < n and buf[j] == 0x2C:
                j = self.ws(j + 1)
            elif j < n and buf[j] == 0x5D:
                return out, j + 1
            else:
                raise _bad(j)

    def string(self, i: int):
        """A string longer than a piece: its end found in bounded steps, decoded in pieces."""
        buf, n = self.buf, self.n
        j = i + 1
        while True:
            stop = min(n, j + PIECE)
            j = _STRING_BODY.match(buf, j, stop).end()
            if j < stop and buf[j] == 0x22:
                break
            if j >= n or (j < stop and buf[j] != 0x5C):
                raise _bad(j)  # unterminated
            # else: the window ended (maybe inside an escape): go on from there
        end = j  # the closing quote
        k = i + 1
        if buf.find(b"\\", k, end) < 0 and not any(_CONTROL.search(buf, a, min(end, a + PIECE))
                                                   for a in range(k, end, PIECE)):
            # no escape, no control character: the bytes are the text. One decode straight from
            # the buffer (~10 ms for 30 MB) keeps one copy, where pieces and their join held two
            return str(self.mv[k:end], "utf-8"), end + 1
        parts = []
        while k < end:
            cut = end
            if end - k > PIECE:
                m = _CLEAN_RUN.search(buf, k + PIECE // 2, k + PIECE)
                if m is not None:
                    cut = self._utf8_end(m.end())
                else:
                    m = _ESCAPE_START.search(buf, k + PIECE // 2, k + PIECE)
                    if m is None:
                        raise _Fallback
                    cut = m.end()
            parts.append(orjson.loads(b'"' + self.mv[k:cut] + b'"'))
            k = cut
        return "".join(parts), end + 1


def spliced(raw: bytes, req, changes: dict) -> bytes | None:
    """``raw`` with the top-level members in ``changes`` replaced or added, without
    serialising the rest again; None when ``req`` was not parsed in pieces (small: re-serialise).
    One copy of the body (``bytes.join`` releases the GIL while it copies)."""
    spans = getattr(req, "spans", None)
    if spans is None:
        return None
    edits = []
    for key, value in changes.items():
        if key in spans:
            edits.append((*spans[key], orjson.dumps(value)))
        else:
            edits.append((req.start + 1, req.start + 1, orjson.dumps(key) + b":" + orjson.dumps(value) + b","))
    edits.sort(key=lambda e: e[0])
    mv = memoryview(raw)
    parts, at = [], 0
    for start, end, new in edits:
        parts += (mv[at:start], new)
        at = end
    parts.append(mv[at:])
    return b"".join(parts)


def dispose(value) -> None:
    """Free a large parsed body a few thousand objects at a time (run it in a worker thread).

    The last reference to a million parsed messages frees them all in one C call chain that
    holds the GIL for 50-100 ms; taken apart here, the GIL changes hands between the steps.
    """
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            items = list(v.values())
            v.clear()
            todo += [x for x in items if isinstance(x, (dict, list)) and len(x) > 64]
            del items
        elif isinstance(v, list):
            while v:
                tail = v[-4096:]
                del v[-4096:]
                todo += [x for x in tail if isinstance(x, (dict, list)) and len(x) > 64]
                del tail
