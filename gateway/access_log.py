"""One JSON line per request on stdout (or any binary stream), no secrets.

Written straight to a buffered binary stream rather than through ``logging``:
the record machinery costs more than the rest of the line, and the buffer is
flushed by the state tick every second and at shutdown.
"""
from __future__ import annotations

import sys

import orjson


class AccessLog:
    def __init__(self, stream=None, enabled: bool = True):
        self._out = stream if stream is not None else sys.stdout.buffer
        self.enabled = enabled

    def write(self, entry: dict) -> None:
        if self.enabled:
            self._out.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        try:
            self._out.flush()
        except (OSError, ValueError):  # closed pipe at shutdown: nothing more to save
            pass
