"""Watch an OpenAI SSE stream on its way to the client, without holding it back.

Complete events are forwarded as soon as their closing blank line arrives. The
tap keeps them to learn the completion's usage at the end: from the upstream's
usage chunk when there is one, else by counting the generated text (a stream
without usage, a client that left early). When the gateway asked the upstream
for a usage chunk the client did not ask for, that chunk is withheld: clients
that index ``choices[0]`` on every chunk break on it.
"""
from __future__ import annotations

import orjson

from .http.errors import error_body
from .http.upstream_errors import log_text
from .spend.cost import usage_from_openai

_SEP = b"\n\n"
# what the client reads where the upstream ended its stream with an error event of its own: its
# words (which can quote a key, or an internal host) go to the log, not to the client
STREAM_ERROR_MESSAGE = "The upstream ended this stream with an error; the answer above is incomplete."
STREAM_ERROR_CODE = "upstream_stream_error"
_OWN_CHAT_ERROR = error_body(STREAM_ERROR_MESSAGE, "upstream_error", None, STREAM_ERROR_CODE)


class ChatEvents:
    """How to read a chat completions stream's events (the other APIs bring their own)."""

    @staticmethod
    def usage(parsed: dict):
        return usage_from_openai(parsed.get("usage"))

    @staticmethod
    def usage_only(parsed: dict) -> bool:
        return not parsed.get("choices")

    @staticmethod
    def texts(parsed: dict):
        for choice in parsed.get("choices") or ():
            delta = choice.get("delta") or {}
            for key in ("content", "refusal", "reasoning_content"):
                if isinstance(delta.get(key), str):
                    yield delta[key]
            for call in delta.get("tool_calls") or ():
                fn = call.get("function") or {}
                yield str(fn.get("name") or "") + str(fn.get("arguments") or "")


def event_data(event: bytes) -> bytes | None:
    """The ``data:`` of one SSE event, whether or not an ``event:`` line comes first (Responses)."""
    if event.startswith(b"data:"):
        return event[5:]
    at = event.find(b"\ndata:")
    return event[at + 6:] if at >= 0 else None


class SseTap:
    __slots__ = ("_pending", "events", "usage", "_strip_usage", "_reader", "upstream_error")

    def __init__(self, strip_usage: bool, reader=ChatEvents):
        self._pending = b""
        self.events: list[bytes] = []
        self.usage: tuple[int, int, int] | None = None
        self._strip_usage = strip_usage
        self._reader = reader
        self.upstream_error: str | None = None  # the upstream's own error event, redacted: for the log

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now (whole events only)."""
        if self._pending:
            data = self._pending + data
        cut = data.rfind(_SEP)
        if cut < 0:
            self._pending = data
            return b""
        cut += 2
        self._pending = data[cut:]
        ready = data[:cut]
        if b'"usage"' in ready:
            ready = self._take_usage(ready)
        if b'"error"' in ready:
            ready = self._own_errors(ready)
        self.events.append(ready)
        return ready

    def flush(self) -> bytes:
        """Whatever is left when the upstream closes (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        if rest and b'"error"' in rest:
            rest = self._own_errors(rest)
        if rest:
            self.events.append(rest)
        return rest

    def _own_errors(self, ready: bytes) -> bytes:
        """Error events (chat: ``{"error": {...}}``; Responses: ``{"type": "error", ...}``) in the gateway's words."""
        out = []
        for event in ready.split(_SEP):
            data = event_data(event)
            parsed = None
            # (a Responses stream's response.created/completed carry "error": null in the response
            # object: those, the largest events of the stream, are not parsed a second time)
            if data is not None and data.count(b'"error"') > data.count(b'"error":null') + data.count(b'"error": null'):
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    parsed = None
            if isinstance(parsed, dict) and ("error" in parsed or parsed.get("type") == "error"):
                self.upstream_error = log_text(data)
                if "error" in parsed:
                    own = _OWN_CHAT_ERROR
                else:
                    own = orjson.dumps({**{k: v for k, v in parsed.items() if k in ("type", "sequence_number")},
                                        "code": STREAM_ERROR_CODE, "message": STREAM_ERROR_MESSAGE, "param": None})
                event = event[: len(event) - len(data)] + b" " + own
            out.append(event)
        return _SEP.join(out)

    def _take_usage(self, ready: bytes) -> bytes:
        """Parse only events that carry a usage object, from the last one back; the last wins.

        Some servers (vLLM) send ``"usage": null`` on every chunk: those are skipped unparsed.
        """
        found_last = None
        search_end = len(ready)
        while (pos := ready.rfind(b'"usage"', 0, search_end)) >= 0:
            start = ready.rfind(_SEP, 0, pos)
            start = 0 if start < 0 else start + 2
            end = ready.find(_SEP, pos)
            end = len(ready) if end < 0 else end + 2
            search_end = start
            event = ready[start:end]
            data = event_data(event)
            if data is None or b'"usage":null' in event or b'"usage": null' in event:
                continue
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            found = self._reader.usage(parsed) if isinstance(parsed, dict) else None
            if found is None:
                continue
            found_last = found_last or found
            if self._strip_usage and self._reader.usage_only(parsed):
                ready = ready[:start] + ready[end:]
        if found_last is not None:
            self.usage = found_last
        return ready

    def generated_text(self) -> str:
        """Concatenated content, tool-call arguments and refusals of every choice seen."""
        parts: list[str] = []
        for block in self.events:
            for event in block.split(_SEP):
                data = event_data(event)
                if data is None or data.lstrip().startswith(b"[DONE]"):
                    continue
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(parsed, dict):
                    parts.extend(self._reader.texts(parsed))
        return "".join(parts)
