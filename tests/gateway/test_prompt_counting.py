"""Long prompts: counted exactly when the count matters, priced by the upstream's usage otherwise."""
from __future__ import annotations

from gateway_harness import RunningGateway, build_config, standin_config
from openai import OpenAI

from gateway.tokens import TokenCounter

LONG = "gateway tokens " * 2000  # ~30 kB, ~4,000 tokens


def _gateway(openai_standin, sagemaker_standin, context_window=8192):
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "always_selfhosted"})
    data["backends"]["sagemaker"]["context_window"] = context_window
    return RunningGateway(build_config(data, openai=openai_standin))


def test_long_prompt_that_surely_fits_is_sent_and_priced_by_usage(openai_standin, sagemaker_standin):
    sagemaker_standin.script(prompt_tokens=4321, completion_tokens=5)
    with _gateway(openai_standin, sagemaker_standin, context_window=100_000) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": LONG}])
        assert raw.headers["x-gateway-route-reason"] == "endpoint_in_service"
        assert raw.headers["x-gateway-prompt-tokens"] == "4321"  # the upstream's usage
        entry = gw.entries()[-1]
        assert entry["usage_source"] == "upstream" and entry["prompt_tokens"] == 4321


def test_long_prompt_without_upstream_usage_is_counted_after_all(openai_standin, sagemaker_standin):
    sagemaker_standin.script(usage=False)
    messages = [{"role": "user", "content": LONG}]
    with _gateway(openai_standin, sagemaker_standin, context_window=100_000) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        expected = TokenCounter("o200k_base").chat({"messages": messages})
        assert raw.headers["x-gateway-prompt-tokens"] == str(expected)
        assert gw.entries()[-1]["usage_source"] == "counted"


def test_prompt_near_the_context_window_is_counted_and_sent_where_it_fits(openai_standin, sagemaker_standin):
    messages = [{"role": "user", "content": LONG}]
    exact = TokenCounter("o200k_base").chat({"messages": messages})
    # the byte length (~30k) is over the window, the exact count is under it: the endpoint takes it
    with _gateway(openai_standin, sagemaker_standin, context_window=exact + 100) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, max_tokens=50)
        assert r.headers["x-gateway-backend"] == "sagemaker"
        r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, max_tokens=200)
        assert (r.headers["x-gateway-backend"], r.headers["x-gateway-route-reason"]) == ("openai", "context_too_long")


def test_long_streamed_prompt_is_counted_beside_the_upstream_call(openai_standin, sagemaker_standin):
    messages = [{"role": "user", "content": LONG}]
    sagemaker_standin.script(text="ok", delay=0.05)
    with _gateway(openai_standin, sagemaker_standin, context_window=100_000) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=messages, stream=True) as raw:
            headers = raw.headers
            assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "ok"
        assert headers["x-gateway-prompt-tokens"] == str(TokenCounter("o200k_base").chat({"messages": messages}))


def test_long_prompt_at_zero_instances_goes_to_the_api_uncounted(openai_standin, sagemaker_standin):
    """No endpoint in service: the count could not change the backend, so it is not made (it cost
    3x the forwarding throughput of unique long prompts); the reason says what is known."""
    messages = [{"role": "user", "content": LONG}]
    exact = TokenCounter("o200k_base").chat({"messages": messages})
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "always_selfhosted"})
    data["backends"]["sagemaker"].update(context_window=exact - 100, assumed_instances=0)
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        # counted, the prompt would be context_too_long: the label proves no count was made
        assert (r.headers["x-gateway-backend"], r.headers["x-gateway-route-reason"]) == (
            "openai", "endpoint_not_in_service")
        assert gw.entries()[-1]["prompt_tokens"] == r.parse().usage.prompt_tokens  # priced by usage


def test_count_stops_past_the_largest_window_not_the_smallest(openai_standin, sagemaker_standin):
    """Two endpoints in service, 8k and (prompt - 100) tokens: a count stopped past the small one's
    room would be taken for the prompt's length and send it to the large one, where it does not fit."""
    messages = [{"role": "user", "content": LONG}]
    exact = TokenCounter("o200k_base").chat({"messages": messages})
    sagemaker_standin.endpoints.add("standin-endpoint-big")  # a second endpoint: two backends may not share one
    for big_window, backend in ((exact - 100, "openai"), (exact + 100, "sagemaker-big")):
        data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "always_selfhosted"})
        data["backends"]["sagemaker"]["context_window"] = 1000
        data["backends"]["sagemaker-big"] = {**data["backends"]["sagemaker"], "context_window": big_window,
                                             "endpoint_name": "standin-endpoint-big"}
        data["models"]["gpt-4o-mini"]["backends"] = [
            {"backend": "sagemaker", "model": "gpt-4o-mini"}, {"backend": "sagemaker-big", "model": "gpt-4o-mini"},
            {"backend": "openai", "model": "gpt-4o-mini"}]
        with RunningGateway(build_config(data, openai=openai_standin)) as gw:
            client = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            r = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
            assert r.headers["x-gateway-backend"] == backend, big_window


def test_only_real_windows_of_backends_serving_now_bound_the_count(openai_standin, sagemaker_standin):
    """The API here has no context window (it takes any length): it must not make the count run
    to the end of a huge body; an endpoint out of service bounds nothing."""
    data = standin_config(openai_standin, sagemaker_standin, routing={"policy": "always_selfhosted"})
    data["backends"]["sagemaker"]["context_window"] = 8192
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        model = gw.app.proxy.config.models["gpt-4o-mini"]
        assert gw.app.proxy._windows(model, None) == (8192, 8192)
    data["backends"]["sagemaker"]["assumed_instances"] = 0
    with RunningGateway(build_config(data, openai=openai_standin)) as gw:
        model = gw.app.proxy.config.models["gpt-4o-mini"]
        assert gw.app.proxy._windows(model, None) == (float("inf"), float("inf"))
