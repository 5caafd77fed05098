"""Per-request traces: ``arrival_s,prompt_tokens,completion_tokens`` as CSV, gzipped or not.

Columns are found by header name (others are ignored), rows are kept in compact
``array``s (a million rows is ~24 MB), and a trace out of arrival order is sorted.

Usage::

    trace = read_trace("/work/shared/traces/normalized/azure2023_conv.csv.gz")
    len(trace), trace.span_s
    write_trace("out.csv.gz", trace)
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import zlib
from array import array
from dataclasses import dataclass

COLUMNS = ("arrival_s", "prompt_tokens", "completion_tokens")

# the replay ticks every few seconds from 0 to the last arrival, whatever the number of requests: a
# two-row trace in Unix time (1.7e9 s) ran out of memory, and one at 1e7 s still ran after 90 s
MAX_ARRIVAL_S = 31 * 86400.0


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the file (and line)."""


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival: seconds since the trace start, and token counts."""

    arrival_s: array
    prompt_tokens: array
    completion_tokens: array
    name: str = "<memory>"

    def __post_init__(self):
        if not (len(self.arrival_s) == len(self.prompt_tokens) == len(self.completion_tokens)):
            raise TraceError(f"{self.name}: columns of different lengths")

    @classmethod
    def from_rows(cls, rows, name: str = "<memory>") -> "Trace":
        """From ``(arrival_s, prompt_tokens, completion_tokens)`` tuples, in any order."""
        rows = sorted(rows, key=lambda r: r[0])
        return cls(array("d", (float(r[0]) for r in rows)), array("q", (int(r[1]) for r in rows)),
                   array("q", (int(r[2]) for r in rows)), name)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        return self.arrival_s[-1] - self.arrival_s[0] if len(self) else 0.0

    def pairs(self) -> list[tuple[int, int]]:
        """(prompt_tokens, completion_tokens) of every request, for sampling."""
        return list(zip(self.prompt_tokens, self.completion_tokens))


def _open_text(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gz else open(path, "rb")
    # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def read_trace(path: str) -> Trace:
    """Read a trace file; raises TraceError naming the file and the offending line."""
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise TraceError(f"{path}: empty file (expected a header {','.join(COLUMNS)})")
            header = [h.strip() for h in header]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise TraceError(f"{path}: line 1: missing column(s) {', '.join(missing)} (have {','.join(header)})")
            ia, ip, ic = (header.index(c) for c in COLUMNS)
            rows = [r for r in reader if r]
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise TraceError(f"{path}: not a readable CSV: {e}") from None
    try:
        arrival = array("d", [float(r[ia]) for r in rows])
        prompt = array("q", [int(r[ip]) for r in rows])
        completion = array("q", [int(r[ic]) for r in rows])
    except (ValueError, IndexError, OverflowError):
        raise TraceError(_first_bad_row(path, rows, (ia, ip, ic))) from None
    if min(prompt, default=0) < 0 or min(completion, default=0) < 0:
        raise TraceError(f"{path}: negative token counts")
    bad = next((n for n, t in enumerate(arrival, start=2) if not 0.0 <= t <= MAX_ARRIVAL_S), None)  # also NaN
    if bad is not None:
        raise TraceError(f"{path}: line {bad}: arrival_s is seconds from the trace's start, 0 to "
                         f"{MAX_ARRIVAL_S:.0f} ({MAX_ARRIVAL_S / 86400:.0f} days), got {rows[bad - 2][ia].strip()[:40]!r}"
                         + (" (subtract the first arrival time)" if math.isfinite(arrival[bad - 2]) else ""))
    if any(arrival[i] > arrival[i + 1] for i in range(len(arrival) - 1)):
        order = sorted(range(len(arrival)), key=arrival.__getitem__)
        arrival = array("d", (arrival[i] for i in order))
        prompt = array("q", (prompt[i] for i in order))
        completion = array("q", (completion[i] for i in order))
    return Trace(arrival, prompt, completion, path)


def _first_bad_row(path: str, rows: list, idx: tuple[int, int, int]) -> str:
    ia, ip, ic = idx
    for n, r in enumerate(rows, start=2):  # line numbers ignore blank lines
        try:
            float(r[ia]), array("q", [int(r[ip]), int(r[ic])])
        except (ValueError, IndexError, OverflowError):
            return (f"{path}: line {n}: expected arrival_s (float), prompt_tokens and completion_tokens "
                    f"(integers below 2^63), got {','.join(r)[:200]!r}")
    return f"{path}: unreadable row"


def write_trace(path: str, trace: Trace) -> None:
    """Write ``trace`` as CSV (gzipped when ``path`` ends with .gz), arrival to the µs."""
    with open(path, "wb") as raw:
        # mtime=0: the same trace gives the same bytes (make-trace is reproducible)
        out = gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) if path.endswith(".gz") else raw
        with io.TextIOWrapper(out, encoding="utf-8", newline="") as f:
            _write_rows(f, trace)


def _write_rows(f, trace: Trace, chunk: int = 65536) -> None:
    f.write(",".join(COLUMNS) + "\n")
    for start in range(0, len(trace), chunk):
        stop = start + chunk
        f.write("".join(
            f"{a:.6f},{p},{c}\n"
            for a, p, c in zip(trace.arrival_s[start:stop], trace.prompt_tokens[start:stop],
                               trace.completion_tokens[start:stop])
        ))
