"""Fixtures that run the real gateway in-process against the stand-in upstreams."""
from __future__ import annotations

import pytest
from gateway_harness import RunningGateway, build_config, standin_config
from openai import OpenAI


@pytest.fixture
def gateway(openai_standin, sagemaker_standin):
    """Gateway over both stand-ins, no gateway keys, first_healthy routing."""
    cfg = build_config(standin_config(openai_standin, sagemaker_standin), openai=openai_standin)
    with RunningGateway(cfg) as gw:
        yield gw


@pytest.fixture
def client(gateway):
    return OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
