"""``gateway`` console script: demo, serve, replay, make-trace, check-config."""
from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import sys
import tempfile

from .config import ConfigError, load_config


def _load_or_report(path: str):
    """The config, or None after saying on stderr why it cannot be used (key and reason)."""
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"gateway: invalid config: {e}", file=sys.stderr)
        return None


def _serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gateway serve", description="Run the OpenAI-compatible gateway.")
    ap.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG", "config.yaml"))
    ap.add_argument("--host")
    ap.add_argument("--port", type=int)
    ap.add_argument("--workers", type=int)
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    cfg = _load_or_report(args.config)
    if cfg is None:
        return 2
    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    refusal = keyless_refusal(cfg, host, args.config)
    if refusal:
        print(f"gateway: {refusal}", file=sys.stderr)
        return 2
    workers = args.workers or cfg.server.workers
    os.environ["GATEWAY_CONFIG"] = os.path.abspath(args.config)
    # The *_created series double what Prometheus stores and nothing here reads them.
    os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
    if workers > 1:
        if not cfg.state.redis_url:
            # In-process state is per process: each worker would see a fraction of the volume
            # (wrong capacity decisions) and charge the endpoint's time again (wrong spend).
            print(f"gateway: {args.config}: state.redis_url: required with --workers {workers}: workers "
                  "share live volume, the ledger and endpoint time through Redis (set REDIS_URL)", file=sys.stderr)
            return 2
        # Every worker writes its samples here and /metrics merges them.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="gateway-metrics-"))
    sock = _listen(host, port)
    if isinstance(sock, str):
        print(f"gateway: {sock}", file=sys.stderr)
        return 2
    import uvicorn

    from .http.protocol import DeadlineHttpToolsProtocol

    config = uvicorn.Config(
        "gateway.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        loop="uvloop", http=DeadlineHttpToolsProtocol, lifespan="on", access_log=False, log_level=args.log_level,
        timeout_graceful_shutdown=cfg.server.shutdown_grace_s, limit_concurrency=cfg.server.max_connections,
    )
    # The socket is bound and listening before any worker starts its app, so the app's
    # "gateway ready" line is true when it is logged (uvicorn alone binds after start-up).
    try:
        if workers > 1:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(config, sockets=[sock]).run()
        else:
            server = uvicorn.Server(config)
            server.run(sockets=[sock])
            if not server.started:
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _listen(host: str, port: int):
    """A socket bound to ``host:port`` and listening, or the one line that says why not."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = "the port is in use by another process" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        return (f"cannot listen on {host}:{port}: {why}; stop that process, or choose another port "
                "(--port, or server.port in the config)")
    sock.set_inheritable(True)
    return sock


def keyless_refusal(cfg, host: str, path: str) -> str | None:
    """Why the gateway will not serve on ``host`` with this config, or None (secure by default)."""
    if cfg.auth.keys or cfg.auth.allow_keyless_network or _is_loopback(host):
        return None
    return (f"refusing to serve on {host} with no gateway keys: anyone who can reach it could spend on your "
            f"upstreams and reload its config. Set {cfg.auth.keys_env} (comma-separated keys) and "
            f"{cfg.auth.admin_keys_env}, or serve on 127.0.0.1, or set auth.allow_keyless_network: true in "
            f"{path} if the network in front of it already authenticates")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _check_config(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="gateway check-config")
    ap.add_argument("--config", default="config.yaml")
    args = ap.parse_args(argv)
    cfg = _load_or_report(args.config)
    if cfg is None:
        return 2
    print(f"ok: {len(cfg.backends)} backends, {len(cfg.models)} models, policy {cfg.routing.policy}")
    return 0


def _replay(argv: list[str]) -> int:
    from .replay.cli import replay_main

    try:
        return replay_main(argv)
    except BrokenPipeError:
        # the reader left (``gateway replay | head``): not an error; keep Python's exit flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _make_trace(argv: list[str]) -> int:
    from .replay.cli import make_trace_main

    return make_trace_main(argv)


def _demo(argv: list[str]) -> int:
    from .replay.bundled import trace_names_help

    ap = argparse.ArgumentParser(
        prog="gateway demo",
        description="Run the gateway on 127.0.0.1 against local stand-ins for the OpenAI API and a SageMaker "
                    "endpoint (no account, no key, nothing leaves this machine), replay a real trace through it "
                    "sped up, and watch routing, capacity decisions and spend live, in the terminal and on the "
                    "status page. Ends after --minutes or on Ctrl-C with a summary; leaves nothing running.")
    ap.add_argument("--minutes", type=float, default=3.0, help="real minutes to run (default 3)")
    ap.add_argument("--speed", type=float, default=60.0,
                    help="simulated seconds per real second: traffic, billing and start-up (default 60)")
    ap.add_argument("--trace", default="azure-conv", help=f"a trace file or a bundled name: {trace_names_help()}")
    ap.add_argument("--api-model", default="gpt-4o",
                    help="the API model the traffic is priced as (litellm's prices; default gpt-4o, where the "
                         "endpoint pays off; gpt-4o-mini: it never does)")
    ap.add_argument("--rate", type=float, default=1200.0,
                    help="simulated requests per hour at full volume (the trace thinned to it; default 1200)")
    ap.add_argument("--port", type=int, help="gateway port (default 8080, or any free one if it is taken)")
    ap.add_argument("--plain", action="store_true", help="plain periodic lines instead of the live view")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.speed <= 0 or args.rate <= 0:
        print("gateway demo: --minutes, --speed and --rate must be > 0", file=sys.stderr)
        return 2
    from .demo import DemoError, DemoOptions, run_demo
    from .replay.trace import TraceError

    opts = DemoOptions(minutes=args.minutes, speed=args.speed, trace=args.trace, api_model=args.api_model,
                       rate_per_hour=args.rate, port=args.port, plain=True if args.plain else None)
    try:
        summary = run_demo(opts)
    except (DemoError, TraceError, ConfigError) as e:
        print(f"gateway demo: {e}", file=sys.stderr)
        return 2
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, default=str)
    return 0


COMMANDS = {"demo": _demo, "serve": _serve, "replay": _replay, "make-trace": _make_trace,
            "check-config": _check_config}
SUMMARIES = {
    "demo": "see it work in a minute: local stand-ins, a real trace sped up, live view and status page",
    "serve": "run the OpenAI-compatible gateway (config.yaml; status page at GET /)",
    "replay": "replay a trace through the routing policies on a simulated clock; compare with static and optimal",
    "make-trace": "build a multi-day trace from an hourly volume shape and a real trace's tokens or arrivals",
    "check-config": "validate a config file and say what it defines",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gateway <command> [options]   (gateway <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {SUMMARIES[name]}" for name in COMMANDS]
    lines += ["", "Start with: gateway demo"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        if argv:
            print(f"gateway: unknown command {argv[0]!r}", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
