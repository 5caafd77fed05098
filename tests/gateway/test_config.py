"""config.yaml loading: the default file, env expansion, litellm prices, and errors that name file and key."""
from __future__ import annotations

import copy
import dataclasses
import os
from decimal import Decimal

import pytest
import yaml

from gateway.config import (
    ConfigError,
    OpenAIBackendConfig,
    SageMakerBackendConfig,
    _expand,
    load_config,
    parse_config,
)
from gateway.config_document import UniqueKeyLoader

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "config.yaml")

BASE = {
    "backends": {
        "api": {"type": "openai"},
        "sm": {"type": "sagemaker", "endpoint_name": "ep", "region": "us-east-1", "instance_type": "ml.g5.xlarge",
               "hourly_price_usd": 1.408, "max_tokens_per_second": 300, "context_window": 8192},
    },
    "models": {
        "gpt-4o-mini": {"backends": [{"backend": "api"}, {"backend": "sm"}]},
        "text-embedding-3-small": {"kind": "embeddings", "backends": [{"backend": "api"}]},
    },
}


def base() -> dict:
    return copy.deepcopy(BASE)


def load_yaml(tmp_path, data, env=None):
    path = tmp_path / "gw.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return load_config(str(path), env=env or {}), str(path)


def config_error(tmp_path, data, env=None) -> tuple[str, str]:
    path = tmp_path / "gw.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env=env or {})
    return str(info.value), str(path)


# ---- the default config.yaml ---------------------------------------------------------------------

def test_default_config_loads_with_defaults_when_env_is_empty():
    cfg = load_config(DEFAULT_CONFIG, env={})
    api, sm = cfg.backends["openai"], cfg.backends["sagemaker"]
    assert isinstance(api, OpenAIBackendConfig) and isinstance(sm, SageMakerBackendConfig)
    assert api.base_url == "https://api.openai.com/v1"
    assert api.api_key_env == "OPENAI_API_KEY" and api.api_key == ""
    assert sm.endpoint_name == "gateway-selfhosted" and sm.region == "us-east-1"
    assert sm.hourly_price_usd == Decimal("1.408") and isinstance(sm.hourly_price_usd, Decimal)
    assert (sm.min_instances, sm.max_instances, sm.assumed_instances) == (0, 4, 0)
    assert sm.wire_format == "messages"
    assert cfg.state.redis_url is None
    assert cfg.auth.keys == frozenset() and cfg.auth.admin_keys == frozenset()
    assert cfg.routing.policy == "break_even" and cfg.routing.dry_run is True
    assert cfg.models["text-embedding-3-small"].kind == "embeddings"
    assert [r.backend for r in cfg.models["gpt-4o-mini"].routes] == ["openai", "sagemaker"]
    assert cfg.path == DEFAULT_CONFIG


def test_default_config_takes_values_from_env():
    env = {
        "OPENAI_BASE_URL": "http://127.0.0.1:9999/v1/",
        "OPENAI_API_KEY": "sk-test-123",
        "SAGEMAKER_ENDPOINT_NAME": "my-endpoint",
        "AWS_REGION": "eu-west-1",
        "REDIS_URL": "redis://127.0.0.1:6390/0",
        "GATEWAY_API_KEYS": "k1, k2 ,,k3",
        "GATEWAY_ADMIN_KEYS": "admin1",
    }
    cfg = load_config(DEFAULT_CONFIG, env=env)
    api, sm = cfg.backends["openai"], cfg.backends["sagemaker"]
    assert api.base_url == "http://127.0.0.1:9999/v1"  # trailing slash dropped
    assert api.api_key == "sk-test-123"
    assert "sk-test-123" not in repr(cfg)  # secrets stay out of reprs and logs
    assert sm.endpoint_name == "my-endpoint" and sm.region == "eu-west-1"
    assert cfg.state.redis_url == "redis://127.0.0.1:6390/0"
    assert cfg.auth.keys == frozenset({"k1", "k2", "k3"})
    assert cfg.auth.admin_keys == frozenset({"admin1"})
    assert "k1" not in repr(cfg.auth)


def test_default_config_uses_process_env_when_no_env_given(monkeypatch):
    monkeypatch.setenv("SAGEMAKER_ENDPOINT_NAME", "from-process-env")
    assert load_config(DEFAULT_CONFIG).backends["sagemaker"].endpoint_name == "from-process-env"


def test_litellm_prices_fill_gpt_4o_mini():
    cfg = load_config(DEFAULT_CONFIG, env={})
    prices = cfg.backends["openai"].prices["gpt-4o-mini"]
    assert prices.source == "litellm"
    assert (prices.input, prices.cached_input, prices.output) == (Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
    assert all(isinstance(p, Decimal) for p in (prices.input, prices.cached_input, prices.output))
    emb = cfg.backends["openai"].prices["text-embedding-3-small"]
    assert emb.input == Decimal("0.02") and emb.output == 0 and emb.cached_input is None


def test_prices_in_the_file_win_over_litellm(tmp_path):
    data = base()
    data["backends"]["api"]["prices"] = {"gpt-4o-mini": {"input": "0.2", "output": "0.8"}}
    cfg, _ = load_yaml(tmp_path, data)
    p = cfg.backends["api"].prices["gpt-4o-mini"]
    assert (p.input, p.output, p.cached_input, p.source) == (Decimal("0.2"), Decimal("0.8"), None, "config")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    # PyYAML keeps the last of two equal keys: a second params line pasted above the old one ran the
    # gateway on the old settings with nothing in the file to say so
    text = yaml.safe_dump(base()) + "routing:\n  policy: break_even\n  params: {restart_weight: 2}\n  params: {}\n"
    message, path = config_error(tmp_path, text)
    assert message.startswith(f"{path}: not valid YAML")
    assert "found 'params' a second time (first at line" in message
    # the same key in different mappings is no repeat ("type" in each backend, "backends" in each model)
    cfg, _ = load_yaml(tmp_path, yaml.safe_dump(base()) + "routing:\n  policy: break_even\n  params: {restart_weight: 2}\n")
    assert cfg.routing.params == {"restart_weight": 2}
    # nor is a key that overrides one merged from an anchor (the first version of this check could not
    # read a merge key at all)
    text = yaml.safe_dump(base()) + ("x-defaults: &defaults {policy: break_even, params: {restart_weight: 3}}\n"
                                     "routing:\n  <<: *defaults\n  params: {restart_weight: 2}\n")
    with pytest.raises(ConfigError, match="x-defaults"):  # an unknown top-level key, not a YAML error
        load_yaml(tmp_path, text)
    data = yaml.load(text, Loader=UniqueKeyLoader)
    assert data["routing"] == {"policy": "break_even", "params": {"restart_weight": 2}}


def test_config_objects_are_frozen():
    cfg = load_config(DEFAULT_CONFIG, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.backends["sagemaker"].max_instances = 10  # type: ignore[misc]


def test_sagemaker_defaults(tmp_path):
    data = base()
    data["backends"]["sm"]["assumed_instances"] = 3
    sm = load_yaml(tmp_path, data)[0].backends["sm"]
    assert sm.max_instances == 3  # defaults to the assumed count
    assert (sm.min_instances, sm.variant_name, sm.endpoint_url, sm.prompt_token_weight) == (0, "AllTraffic", None, 0.0)


def test_instance_count_is_refused_with_what_to_write_instead(tmp_path):
    data = base()
    data["backends"]["sm"]["instance_count"] = 1  # the old key: in service from the start, whatever AWS said
    message, path = config_error(tmp_path, data)
    assert message.startswith(f"{path}: backends.sm.instance_count: no longer used")
    assert "DescribeEndpoint" in message and "assumed_instances" in message


def test_default_config_takes_assumed_instances_from_the_environment():
    assert load_config(DEFAULT_CONFIG, env={}).backends["sagemaker"].assumed_instances == 0
    cfg = load_config(DEFAULT_CONFIG, env={"SAGEMAKER_ASSUMED_INSTANCES": "2"})
    assert cfg.backends["sagemaker"].assumed_instances == 2


def test_model_route_defaults_upstream_model_to_its_own_name(tmp_path):
    cfg, _ = load_yaml(tmp_path, base())
    assert cfg.models["gpt-4o-mini"].routes[0].upstream_model == "gpt-4o-mini"


# ---- ${VAR} expansion ------------------------------------------------------------------------

@pytest.mark.parametrize("value, env, expected", [
    ("${HOST:-127.0.0.1}", {}, "127.0.0.1"),
    ("${HOST:-127.0.0.1}", {"HOST": "10.0.0.1"}, "10.0.0.1"),
    ("${HOST:-127.0.0.1}", {"HOST": ""}, "127.0.0.1"),  # set but empty: the default, as in sh
    ("${HOST}", {}, ""),
    ("${HOST:-}", {}, ""),
    ("http://${HOST:-localhost}:${PORT:-8000}/v1", {"PORT": "9000"}, "http://localhost:9000/v1"),
    ("no refs $HOST here", {"HOST": "x"}, "no refs $HOST here"),
])
def test_expand(value, env, expected):
    assert _expand(value, env) == expected


def test_expand_reaches_nested_values_and_leaves_other_types():
    data = {"a": ["${X:-1}", {"b": "${X:-2}"}], "n": 5, "t": True}
    assert _expand(data, {"X": "v"}) == {"a": ["v", {"b": "v"}], "n": 5, "t": True}


def test_expanded_values_are_typed(tmp_path):
    data = base()
    data["backends"]["sm"]["max_instances"] = "${SM_MAX:-2}"
    assert load_yaml(tmp_path, data, env={"SM_MAX": "6"})[0].backends["sm"].max_instances == 6
    assert load_yaml(tmp_path, data, env={})[0].backends["sm"].max_instances == 2


def test_gateway_keys_from_a_named_env_var(tmp_path):
    data = base()
    data["auth"] = {"keys_env": "MY_KEYS"}
    cfg, _ = load_yaml(tmp_path, data, env={"MY_KEYS": " a,b , c,", "GATEWAY_API_KEYS": "ignored"})
    assert cfg.auth.keys == frozenset({"a", "b", "c"})
    assert cfg.auth.keys_env == "MY_KEYS"


# ---- errors name the file and the key -------------------------------------------------------------

def _without(data: dict, *path: str) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def _with(data: dict, value, *path: str) -> dict:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


@pytest.mark.parametrize("data, key, reason", [
    (_with(base(), 1, "colour"), "colour", "unknown key"),
    (_with(base(), 1, "backends", "api", "colour"), "backends.api.colour", "unknown key"),
    (_with(base(), 1, "backends", "sm", "colour"), "backends.sm.colour", "unknown key"),
    (_with(base(), 1, "routing", "colour"), "routing.colour", "unknown key"),
    (_with(base(), 1, "server", "colour"), "server.colour", "unknown key"),
    (_with(base(), {"input": 1, "output": 2, "colour": 3}, "backends", "api", "prices", "gpt-4o-mini"),
     "backends.api.prices.gpt-4o-mini.colour", "unknown key"),
    (_without(base(), "backends", "sm", "region"), "backends.sm.region", "is required"),
    (_without(base(), "backends", "sm", "endpoint_name"), "backends.sm.endpoint_name", "is required"),
    (_without(base(), "backends", "sm", "hourly_price_usd"), "backends.sm.hourly_price_usd", "is required"),
    (_without(base(), "backends", "api", "type"), "backends.api.type", "is required"),
    (_with(base(), "fast", "backends", "sm", "max_tokens_per_second"), "backends.sm.max_tokens_per_second",
     "expected float, got 'fast'"),
    (_with(base(), "lots", "backends", "sm", "max_instances"), "backends.sm.max_instances", "expected int"),
    (_with(base(), "one dollar", "backends", "sm", "hourly_price_usd"), "backends.sm.hourly_price_usd",
     "expected Decimal"),
    (_with(base(), -1, "backends", "sm", "hourly_price_usd"), "backends.sm.hourly_price_usd", "must be >= 0"),
    (_with(base(), "grpc", "backends", "sm", "wire_format"), "backends.sm.wire_format", "must be one of"),
    (_with(base(), "anthropic", "backends", "api", "type"), "backends.api.type", "must be one of"),
    (_with(base(), 5, "backends", "sm", "min_instances"), "backends.sm.min_instances", "above max_instances"),
    (_with(base(), [{"backend": "nope"}], "models", "gpt-4o-mini", "backends"),
     "models.gpt-4o-mini.backends[0].backend", "no backend named 'nope'"),
    (_with(base(), [], "models", "gpt-4o-mini", "backends"), "models.gpt-4o-mini.backends", "non-empty list"),
    (_with(base(), [{"backend": "api"}, {"backend": "sm"}], "models", "text-embedding-3-small", "backends"),
     "models.text-embedding-3-small.backends", "embeddings can only be served by openai backends"),
    (_with(base(), "cheapest_wins", "routing", "policy"), "routing.policy", "must be one of"),
    (_with(base(), [{"backend": "api", "model": "my-private-model"}], "models", "gpt-4o-mini", "backends"),
     "backends.api.prices.my-private-model", "required"),
    # found by an adversarial probe: a typo read as false switched real endpoint changes on
    (_with(base(), "ture", "routing", "dry_run"), "routing.dry_run", "expected bool, got 'ture'"),
    (_with(base(), float("inf"), "backends", "sm", "max_instances"), "backends.sm.max_instances",
     "expected int, got inf"),  # was an OverflowError traceback
    (_with(base(), 0.5, "backends", "sm", "context_window"), "backends.sm.context_window",
     "expected int, got 0.5"),  # was read as 0
    (_with(base(), True, "backends", "sm", "max_instances"), "backends.sm.max_instances", "expected int"),
    (_with(base(), [1], "backends", "sm", "region"), "backends.sm.region", "expected str, got [1]"),
    (_with(base(), "redis://[::1", "state", "redis_url"), "state.redis_url", "not a URL"),  # was a ValueError
    (_with(base(), "http://cache:6379", "state", "redis_url"), "state.redis_url", "redis://"),
    (_with(base(), 1e300, "backends", "sm", "hourly_price_usd"), "backends.sm.hourly_price_usd",
     "must be <= 1,000,000"),  # spends of hundreds of digits
    (_with(base(), 1e300, "backends", "sm", "prompt_token_weight"), "backends.sm.prompt_token_weight",
     "must be <= 100"),  # an OverflowError in the replay's bucket loads
    (_with(base(), 2500, "backends", "sm", "max_instances"), "backends.sm.max_instances",
     "must be <= 100"),  # the replay's optimum took 51 s on two requests
    (_with(_with(base(), 4, "backends", "sm", "max_instances"), 9, "backends", "sm", "assumed_instances"),
     "backends.sm.assumed_instances",
     "above max_instances"),
    (_with(base(), 99999, "server", "port"), "server.port", "must be <= 65,535"),
])
def test_errors_name_file_and_key(tmp_path, data, key, reason):
    message, path = config_error(tmp_path, data)
    assert message.startswith(f"{path}: ")
    assert f"{key}: " in message
    assert reason in message


@pytest.mark.parametrize("text", ["off", "false", "no", "0"])
def test_a_boolean_from_the_environment_reads_its_word(tmp_path, text):
    cfg, _ = load_yaml(tmp_path, _with(base(), "${DRY}", "routing", "dry_run"), env={"DRY": text})
    assert cfg.routing.dry_run is False
    cfg, _ = load_yaml(tmp_path, _with(base(), "${DRY}", "routing", "dry_run"), env={"DRY": "on"})
    assert cfg.routing.dry_run is True


@pytest.mark.parametrize("yaml_key, shown", [("1", "server.1"), ("yes", "server.True"), ("~", "server.None")])
def test_a_key_that_yaml_reads_as_no_string_is_named(tmp_path, yaml_key, shown):
    # the message builder itself failed on them (a TypeError joining the key path)
    text = yaml.safe_dump(base()) + f"server:\n  {yaml_key}: 2\n"
    message, path = config_error(tmp_path, text)
    assert message.startswith(f"{path}: {shown}: a key must be a string")


@pytest.mark.parametrize("depth", [500, 3000])
def test_a_document_nested_too_deeply_is_a_config_error(tmp_path, depth):
    # PyYAML's parser (and the walks over what it builds) recurse per level: a RecursionError traceback
    text = "a: " + "[" * depth + "]" * depth + "\n" + yaml.safe_dump(base())
    message, path = config_error(tmp_path, text)
    assert message.startswith(f"{path}: ")


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    # 4 KB of YAML standing for 10^8 values: expanding it held check-config for minutes
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "a" if i == 0 else "bcdefgh"[i - 1]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(base())
    message, path = config_error(tmp_path, text)
    assert message.startswith(f"{path}: ") and "expands to more than 100,000 values" in message


def test_two_backends_on_one_endpoint_are_refused(tmp_path):
    # each bills the endpoint's instance time: the same endpoint was charged twice
    data = base()
    data["backends"]["sm2"] = dict(data["backends"]["sm"])
    message, path = config_error(tmp_path, data)
    assert message.startswith(f"{path}: backends.sm2: the same endpoint as backends.sm (ep in us-east-1)")
    data["backends"]["sm2"]["inference_component_name"] = "other-model"  # another component of it: its own bill
    load_yaml(tmp_path, data)


def test_backend_name_with_slash_is_rejected(tmp_path):
    data = base()
    data["backends"]["a/b"] = data["backends"].pop("api")
    message, path = config_error(tmp_path, data)
    assert message.startswith(f"{path}: backends.a/b: ") and "'/'" in message


def test_literal_api_key_is_rejected_without_echoing_it(tmp_path):
    data = base()
    data["backends"]["api"]["api_key"] = "sk-live-do-not-print"
    message, path = config_error(tmp_path, data)
    assert message.startswith(f"{path}: backends.api.api_key: ")
    assert "environment" in message and "api_key_env" in message
    assert "sk-live-do-not-print" not in message


def test_no_backends_or_no_models(tmp_path):
    message, path = config_error(tmp_path, {"backends": {}, "models": {}})
    assert message == f"{path}: backends: at least one backend is required"
    data = base()
    data["models"] = {}
    message, path = config_error(tmp_path, data)
    assert message == f"{path}: models: at least one model is required"
    message, path = config_error(tmp_path, "")  # an empty file
    assert message == f"{path}: backends: at least one backend is required"


@pytest.mark.parametrize("key, value", [
    ("hourly_price_usd", float("nan")), ("hourly_price_usd", float("inf")), ("max_tokens_per_second", float("nan")),
    ("startup_s", float("inf")),
])
def test_non_finite_numbers_are_rejected(tmp_path, key, value):
    message, path = config_error(tmp_path, _with(base(), value, "backends", "sm", key))  # YAML .nan / .inf
    assert message.startswith(f"{path}: backends.sm.{key}: expected ")


def test_unreadable_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: cannot read")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert str(info.value).startswith(f"{tmp_path}: cannot read")


def test_invalid_yaml(tmp_path):
    message, path = config_error(tmp_path, "backends: {api: [unclosed\n")
    assert message.startswith(f"{path}: not valid YAML")


def test_a_mapping_that_is_not_one(tmp_path):
    data = base()
    data["backends"]["sm"] = ["not", "a", "mapping"]
    message, path = config_error(tmp_path, data)
    assert message.startswith(f"{path}: backends.sm: expected a mapping")


def test_parse_config_names_its_source():
    with pytest.raises(ConfigError) as info:
        parse_config(_with(base(), 1, "colour"), path="inline.yaml", env={})
    assert str(info.value) == "inline.yaml: colour: unknown key"


def test_a_policy_parameter_it_does_not_take_is_named_at_load():
    import yaml
    from gateway.config import ConfigError, parse_config

    data = yaml.safe_load(open("config.yaml"))
    data["routing"]["params"] = {"hysteresis": 0.1}  # break_even's old knob, gone with ski rental
    with pytest.raises(ConfigError, match=r"routing\.params: break_even takes no parameter hysteresis"):
        parse_config(data, "config.yaml", {})
    data["routing"]["params"] = {"restart_weight": -1}
    with pytest.raises(ConfigError, match=r"routing\.params: .*restart_weight"):
        parse_config(data, "config.yaml", {})
