"""Money in Decimal USD: API token prices, endpoint chargeback, upstream usage, litellm's cost map."""
from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.spend import cost_map
from gateway.config import PriceSpec
from gateway.spend.cost import Usage, api_cost, display_usd, endpoint_share, usage_from_openai

# gpt-4o-mini, USD per 1M tokens
MINI = PriceSpec(input=Decimal("0.15"), output=Decimal("0.60"), cached_input=Decimal("0.075"))


# ---- api_cost -------------------------------------------------------------------------------------

def test_one_million_prompt_tokens_cost_exactly_the_list_price():
    assert api_cost(MINI, Usage(1_000_000, 0)) == Decimal("0.15")
    assert api_cost(MINI, Usage(0, 1_000_000)) == Decimal("0.60")
    assert api_cost(MINI, Usage(1_000_000, 1_000_000)) == Decimal("0.75")


def test_results_are_exact_decimals():
    one = api_cost(MINI, Usage(1, 1))
    assert isinstance(one, Decimal)
    assert one == Decimal("0.00000075")
    # a million one-token requests add up to exactly the price of one million-token request
    assert sum((api_cost(MINI, Usage(1, 0)) for _ in range(1_000)), Decimal(0)) * 1000 == Decimal("0.15")
    # the sum floats would get wrong
    assert api_cost(MINI, Usage(7, 3)) == Decimal("0.00000285")


def test_cached_tokens_at_their_own_price():
    # 600k uncached at 0.15 + 400k cached at 0.075
    assert api_cost(MINI, Usage(1_000_000, 0, cached_tokens=400_000)) == Decimal("0.12")
    assert api_cost(MINI, Usage(1_000_000, 0, cached_tokens=1_000_000)) == Decimal("0.075")


def test_cached_above_prompt_is_clamped():
    assert api_cost(MINI, Usage(1_000_000, 0, cached_tokens=5_000_000)) == Decimal("0.075")


def test_no_cached_price_means_cached_tokens_pay_the_input_price():
    prices = PriceSpec(input=Decimal("2.50"), output=Decimal("10"))
    assert api_cost(prices, Usage(1_000_000, 0, cached_tokens=500_000)) == Decimal("2.50")


def test_zero_usage_costs_zero():
    assert api_cost(MINI, Usage(0, 0)) == 0


# ---- display_usd -------------------------------------------------------------------------------

@pytest.mark.parametrize("usd, shown", [
    (Decimal("0.15"), "0.15"),
    (Decimal("0.00000075"), "0.00000075"),  # fixed point, never 7.5E-7
    (Decimal("0.0000000000001"), "0"),  # below a pico-dollar
    (Decimal("0.0000000000015"), "0.000000000002"),  # rounded to the pico-dollar
    (Decimal(0), "0"),
    (Decimal("100"), "100"),  # never 1E+2
    (Decimal("12.500"), "12.5"),
])
def test_display_usd(usd, shown):
    assert display_usd(usd) == shown


# ---- endpoint_share ------------------------------------------------------------------------------

def test_endpoint_share_is_the_requests_part_of_the_window():
    # 0.001 USD/s for 10 s, this request used a quarter of the window's capacity tokens
    assert endpoint_share(Decimal("0.001"), 10.0, 25, 100) == Decimal("0.0025")
    assert endpoint_share(Decimal("0.001"), 10.0, 100, 100) == Decimal("0.01")


def test_endpoint_share_of_one_instance_hour():
    per_second = Decimal("1.408") / 3600
    assert endpoint_share(per_second, 3600.0, 1, 1) == pytest.approx(Decimal("1.408"), abs=Decimal("1E-20"))


def test_endpoint_share_shares_add_up():
    total = sum(endpoint_share(Decimal("0.36"), 2.0, t, 100.0) for t in (10, 20, 30, 40))
    assert total == Decimal("0.72")


def test_endpoint_share_edges():
    assert endpoint_share(Decimal("0.001"), 10.0, 0, 100) == 0
    assert endpoint_share(Decimal("0.001"), 10.0, 10, 0) == 0
    assert endpoint_share(Decimal("0.001"), 10.0, 200, 100) == Decimal("0.01")  # clamped to the whole window
    assert isinstance(endpoint_share(Decimal("0.001"), 10.0, 1, 3), Decimal)


# ---- usage_from_openai ------------------------------------------------------------------------------

def test_chat_usage():
    usage = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}
    assert usage_from_openai(usage) == (19, 10, 0)


def test_cached_tokens():
    usage = {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
             "prompt_tokens_details": {"cached_tokens": 1920}}
    assert usage_from_openai(usage) == (2006, 300, 1920)


def test_embeddings_usage_has_no_completion_tokens():
    assert usage_from_openai({"prompt_tokens": 8, "total_tokens": 8}) == (8, 0, 0)


@pytest.mark.parametrize("usage", [None, {}, [], "usage", {"total_tokens": 5}, {"completion_tokens": "3"}])
def test_missing_or_unusable_usage_is_none(usage):
    assert usage_from_openai(usage) is None


def test_completion_only_usage_marks_prompt_unknown():
    # a TGI answer rebuilt by the SageMaker codec knows only the generated tokens
    assert usage_from_openai({"completion_tokens": 12}) == (-1, 12, 0)


def test_null_details_are_ignored():
    assert usage_from_openai({"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None}) == (5, 1, 0)


# ---- litellm's cost map, read as a file ---------------------------------------------------------

def test_lookup_prices_gpt_4o_mini():
    p = cost_map.lookup_prices("gpt-4o-mini")
    assert p == {"input": Decimal("0.15"), "cached_input": Decimal("0.075"), "output": Decimal("0.60")}
    assert all(isinstance(v, Decimal) for v in p.values())


def test_lookup_prices_embeddings_and_unknown():
    p = cost_map.lookup_prices("text-embedding-3-small")
    assert p["input"] == Decimal("0.02") and p["output"] == 0 and p["cached_input"] is None
    assert cost_map.lookup_prices("surely-not-a-model") is None


def test_context_window():
    assert cost_map.context_window("gpt-4o-mini") == 128_000
    assert cost_map.context_window("surely-not-a-model") is None


def test_litellm_dir_is_found_without_importing_it():
    import os

    assert os.path.isfile(os.path.join(cost_map.litellm_dir(), "model_prices_and_context_window_backup.json"))
