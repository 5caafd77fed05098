"""Config → the policy's numeric inputs; shared by live routing and replay."""
from __future__ import annotations

from decimal import Decimal

from routing_policies import EndpointSpec, TokenPrices

_PER_MTOK = Decimal(1_000_000)


def token_prices(spec) -> TokenPrices:
    """``config.PriceSpec`` (USD per 1M tokens) → USD per token."""
    return TokenPrices(
        input=float(spec.input / _PER_MTOK),
        output=float(spec.output / _PER_MTOK),
        cached_input=None if spec.cached_input is None else float(spec.cached_input / _PER_MTOK),
    )


def endpoint_spec(cfg) -> EndpointSpec:
    """``config.SageMakerBackendConfig`` → the endpoint's economics."""
    return EndpointSpec(
        hourly_price_usd=float(cfg.hourly_price_usd),
        max_tokens_per_second=cfg.max_tokens_per_second,
        prompt_token_weight=cfg.prompt_token_weight,
        min_instances=cfg.min_instances,
        max_instances=cfg.max_instances,
        startup_s=cfg.startup_s,
        startup_from_zero_s=cfg.startup_from_zero_s,
        context_window=cfg.context_window,
        queue_s=cfg.max_queue_s,
    )


def models_served_by(config, backend: str) -> list:
    return [m for m in config.models.values() if any(r.backend == backend for r in m.routes)]


def reference_price_spec(config, model):
    """The ``PriceSpec`` of the model's first API route: what the endpoint competes against."""
    for route in model.routes:
        b = config.backends[route.backend]
        if b.type == "openai":
            return b.prices[route.upstream_model]
    return None


def reference_api_prices(config, model) -> TokenPrices | None:
    spec = reference_price_spec(config, model)
    return None if spec is None else token_prices(spec)
