"""Model prices from litellm's bundled cost map, read as a file.

Importing litellm costs seconds and ~200 MB and fetches a price list from the
internet; its wheel also ships the same map as a JSON file, which is all we need.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from decimal import Decimal

_MAP_FILE = "model_prices_and_context_window_backup.json"
_PER_MTOK = Decimal(1_000_000)


def litellm_dir() -> str:
    """litellm's package folder, found without importing it."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("litellm is not installed: it provides the cost map and tokenizer files")
    return list(spec.submodule_search_locations)[0]


@functools.lru_cache(maxsize=1)
def _cost_map() -> dict:
    with open(os.path.join(litellm_dir(), _MAP_FILE), "rb") as f:
        return json.load(f)


def forget() -> None:
    """Drop the parsed map; the next lookup reads the file again."""
    _cost_map.cache_clear()


def _per_mtok(value) -> Decimal | None:
    # str() first: the map's floats (1.5e-07) become exact decimals, not binary noise
    return None if value is None else Decimal(str(value)) * _PER_MTOK


def lookup_prices(model: str) -> dict[str, Decimal | None] | None:
    """USD per 1M tokens for ``model`` (``input``, ``cached_input``, ``output``), or None."""
    entry = _cost_map().get(model) or _cost_map().get(f"openai/{model}")
    if not entry or entry.get("input_cost_per_token") is None:
        return None
    return {
        "input": _per_mtok(entry.get("input_cost_per_token")),
        "cached_input": _per_mtok(entry.get("cache_read_input_token_cost")),
        "output": _per_mtok(entry.get("output_cost_per_token", 0)),
    }


def context_window(model: str) -> int | None:
    entry = _cost_map().get(model) or {}
    return entry.get("max_input_tokens")
