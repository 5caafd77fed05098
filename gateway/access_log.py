"""One JSON line per request on stdout (or any binary stream), no secrets.

Written straight to a buffered binary stream rather than through ``logging``:
the record machinery costs more than the rest of the line, and the buffer is
flushed by the state tick every second and at shutdown. On stdout the buffer is
PIPE_BUF (4 KiB) long and holds whole lines only, so each flush is one atomic
write and several workers sharing one pipe never interleave inside a line.
"""
from __future__ import annotations

import io
import select
import sys

import orjson


class AccessLog:
    def __init__(self, stream=None, enabled: bool = True):
        self._out = stream if stream is not None else _stdout_writer()
        self.enabled = enabled

    def write(self, entry: dict) -> None:
        if self.enabled:
            self._out.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        try:
            self._out.flush()
        except (OSError, ValueError):  # closed pipe at shutdown: nothing more to save
            pass


def _stdout_writer():
    raw = io.FileIO(sys.stdout.fileno(), "wb", closefd=False)
    return io.BufferedWriter(raw, buffer_size=getattr(select, "PIPE_BUF", 4096))
