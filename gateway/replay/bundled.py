"""Files shipped inside the package, so ``gateway replay`` runs from a fresh install with no paths.

* two real one-hour traces (Azure LLM inference trace 2023, CC-BY-4.0: source, paper and
  licence in ``data/README.md``), which every trace argument accepts by name;
* ServeGen's 14-day hourly request volumes (Alibaba Bailian, Apache-2.0) for ``make-trace``;
* a copy of the repository's ``config.yaml``, the last resort when no config is named.

Usage::

    read_trace(trace_path("azure-code"))   # the bundled file; any other text is a path
    path, bundled = config_path(None)      # --config not given: $GATEWAY_CONFIG, ./config.yaml, bundled
"""
from __future__ import annotations

import os

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# name → (file in DATA_DIR, what it is)
TRACES = {
    "azure-conv": ("azure2023_conv.csv.gz", "Azure LLM inference trace 2023, conversation: 19,366 requests in 58 min"),
    "azure-code": ("azure2023_code.csv.gz", "Azure LLM inference trace 2023, code: 8,819 requests in 57 min, bursty"),
}
DEFAULT_TRACE = "azure-conv"
# name → file: hourly volume shapes for make-trace (ServeGen, Apache-2.0; see data/README.md)
HOURLY = {"servegen": "servegen_hourly.csv"}
DEFAULT_HOURLY = "servegen"
BUNDLED_CONFIG = os.path.join(DATA_DIR, "config.yaml")


def trace_path(name_or_path: str) -> str:
    """The bundled file for ``azure-conv`` / ``azure-code``; anything else is a path, returned as is."""
    entry = TRACES.get(name_or_path)
    return os.path.join(DATA_DIR, entry[0]) if entry else name_or_path


def hourly_path(name_or_path: str) -> str:
    """The bundled hourly shape for ``servegen``; anything else is a path, returned as is."""
    entry = HOURLY.get(name_or_path)
    return os.path.join(DATA_DIR, entry) if entry else name_or_path


def trace_names_help() -> str:
    """One line for ``--help``: the names a trace argument accepts."""
    return "; ".join(f"{name} = {what}" for name, (_, what) in TRACES.items())


def config_path(given: str | None) -> tuple[str, bool]:
    """The config to load and whether it is the bundled copy.

    ``gateway serve`` reads ``--config``, else ``$GATEWAY_CONFIG``, else ``./config.yaml``; the
    replay does the same, then falls back to the bundled copy when ``./config.yaml`` does not
    exist, so that it works from any directory. A path the user named is never replaced.
    """
    if given is not None:
        return given, False
    path = os.environ.get("GATEWAY_CONFIG") or "config.yaml"
    if path == "config.yaml" and not os.path.exists(path):
        return BUNDLED_CONFIG, True
    return path, False


def trace_name(path: str) -> str | None:
    """The name of the bundled trace at ``path`` (as ``trace_path`` gives it), else None."""
    return next((name for name in TRACES if trace_path(name) == path), None)
