"""What a request costs, in Decimal USD.

API: tokens × the backend's prices (cached prompt tokens at their own price).
Endpoint: the money is instance time (see ``endpoint.clock``); a request is
attributed its share of the last window's endpoint cost, by capacity tokens,
so that chargeback adds up to what the endpoint costs.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_MTOK = Decimal(1_000_000)
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    from_upstream: bool = False  # False: counted here with tiktoken


_DISPLAY = Decimal("1E-12")


def display_usd(usd: Decimal) -> str:
    """Fixed-point to the pico-dollar: enough for one token, short enough for a header."""
    return format(usd.quantize(_DISPLAY).normalize(), "f")


def api_cost(prices, usage: Usage) -> Decimal:
    """``prices``: a ``config.PriceSpec`` (USD per 1M tokens)."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = prices.cached_input if prices.cached_input is not None else prices.input
    total = (
        (usage.prompt_tokens - cached) * prices.input
        + cached * cached_price
        + usage.completion_tokens * prices.output
    )
    return total / _MTOK


def endpoint_share(cost_per_second: Decimal, window_s: float, request_capacity_tokens: float,
                   window_capacity_tokens: float) -> Decimal:
    """This request's part of the endpoint's cost over the last ``window_s`` seconds.

    ``window_capacity_tokens`` includes this request's own tokens.
    """
    if request_capacity_tokens <= 0 or window_capacity_tokens <= 0:
        return _ZERO
    share = Decimal(repr(min(1.0, request_capacity_tokens / window_capacity_tokens)))
    return cost_per_second * Decimal(repr(window_s)) * share


def usage_from_openai(usage: dict | None) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) from an OpenAI ``usage`` object, or None."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0 if isinstance(prompt, int) else None)  # embeddings: none
    if not isinstance(completion, int):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return (prompt if isinstance(prompt, int) else -1, completion, cached if isinstance(cached, int) else 0)


# more tokens than any model's context and output hold in one request: a count past it is no count
MAX_REPORTED_TOKENS = 100_000_000


def plausible_usage(found: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """An upstream's (prompt, completion, cached) as far as it can be true; None: count it all here.

    A negative prompt count becomes -1 (count the prompt here); a negative or absurd completion
    count, or an absurd prompt count, drops the report; cached tokens are kept within the prompt.
    A container reporting negative counts crashed the metrics (a counter cannot go down: a 500,
    the request missing from the access log and its cost dropped), and one reporting 10^18 tokens
    was billed 750 billion USD.
    """
    if found is None:
        return None
    prompt, completion, cached = found
    if not 0 <= completion <= MAX_REPORTED_TOKENS or prompt > MAX_REPORTED_TOKENS:
        return None
    prompt = prompt if prompt >= 0 else -1
    return prompt, completion, min(max(cached, 0), max(prompt, 0))
