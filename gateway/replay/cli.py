"""``gateway replay`` and ``gateway make-trace``: argument parsing and output only.

The console script (``gateway/cli.py``) dispatches ``gateway replay ...`` to
``replay_main(argv)`` and ``gateway make-trace ...`` to ``make_trace_main(argv)``;
until then: ``python -m gateway.replay.cli replay --trace FILE``.

Examples::

    gateway replay                                  # the bundled Azure conversation trace, ./config.yaml
    gateway replay --trace azure-code --api-prices 2.50,10.00
    gateway make-trace --hourly servegen_hourly.csv --shape-model m-large \\
        --tokens-from normalized/azure2023_conv.csv.gz --days 14 --peak-per-hour 9000 \\
        --seed 1 --out conv-14d.csv.gz
    gateway replay --trace conv-14d.csv.gz --config config.yaml
    gateway replay --trace conv-14d.csv.gz --policy break_even --policy always_api --json
    gateway replay --trace conv-14d.csv.gz --sweep restart_weight=0.5,1,2 --sweep min_dwell_s=300,900
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import sys
import time
from decimal import Decimal, InvalidOperation

import yaml

from routing_policies import TokenPrices, build_policy, policy_names
from routing_policies.base import is_finite_number, policy_parameters

from ..config import MAX_USD, PriceSpec
from ..routing.inputs import token_prices
from . import bundled
from .optimum import floor_with
from .report import TextProgress, render_json, render_text, summarize
from .runs import run_all
from .simulator import ReplaySetup, default_horizon, setup_from_config
from .synth import MAX_SHAPE_HOURS, read_hourly, synthesize, synthesize_from_arrivals
from .trace import MAX_ARRIVAL_S, TraceError, read_trace, write_trace


# the policy and the baselines an operator would weigh it against; always_selfhosted is fixed_<max>
# and first_healthy ignores the economics: both on request (--policy)
DEFAULT_POLICIES = ("break_even", "always_api", "fixed")


def _value(text: str):
    """``0.15`` → float, ``900`` → int, ``true`` → bool, ``1e308`` or ``nan`` → float, anything else a string.

    YAML reads ``1e308`` (no dot) as a string; a policy then named its parameter only in a Python
    comparison error. As floats, the policy's own range check names it.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value if isinstance(value, (int, float, bool)) else text


def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _accepts(name: str, key: str) -> bool:
    return key in policy_parameters(name)


def _params_for(name: str, cfg, overrides: dict) -> dict:
    """Config's ``routing.params`` for the configured policy, then ``--param`` where the policy takes it."""
    params = dict(cfg.routing.params) if name == cfg.routing.policy else {}
    params.update({k: v for k, v in overrides.items() if _accepts(name, k)})
    return params


def _check_overrides(policies: list[str] | None, overrides: dict, sweep: dict, setup: ReplaySetup) -> None:
    """Refuse ``--param``/``--sweep`` that would be dropped or mislabelled without a word (ValueError)."""
    if sweep and policies and len(policies) > 1:
        raise ValueError(f"--sweep replays one policy, got --policy {' --policy '.join(policies)}")
    names = (policies or (["break_even"] if sweep else list(DEFAULT_POLICIES)))[: 1 if sweep else None]
    for flag, keys in (("--param", overrides), ("--sweep", sweep)):
        for key in keys:
            if not any(_accepts(n, key) for n in names):
                takes = "; ".join(f"{n} takes {', '.join(policy_parameters(n)) or 'none'}" for n in names)
                raise ValueError(f"{flag} {key}: no policy replayed takes it ({takes})")
    for key, values in sweep.items():
        if not values:
            raise ValueError(f"--sweep {key}: expected one or more values, comma-separated")
    lo, hi = setup.endpoint.instance_bounds
    for n in (v for v in [overrides.get("instances"), *sweep.get("instances", [])] if v is not None):
        # a count past the bounds ran the bound's count under the asked count's label (fixed_10 ran 4)
        if not (is_finite_number(n) and lo <= n <= hi):
            raise ValueError(f"instances: expected a count within the endpoint's bounds {lo}-{hi}, got {n!r}")


def parse_api_prices(text: str) -> TokenPrices:
    """``--api-prices INPUT,OUTPUT[,CACHED_INPUT]`` in USD per 1M tokens → TokenPrices (USD per token).

    Read as Decimal and converted as the config's prices are (``routing.inputs.token_prices``),
    so ``--api-prices 0.15,0.60`` replays exactly like gpt-4o-mini's configured prices.
    """
    try:
        values = [Decimal(p.strip()) for p in text.split(",")]
    except InvalidOperation:
        values = []
    # the config's bound (1e400 is a finite Decimal and an infinite float: spends of inf and NaN)
    if len(values) not in (2, 3) or not all(v.is_finite() and 0 <= v <= MAX_USD for v in values):
        raise ValueError(f"--api-prices: expected INPUT,OUTPUT[,CACHED_INPUT] in USD per 1M tokens, "
                         f"each a number from 0 to {MAX_USD:,} (e.g. 2.50,10.00), got {text!r}")
    return token_prices(PriceSpec(*values, source="--api-prices"))


# the optimum's schedule interval, seconds: at 0 the horizon is undefined; far below a second a 14-day
# trace's schedule no longer fits in memory; beyond an hour the billing horizon outgrows the trace
OPTIMUM_INTERVAL_S = (1.0, 3600.0)


def initial_instances(n: int, setup: ReplaySetup) -> int:
    """``--initial-instances``, checked against the endpoint's bounds."""
    spec = setup.endpoint
    lo, hi = spec.instance_bounds
    if not lo <= n <= hi:
        raise ValueError(f"--initial-instances: expected a count within the endpoint's bounds {lo}-{hi}, got {n}")
    return n


def add_replay_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--trace", default=bundled.DEFAULT_TRACE, metavar="FILE|NAME",
                        help="CSV (or .csv.gz) with arrival_s,prompt_tokens,completion_tokens, or the name of a "
                             f"trace shipped with the package ({bundled.trace_names_help()}; licence and "
                             f"source in gateway/replay/data/README.md). Default: {bundled.DEFAULT_TRACE}")
    parser.add_argument("--config", default=None,
                        help="gateway config (prices, endpoint capacity). Default: $GATEWAY_CONFIG, else "
                             "./config.yaml, else the copy of the repository's config.yaml shipped with the package")
    parser.add_argument("--api-prices", metavar="IN,OUT[,CACHED]",
                        help="compare against the API at these prices instead of the config's, in USD per 1M "
                             "input,output[,cached input] tokens; e.g. 2.50,10.00 (gpt-4o's list prices: the "
                             "endpoint pays off on azure-conv, which it never does at the default config's "
                             "gpt-4o-mini prices)")
    parser.add_argument("--model", help="model to replay as (default: first chat model with openai+sagemaker routes)")
    parser.add_argument("--policy", action="append", choices=policy_names(),
                        help="policy to replay (repeatable; default: " + ", ".join(DEFAULT_POLICIES) +
                             "; fixed runs every instance count within the bounds)")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="policy parameter, applied to every asked policy that takes it (repeatable)")
    parser.add_argument("--sweep", action="append", metavar="KEY=V1,V2,...",
                        help="try these values of a policy parameter (repeatable: a grid) and name the best")
    parser.add_argument("--optimum-interval", type=float, default=60.0, metavar="SECONDS",
                        help="interval of the hindsight optimum's instance schedule (default 60)")
    parser.add_argument("--initial-instances", type=int, metavar="N",
                        help="endpoint instances in service when the trace starts, for every policy and the "
                             "optimum (default: the endpoint's min_instances). Give what a running service holds "
                             "to replay a window of it without the cold start every replay otherwise begins with")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="worker processes for the simulations of a large trace (default: the CPUs this "
                             "process may use; 1: one after another, with a progress bar per policy)")
    parser.add_argument("--window-traffic", choices=("fitting", "all"), default="fitting",
                        help="capacity windows count requests that fit the endpoint's context (default) or all")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")
    return parser


def add_make_trace_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--hourly", default=bundled.DEFAULT_HOURLY, metavar="FILE|NAME",
                        help="CSV with model,hour,requests, or 'servegen' for ServeGen's 14-day hourly volumes "
                             "shipped with the package (models m-large, m-mid, m-small, deepseek-r1; "
                             "default: servegen)")
    parser.add_argument("--shape-model", help="which model's hourly volume to follow (default: the file's first)")
    names = " or ".join(bundled.TRACES)
    parser.add_argument("--tokens-from", metavar="TRACE",
                        help=f"real per-request trace (a file, or {names}: shipped with the package) to sample "
                             "token pairs from (default: the --arrivals-from trace's own tokens)")
    parser.add_argument("--arrivals-from", metavar="TRACE",
                        help=f"fill each hour with this real one-hour trace's (a file, or {names}) own arrival "
                             "times (its recorded span stretched to the hour, thinned or replicated to the hour's "
                             "count) instead of drawing Poisson arrivals")
    parser.add_argument("--rotate", action="store_true",
                        help="with --arrivals-from: shift each hour's arrival pattern by a random offset")
    parser.add_argument("--start-hour", type=int, default=0, help="first hour of the shape to use (default 0)")
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--days", type=float, help="length in days (default: the whole shape)")
    span.add_argument("--hours", type=int, help="length in hours")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=float, help="multiply the hourly volumes by this")
    size.add_argument("--peak-per-hour", type=float, help="scale so the busiest hour expects this many requests")
    size.add_argument("--mean-per-hour", type=float, help="scale so the hours average this many requests")
    parser.add_argument("--burst-mean", type=float, default=1.0, metavar="N",
                        help="requests per arrival clump, on average (default 1: plain Poisson arrivals)")
    parser.add_argument("--burst-spread", type=float, default=1.0, metavar="SECONDS",
                        help="a clump's requests spread over this many seconds (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same trace)")
    parser.add_argument("--out", required=True, help="output CSV; gzipped when it ends with .gz")
    return parser


def replay_main(argv: list[str]) -> int:
    args = add_replay_arguments(argparse.ArgumentParser(
        prog="gateway replay", description="Replay a request trace through routing policies and compare spend.",
    )).parse_args(argv)
    from gateway.config import ConfigError, load_config

    config, is_bundled = bundled.config_path(args.config)
    if is_bundled:
        print(f"gateway replay: no ./config.yaml here: using the default config shipped with the package "
              f"({config})", file=sys.stderr)
    try:
        cfg = load_config(config)
        setup = setup_from_config(cfg, args.model, window_traffic=args.window_traffic)
        if args.api_prices is not None:
            setup = dataclasses.replace(setup, api_prices=parse_api_prices(args.api_prices),
                                        api_prices_from="--api-prices")
        if not OPTIMUM_INTERVAL_S[0] <= args.optimum_interval <= OPTIMUM_INTERVAL_S[1]:  # also NaN
            raise ValueError(f"--optimum-interval: expected {OPTIMUM_INTERVAL_S[0]:g} to {OPTIMUM_INTERVAL_S[1]:g} "
                             f"seconds, got {args.optimum_interval:g}")
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs: expected 1 or more worker processes, got {args.jobs}")
        if args.initial_instances is not None:
            setup = dataclasses.replace(setup, initial_instances=initial_instances(args.initial_instances, setup))
        overrides = {k: _value(v) for k, v in _key_values(args.param, "--param").items()}
        sweep = {k: [_value(x) for x in v.split(",") if x.strip()]
                 for k, v in _key_values(args.sweep, "--sweep").items()}
        _check_overrides(args.policy, overrides, sweep, setup)
        trace = read_trace(bundled.trace_path(args.trace))
    except (ConfigError, TraceError, ValueError) as e:
        print(f"gateway replay: {e}", file=sys.stderr)
        return 2
    if len(trace) == 0:
        print(f"gateway replay: {args.trace}: no requests", file=sys.stderr)
        return 2
    show = args.progress if args.progress is not None else sys.stderr.isatty()

    runs: list[tuple[str, dict]] = []
    if sweep:
        name = args.policy[0] if args.policy and len(args.policy) == 1 else "break_even"
        base = _params_for(name, cfg, overrides)
        for combo in itertools.product(*sweep.values()):
            runs.append((name, {**base, **dict(zip(sweep, combo))}))
    else:
        for name in args.policy or DEFAULT_POLICIES:
            if name == "fixed" and "instances" not in overrides:
                # every count an operator could pin: fixed_1 ... fixed_<max_instances>
                spec = setup.endpoint
                for k in range(max(1, spec.min_instances), spec.instance_bounds[1] + 1):
                    runs.append((name, {**_params_for(name, cfg, overrides), "instances": k}))
                continue
            runs.append((name, _params_for(name, cfg, overrides)))

    horizon = default_horizon(trace, args.optimum_interval)
    for name, params in runs:
        try:
            build_policy(name, params)
        except (TypeError, ValueError) as e:
            print(f"gateway replay: policy {name} with {params}: {e}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    bar = (lambda name: TextProgress(f"{name:>17}", sys.stderr)) if show else None
    results, dp = run_all(trace, setup, runs, horizon_s=horizon, optimum_interval_s=args.optimum_interval,
                          jobs=args.jobs, bar=bar)
    optimum = floor_with(dp, results)
    summary = summarize(trace, setup, results, optimum, sweep=bool(sweep),
                        elapsed_s=time.perf_counter() - started, config=config)
    print(render_json(summary) if args.json else render_text(summary))
    return 0


# a replay holds ~370 bytes a request (the 1M-request replay's parent: 372 MB): 50M is ~18 GB, what a
# 24-GiB machine can still take
MAX_TRACE_REQUESTS = 50_000_000


def _size_problem(args, shape: list[float]) -> str | None:
    """Why the asked size cannot be built (None if it can): NaN built an empty trace, inf never ended."""
    flag, value = next((f, v) for f, v in (("--scale", args.scale), ("--peak-per-hour", args.peak_per_hour),
                                           ("--mean-per-hour", args.mean_per_hour)) if v is not None)
    if not (math.isfinite(value) and value > 0):
        return f"{flag}: expected a positive number, got {value:g}"
    if flag == "--scale":
        total = value * sum(shape)
    elif flag == "--peak-per-hour":
        total = value / max(shape) * sum(shape) if max(shape) > 0 else 0.0
    else:
        total = value * len(shape)
    if total > MAX_TRACE_REQUESTS:
        return f"{flag} {value:g}: about {total:,.0f} requests, more than the {MAX_TRACE_REQUESTS:,} a trace may hold"
    return None


def make_trace_main(argv: list[str]) -> int:
    args = add_make_trace_arguments(argparse.ArgumentParser(
        prog="gateway make-trace",
        description="Build a multi-day per-request trace: an hourly volume shape, scaled, with token "
                    "pairs sampled from a real trace. Deterministic for a given --seed.",
    )).parse_args(argv)
    if args.tokens_from is None and args.arrivals_from is None:
        print("gateway make-trace: give --tokens-from, --arrivals-from or both", file=sys.stderr)
        return 2
    try:
        hourly = read_hourly(bundled.hourly_path(args.hourly), args.shape_model)
        pairs = read_trace(bundled.trace_path(args.tokens_from)).pairs() if args.tokens_from else None
        arrivals = read_trace(bundled.trace_path(args.arrivals_from)) if args.arrivals_from else None
    except TraceError as e:
        print(f"gateway make-trace: {e}", file=sys.stderr)
        return 2
    for flag, value in (("--burst-mean", args.burst_mean), ("--burst-spread", args.burst_spread)):
        if not (math.isfinite(value) and 0 < value <= 1e6):  # NaN read as 1, infinity built no requests
            print(f"gateway make-trace: {flag}: expected a number above 0 and at most 1e6, got {value:g}",
                  file=sys.stderr)
            return 2
    if args.days is not None and not (math.isfinite(args.days) and args.days * 24 <= MAX_SHAPE_HOURS):
        # (1e308 days raised OverflowError)
        print(f"gateway make-trace: --days: expected at most {MAX_SHAPE_HOURS // 24} days, got {args.days:g}",
              file=sys.stderr)
        return 2
    hours = args.hours if args.hours is not None else (
        round(args.days * 24) if args.days is not None else len(hourly) - args.start_hour)
    # a negative start or length sliced the shape from its end (--days -1 built 312 hours)
    shape = hourly[args.start_hour:args.start_hour + hours] if args.start_hour >= 0 and hours > 0 else []
    if not shape or (pairs is not None and not pairs) or (arrivals is not None and not len(arrivals)):
        print("gateway make-trace: nothing to build (empty hour range or trace)", file=sys.stderr)
        return 2
    if len(shape) * 3600.0 > MAX_ARRIVAL_S:  # a trace the replay would refuse
        print(f"gateway make-trace: {len(shape)} hours: a replay takes at most {MAX_ARRIVAL_S / 3600:.0f} "
              f"({MAX_ARRIVAL_S / 86400:.0f} days); give --days or --hours", file=sys.stderr)
        return 2
    problem = _size_problem(args, shape)
    if problem:
        print(f"gateway make-trace: {problem}", file=sys.stderr)
        return 2
    try:
        if arrivals is not None:
            trace = synthesize_from_arrivals(shape, arrivals, pairs, scale=args.scale, peak_per_hour=args.peak_per_hour,
                                             mean_per_hour=args.mean_per_hour, seed=args.seed, rotate=args.rotate,
                                             name=args.out)
        elif args.mean_per_hour is not None:
            trace = synthesize(shape, pairs, scale=args.mean_per_hour * len(shape) / max(sum(shape), 1e-12),
                               seed=args.seed, burst_mean=args.burst_mean, burst_spread_s=args.burst_spread,
                               name=args.out)
        else:
            trace = synthesize(shape, pairs, scale=args.scale, peak_per_hour=args.peak_per_hour, seed=args.seed,
                               burst_mean=args.burst_mean, burst_spread_s=args.burst_spread, name=args.out)
    except ValueError as e:
        print(f"gateway make-trace: {e}", file=sys.stderr)
        return 2
    if not len(trace):
        print("gateway make-trace: the trace would hold no requests (the size asked is below one request in "
              "the whole span)", file=sys.stderr)
        return 2
    try:
        write_trace(args.out, trace)
    except OSError as e:  # a directory, a missing folder, a full disk
        print(f"gateway make-trace: --out {args.out}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(trace):,} requests over {len(shape)} h "
          f"({len(trace) / len(shape):,.0f} req/h mean), seed {args.seed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"replay": replay_main, "make-trace": make_trace_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m gateway.replay.cli {replay,make-trace} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
