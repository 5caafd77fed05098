"""Load ``config.yaml`` once into frozen, typed objects; fail with the key and the file.

Secrets never live in the file: a backend names the environment variable that
holds its key (``api_key_env``), and ``${VAR}`` / ``${VAR:-default}`` in any string
value is replaced from the environment at load time.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping
from urllib.parse import urlsplit

from .config_document import DocumentError, check_tree, read_document
from .spend import cost_map


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class PriceSpec:
    """USD per 1M tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    source: str = "config"  # or "litellm"


@dataclass(frozen=True)
class OpenAIBackendConfig:
    name: str
    base_url: str
    api_key_env: str
    api_key: str = field(default="", repr=False)
    prices: Mapping[str, PriceSpec] = field(default_factory=dict)  # by upstream model
    timeout_s: float = 600.0  # longest wait for the upstream's next byte (first one included)
    max_connections: int = 1000
    type: str = "openai"


@dataclass(frozen=True)
class SageMakerBackendConfig:
    name: str
    endpoint_name: str
    region: str
    instance_type: str
    hourly_price_usd: Decimal  # per instance
    max_tokens_per_second: float  # per instance, capacity tokens (see routing_policies.EndpointSpec)
    context_window: int
    prompt_token_weight: float = 0.0
    # Instances taken as in service (routed to and charged) while no DescribeEndpoint has
    # answered: for a deployment that may invoke its endpoint but not describe it. 0 = none.
    assumed_instances: int = 0
    min_instances: int = 0
    max_instances: int = 1
    startup_s: float = 300.0
    # Seconds from "scale up" to serving when no instance runs (new instance, image pull, weights
    # load): longer than adding one to a running endpoint. None: the same as startup_s.
    startup_from_zero_s: float | None = None
    # Set: the endpoint hosts this inference component (managed instance scaling), the only kind of
    # real-time endpoint that can run 0 instances. Capacity is then applied as its copy count.
    inference_component_name: str | None = None
    copies_per_instance: int = 1  # copies of the component one instance holds (its compute requirements)
    # Seconds of full throughput the endpoint may hold as backlog before requests go to the API
    # (routing_policies.admission): the latency a request may see beyond its own decode time.
    max_queue_s: float = 30.0
    wire_format: str = "messages"  # or "tgi"
    variant_name: str = "AllTraffic"
    endpoint_url: str | None = None  # else AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME / AWS default
    poll_interval_s: float = 15.0  # DescribeEndpoint cadence (control plane); 0 = never poll
    actuation_cooldown_s: float = 300.0  # seconds between two capacity changes
    timeout_s: float = 600.0
    max_connections: int = 1000
    type: str = "sagemaker"


BackendConfig = OpenAIBackendConfig | SageMakerBackendConfig


@dataclass(frozen=True)
class ModelRoute:
    backend: str
    upstream_model: str


@dataclass(frozen=True)
class ModelConfig:
    name: str
    routes: tuple[ModelRoute, ...]
    kind: str = "chat"  # or "embeddings"
    encoding: str | None = None  # tiktoken encoding override


@dataclass(frozen=True)
class RoutingConfig:
    policy: str = "break_even"
    params: Mapping[str, Any] = field(default_factory=dict)
    capacity_interval_s: float = 5.0
    allow_pinning: bool = True
    dry_run: bool = True  # never change the endpoint, only recommend


@dataclass(frozen=True)
class AuthConfig:
    keys: frozenset[str] = field(default=frozenset(), repr=False)
    admin_keys: frozenset[str] = field(default=frozenset(), repr=False)
    keys_env: str = "GATEWAY_API_KEYS"
    admin_keys_env: str = "GATEWAY_ADMIN_KEYS"
    # Set: /metrics answers only these keys (or an admin key). Empty: /metrics is open.
    metrics_keys: frozenset[str] = field(default=frozenset(), repr=False)
    metrics_keys_env: str = "GATEWAY_METRICS_KEYS"
    # Without client keys the gateway serves only on a loopback address unless this is true.
    allow_keyless_network: bool = False


@dataclass(frozen=True)
class KeysConfig:
    """Virtual keys (gateway.keys): the server secret their hashes are keyed with, and limits."""

    secret_env: str = "GATEWAY_KEY_SECRET"
    secret: str = field(default="", repr=False)
    default_max_tokens: int = 4096  # completion tokens reserved when a request sends no max_tokens
    on_redis_down: str = "allow"  # allow: this replica's view decides; deny: 503 until Redis is back
    tags: frozenset[str] = frozenset()  # values of x-gateway-tags kept as a metric label


@dataclass(frozen=True)
class StateConfig:
    redis_url: str | None = None
    key_prefix: str = "gw"
    flush_interval_s: float = 1.0
    # redis_url names one node of a Redis Cluster; the client discovers the rest
    redis_cluster: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    access_log: bool = True
    # A client that has not sent a request's headers (body) this many seconds after it began
    # gets a 408 and its connection closed: slow senders cannot hold connections open.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 2048  # open connections (and requests in flight) per worker; beyond: 503
    # Bodies over 1 MiB held at once per worker (each costs ~3x its size while handled, up to ~14x for a
    # million tiny messages: docs/reliability.md); beyond: 503
    max_large_bodies: int = 8
    shutdown_grace_s: float = 30.0  # SIGTERM: in-flight requests and streams get this long to finish


@dataclass(frozen=True)
class MetricsConfig:
    """Where Prometheus scrapes: a port of its own (``listen``, "host:port"), the main one, or both."""

    listen: str = ""  # empty: no port of its own
    on_main_port: bool = True  # false: /metrics only on ``listen`` (the main port answers 404)

    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class GatewayConfig:
    backends: Mapping[str, BackendConfig]
    models: Mapping[str, ModelConfig]
    routing: RoutingConfig = RoutingConfig()
    auth: AuthConfig = AuthConfig()
    state: StateConfig = StateConfig()
    server: ServerConfig = ServerConfig()
    path: str = "<memory>"
    keys: KeysConfig = KeysConfig()
    metrics: MetricsConfig = MetricsConfig()


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    return value


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class _Reader:
    """Typed access to one mapping of the file, naming the full key on error."""

    def __init__(self, data: Any, where: str, file: str):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: {where}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.file = data, where, file
        self.used: set[str] = set()

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.file}: {'.'.join(p for p in (self.where, key) if p)}: {reason}")

    def get(self, key: str, kind: type, default: Any = ..., choices: tuple | None = None, minimum=None,
            maximum=None):
        self.used.add(key)
        raw = self.data.get(key)
        if raw is None or raw == "":
            if default is ...:
                raise self.error(key, "is required")
            return default
        try:
            if kind is bool:
                # a typo must not read as false: 'dry_run: ture' switched real endpoint changes on
                value = raw if isinstance(raw, bool) else _BOOL_WORDS[str(raw).strip().lower()]
            elif kind is Decimal:
                value = Decimal(str(raw))
            elif kind is int:
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError("not a whole number")  # int(0.5) is 0, int(True) is 1
                value = int(raw)
            elif kind is float:
                if isinstance(raw, bool):
                    raise ValueError("a boolean")
                value = float(raw)
            else:
                if isinstance(raw, (dict, list)):
                    raise ValueError("a mapping or list")  # str() of it would pass as a name or a URL
                value = kind(raw)
            if kind in (float, Decimal) and not math.isfinite(value):
                raise ValueError("not finite")  # NaN would slip past every minimum check
        except (TypeError, ValueError, OverflowError, KeyError, InvalidOperation):
            raise self.error(key, f"expected {kind.__name__}, got {raw!r}") from None
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum:,}, got {value!r}")
        return value

    def sub(self, key: str) -> "_Reader":
        self.used.add(key)
        return _Reader(self.data.get(key), f"{self.where}.{key}" if self.where else key, self.file)

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


# USD per 1M tokens or per instance-hour: far above any real price, and below where a spend in
# floats stops being a number (1e300 printed hundreds of digits; 1e400 is a finite Decimal, an
# infinite float)
MAX_USD = 1_000_000
# one endpoint's instance bound: the replay's optimum is quadratic in it (2,500 took 51 s on two requests)
MAX_INSTANCES = 100


def _prices(r: _Reader) -> PriceSpec:
    spec = PriceSpec(
        input=r.get("input", Decimal, minimum=0, maximum=MAX_USD),
        output=r.get("output", Decimal, minimum=0, maximum=MAX_USD),
        cached_input=r.get("cached_input", Decimal, None, minimum=0, maximum=MAX_USD),
    )
    r.reject_unknown()
    return spec


def _openai_backend(name: str, r: _Reader, env: Mapping[str, str]) -> OpenAIBackendConfig:
    if "api_key" in r.data:
        raise r.error("api_key", "secrets must come from the environment: name the variable with api_key_env")
    key_env = r.get("api_key_env", str, "OPENAI_API_KEY")
    pr = r.sub("prices")
    prices = {model: _prices(pr.sub(model)) for model in list(pr.data)}
    cfg = OpenAIBackendConfig(
        name=name,
        base_url=r.get("base_url", str, "https://api.openai.com/v1").rstrip("/"),
        api_key_env=key_env,
        api_key=env.get(key_env, ""),
        prices=prices,
        timeout_s=r.get("timeout_s", float, 600.0, minimum=0.1),
        max_connections=r.get("max_connections", int, 1000, minimum=1),
    )
    r.get("type", str)
    r.reject_unknown()
    return cfg


def _sagemaker_backend(name: str, r: _Reader) -> SageMakerBackendConfig:
    if "instance_count" in r.data:
        # Its old meaning (in service from the start, whatever AWS says) charged and routed to
        # endpoints that did not exist; the count now comes from DescribeEndpoint.
        raise r.error("instance_count", "no longer used: the gateway reads the instance count with "
                      "DescribeEndpoint; remove it, or, if this deployment may invoke the endpoint but "
                      "not describe it, set assumed_instances to the instances that run (and are paid for)")
    count = r.get("assumed_instances", int, 0, minimum=0)
    cfg = SageMakerBackendConfig(
        name=name,
        endpoint_name=r.get("endpoint_name", str),
        region=r.get("region", str),
        instance_type=r.get("instance_type", str),
        hourly_price_usd=r.get("hourly_price_usd", Decimal, minimum=0, maximum=MAX_USD),
        max_tokens_per_second=r.get("max_tokens_per_second", float, minimum=0.001),
        context_window=r.get("context_window", int, minimum=1),
        prompt_token_weight=r.get("prompt_token_weight", float, 0.0, minimum=0, maximum=100),
        assumed_instances=count,
        min_instances=r.get("min_instances", int, 0, minimum=0),
        max_instances=r.get("max_instances", int, max(1, count), minimum=1, maximum=MAX_INSTANCES),
        startup_s=r.get("startup_s", float, 300.0, minimum=0),
        startup_from_zero_s=r.get("startup_from_zero_s", float, None, minimum=0),
        inference_component_name=r.get("inference_component_name", str, None) or None,
        copies_per_instance=r.get("copies_per_instance", int, 1, minimum=1),
        max_queue_s=r.get("max_queue_s", float, 30.0, minimum=0.1),
        wire_format=r.get("wire_format", str, "messages", choices=("messages", "tgi")),
        variant_name=r.get("variant_name", str, "AllTraffic"),
        endpoint_url=r.get("endpoint_url", str, None),
        poll_interval_s=r.get("poll_interval_s", float, 15.0, minimum=0),
        actuation_cooldown_s=r.get("actuation_cooldown_s", float, 300.0, minimum=0),
        timeout_s=r.get("timeout_s", float, 600.0, minimum=0.1),
        max_connections=r.get("max_connections", int, 1000, minimum=1),
    )
    if cfg.min_instances > cfg.max_instances:
        raise r.error("min_instances", f"is above max_instances ({cfg.max_instances})")
    if cfg.assumed_instances > cfg.max_instances:
        raise r.error("assumed_instances", f"is above max_instances ({cfg.max_instances})")
    r.get("type", str)
    r.reject_unknown()
    return cfg


def _backends(r: _Reader, env: Mapping[str, str]) -> dict[str, BackendConfig]:
    out: dict[str, BackendConfig] = {}
    for name in list(r.data):
        if "/" in str(name):
            raise r.error(str(name), "a backend name cannot contain '/' (it is used for pinning)")
        br = r.sub(name)
        kind = br.get("type", str, choices=("openai", "sagemaker"))
        out[name] = _openai_backend(name, br, env) if kind == "openai" else _sagemaker_backend(name, br)
    if not out:
        raise r.error("", "at least one backend is required")
    seen: dict[tuple, str] = {}
    for name, b in out.items():
        if b.type != "sagemaker":
            continue
        # each backend bills its endpoint's instance time: two naming one endpoint charged it twice
        where = (b.endpoint_url, b.region, b.endpoint_name, b.inference_component_name)
        if where in seen:
            raise r.error(name, f"the same endpoint as backends.{seen[where]} ({b.endpoint_name} in {b.region}"
                          + (f", inference component {b.inference_component_name}" if b.inference_component_name
                             else "") + "): its instance time would be charged twice; route both models to one "
                          "backend")
        seen[where] = name
    return out


def _models(r: _Reader, backends: Mapping[str, BackendConfig]) -> dict[str, ModelConfig]:
    out = {}
    for name in list(r.data):
        mr = r.sub(name)
        raw_routes = mr.data.get("backends")
        mr.used.add("backends")
        if not isinstance(raw_routes, list) or not raw_routes:
            raise mr.error("backends", "a non-empty list of {backend, model} is required")
        routes = []
        for i, item in enumerate(raw_routes):
            rr = _Reader(item, f"{mr.where}.backends[{i}]", r.file)
            backend = rr.get("backend", str)
            if backend not in backends:
                raise rr.error("backend", f"no backend named {backend!r} (have: {', '.join(backends)})")
            routes.append(ModelRoute(backend, rr.get("model", str, name)))
            rr.reject_unknown()
        kind = mr.get("kind", str, "chat", choices=("chat", "embeddings"))
        if kind == "embeddings" and any(backends[x.backend].type != "openai" for x in routes):
            raise mr.error("backends", "embeddings can only be served by openai backends")
        out[name] = ModelConfig(name, tuple(routes), kind, mr.get("encoding", str, None))
        mr.reject_unknown()
    if not out:
        raise r.error("", "at least one model is required")
    return out


def _fill_prices(backends: dict, models: Mapping[str, ModelConfig], file: str) -> dict:
    """Every (openai backend, upstream model) pair gets a price: the file's, else litellm's."""
    for model in models.values():
        for route in model.routes:
            b = backends[route.backend]
            if b.type != "openai" or route.upstream_model in b.prices:
                continue
            found = cost_map.lookup_prices(route.upstream_model)
            if found is None:
                raise ConfigError(
                    f"{file}: backends.{b.name}.prices.{route.upstream_model}: required "
                    "(litellm's cost map has no price for this model)"
                )
            spec = PriceSpec(found["input"], found["output"], found["cached_input"], source="litellm")
            backends[b.name] = replace(b, prices={**b.prices, route.upstream_model: spec})
    return backends


def _keys(env: Mapping[str, str], var: str) -> frozenset[str]:
    return frozenset(k.strip() for k in env.get(var, "").split(",") if k.strip())


def _check_policy(rr: "_Reader", routing: RoutingConfig) -> None:
    """Build the policy once at load, so that a parameter it does not take (or out of range) is named here."""
    from routing_policies import build_policy
    from routing_policies.base import policy_parameters

    unknown = sorted(set(routing.params) - set(policy_parameters(routing.policy)))
    if unknown:
        known = ", ".join(policy_parameters(routing.policy)) or "none"
        raise rr.error("params", f"{routing.policy} takes no parameter {', '.join(unknown)} (it takes: {known})")
    try:
        build_policy(routing.policy, routing.params)
    except (TypeError, ValueError) as e:
        raise rr.error("params", str(e)) from None


def parse_config(data: Any, path: str = "<memory>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    env = os.environ if env is None else env
    try:
        check_tree(data, path)
    except DocumentError as e:
        raise ConfigError(str(e)) from None
    root = _Reader(_expand(data, env), "", path)
    backends = _backends(root.sub("backends"), env)
    models = _models(root.sub("models"), backends)
    backends = _fill_prices(dict(backends), models, path)

    rr = root.sub("routing")
    from routing_policies import policy_names

    routing = RoutingConfig(
        policy=rr.get("policy", str, "break_even", choices=policy_names()),
        params=dict(rr.sub("params").data),
        capacity_interval_s=rr.get("capacity_interval_s", float, 5.0, minimum=0.1),
        allow_pinning=rr.get("allow_pinning", bool, True),
        dry_run=rr.get("dry_run", bool, True),
    )
    rr.reject_unknown()
    _check_policy(rr, routing)

    ar = root.sub("auth")
    keys_env = ar.get("keys_env", str, "GATEWAY_API_KEYS")
    admin_env = ar.get("admin_keys_env", str, "GATEWAY_ADMIN_KEYS")
    metrics_env = ar.get("metrics_keys_env", str, "GATEWAY_METRICS_KEYS")
    auth = AuthConfig(_keys(env, keys_env), _keys(env, admin_env), keys_env, admin_env,
                      _keys(env, metrics_env), metrics_env, ar.get("allow_keyless_network", bool, False))
    ar.reject_unknown()

    sr = root.sub("state")
    state = StateConfig(
        redis_url=sr.get("redis_url", str, None),
        key_prefix=sr.get("key_prefix", str, "gw"),
        flush_interval_s=sr.get("flush_interval_s", float, 1.0, minimum=0.05),
        redis_cluster=sr.get("redis_cluster", bool, False),
    )
    if state.redis_cluster and not state.redis_url:
        raise sr.error("redis_cluster", "needs state.redis_url (one node of the cluster)")
    if state.redis_url:
        try:
            url = urlsplit(state.redis_url)
            url.port  # noqa: B018  (parses the port: ValueError if it is no number)
        except ValueError as e:  # the message names the part, never the URL (it may hold a password)
            raise sr.error("redis_url", f"not a URL: {e}") from None
        if url.scheme not in ("redis", "rediss", "unix"):
            raise sr.error("redis_url", f"expected a redis://, rediss:// or unix:// URL, got scheme {url.scheme!r}")
        if state.redis_cluster and url.path.strip("/") not in ("", "0"):
            raise sr.error("redis_url", "a Redis Cluster has only database 0 (end the URL in /0 or nothing)")
    sr.reject_unknown()

    vr = root.sub("server")
    server = ServerConfig(
        host=vr.get("host", str, "127.0.0.1"),
        port=vr.get("port", int, 8080, minimum=0, maximum=65535),
        workers=vr.get("workers", int, 1, minimum=1),
        access_log=vr.get("access_log", bool, True),
        header_timeout_s=vr.get("header_timeout_s", float, 10.0, minimum=0.1),
        body_timeout_s=vr.get("body_timeout_s", float, 60.0, minimum=0.1),
        max_connections=vr.get("max_connections", int, 2048, minimum=1),
        max_large_bodies=vr.get("max_large_bodies", int, 8, minimum=1),
        shutdown_grace_s=vr.get("shutdown_grace_s", float, 30.0, minimum=0),
    )
    vr.reject_unknown()
    keys = _keys_section(root.sub("keys"), env)
    metrics = _metrics_section(root.sub("metrics"))
    root.reject_unknown()
    return GatewayConfig(backends, models, routing, auth, state, server, path, keys, metrics)


def _metrics_section(mr: "_Reader") -> MetricsConfig:
    listen = mr.get("listen", str, "") or ""
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise mr.error("listen", f"expected host:port (e.g. 127.0.0.1:9464 or 0.0.0.0:9464), got {listen!r}")
    cfg = MetricsConfig(listen, mr.get("on_main_port", bool, True))
    if not cfg.on_main_port and not listen:
        raise mr.error("on_main_port", "false needs metrics.listen: /metrics would be served nowhere")
    mr.reject_unknown()
    return cfg


def _keys_section(kr: "_Reader", env: Mapping[str, str]) -> KeysConfig:
    if "secret" in kr.data:
        raise kr.error("secret", "secrets must come from the environment: name the variable with secret_env")
    secret_env = kr.get("secret_env", str, "GATEWAY_KEY_SECRET")
    tags = kr.data.get("tags") or []
    kr.used.add("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise kr.error("tags", "expected a list of tag names")
    cfg = KeysConfig(secret_env, env.get(secret_env, ""),
                     kr.get("default_max_tokens", int, 4096, minimum=1),
                     kr.get("on_redis_down", str, "allow", choices=("allow", "deny")), frozenset(tags))
    kr.reject_unknown()
    return cfg


def load_config(path: str, env: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        return _load(path, env)
    finally:
        cost_map.forget()  # ~5 MB of prices for 4,800 models; the few in use are copied into the config


def _load(path: str, env: Mapping[str, str] | None) -> GatewayConfig:
    try:
        data = read_document(path)
    except DocumentError as e:
        raise ConfigError(str(e)) from None
    try:
        return parse_config(data, path, env)
    except RecursionError:  # (a depth the parser took, but not the walks over it)
        raise ConfigError(f"{path}: nested too deeply to read") from None
