"""``gateway demo``: stand-ins, the gateway, a trace replayed through it, a live view, a summary.

Everything runs in this process on 127.0.0.1: the stand-ins each in a thread with its own
loop, the gateway (uvicorn) in a thread, the driver and the view on the main thread's loop.
All of it is stopped on the way out (end of the demo, Ctrl-C, or an error)::

    summary = run_demo(DemoOptions(minutes=2, speed=60))
    summary["backends"]["openai"]["requests"]
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

import httpx
import uvicorn

from ..access_log import AccessLog
from ..app import create_app
from ..http.protocol import DeadlineHttpToolsProtocol
from ..replay.bundled import DATA_DIR, trace_name, trace_path
from ..replay.trace import read_trace
from ..spend.accounting import API_ONLY
from ..spend.cost import display_usd
from .clock import SpedUpClock
from .config import demo_config
from .control_plane import DemoControlPlane
from .driver import TrafficDriver, schedule
from .upstreams import DemoOpenAI, DemoSageMaker
from .view import Frame, make_console, plain_line, render

DEMO_PORT = 8080  # the URL the README shows; any free port when it is taken and none was asked for
_AWS = {"AWS_ACCESS_KEY_ID": "demo-access-key", "AWS_SECRET_ACCESS_KEY": "demo-secret-key"}


@dataclass(frozen=True)
class DemoOptions:
    minutes: float = 3.0  # real minutes the demo runs
    speed: float = 60.0  # simulated seconds per real second
    trace: str = "azure-conv"  # a bundled trace name or a path
    api_model: str = "gpt-4o"
    rate_per_hour: float = 1200.0  # simulated requests an hour at full volume
    port: int | None = None  # None: DEMO_PORT, or a free one if it is taken
    plain: bool | None = None  # None: a live view on a terminal, plain lines elsewhere
    plain_every_s: float = 5.0  # real seconds between two plain lines


class DemoError(RuntimeError):
    """Why the demo cannot start, in one line."""


@contextmanager
def _demo_aws_environment(control_url: str, region: str):
    """AWS settings of this process pointed at the stand-ins only; the user's come back after.

    The gateway's real botocore poller and actuator and its SigV4 signer read the standard
    chain: fixed demo credentials, the control plane URL, and no shared files or instance
    metadata, so that nothing the demo does can reach AWS or use the user's credentials.
    """
    wanted = {**_AWS, "AWS_ENDPOINT_URL_SAGEMAKER": control_url, "AWS_REGION": region,
              "AWS_DEFAULT_REGION": region, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
              "AWS_EC2_METADATA_DISABLED": "true"}
    dropped = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
               "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")
    saved = {k: os.environ.get(k) for k in (*wanted, *dropped)}
    os.environ.update(wanted)
    for k in dropped:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Notes(logging.Handler):
    """The gateway's operational lines, kept for the view instead of scribbling over it."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=200)

    def emit(self, record):
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


class _Gateway:
    """The real gateway app under uvicorn in a thread (as the tests run it), on 127.0.0.1."""

    def __init__(self, app, port: int):
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=port, loop="asyncio", http=DeadlineHttpToolsProtocol, lifespan="on",
            log_level="critical", access_log=False, timeout_graceful_shutdown=5,
            # longer than the client's own idle expiry (httpx: 5 s), so the server never closes a
            # connection the driver is about to reuse (uvicorn's default is also 5 s: a reset race)
            timeout_keep_alive=30,
        ))
        self.thread = threading.Thread(target=self.server.run, name="gateway-demo-server", daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive():
                raise DemoError("the gateway did not start (see the lines above)")
            if time.monotonic() > deadline:
                raise DemoError("the gateway did not start within 30 s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def run_demo(opts: DemoOptions, out=None) -> dict:
    """Runs the demo to its end (or Ctrl-C) and returns the summary (also printed to ``out``)."""
    console = make_console(out)
    plain = opts.plain if opts.plain is not None else not console.is_terminal
    path = trace_path(opts.trace)
    trace = read_trace(path)  # TraceError: the caller says why
    port = opts.port
    if port is None:
        port = DEMO_PORT if _port_free(DEMO_PORT) else 0
    elif port and not _port_free(port):
        raise DemoError(f"cannot listen on 127.0.0.1:{port}: the port is in use (choose another with --port, "
                        "or --port 0 for any free one)")
    clock = SpedUpClock(opts.speed)
    api_key = "sk-demo-" + secrets.token_hex(8)
    base = demo_config("http://127.0.0.1:9/v1", api_key, "http://127.0.0.1:9", opts.api_model, opts.speed)
    ep_cfg = next(b for b in base.backends.values() if b.type == "sagemaker")
    notes = _Notes()
    gw_log = logging.getLogger("gateway")
    old_level, old_propagate = gw_log.level, gw_log.propagate
    started: list = []
    control = openai_up = runtime = gateway = None
    try:
        from_zero = ep_cfg.startup_from_zero_s
        control = DemoControlPlane(ep_cfg.endpoint_name, ep_cfg.variant_name, ep_cfg.region, _AWS["AWS_ACCESS_KEY_ID"],
                                   _AWS["AWS_SECRET_ACCESS_KEY"], startup_real_s=clock.real_s(ep_cfg.startup_s),
                                   clock=clock, component=ep_cfg.inference_component_name,
                                   from_zero_real_s=None if from_zero is None else clock.real_s(from_zero),
                                   copies_per_instance=ep_cfg.copies_per_instance,
                                   max_instances=ep_cfg.max_instances).start()
        started.append(control)
        openai_up = DemoOpenAI(opts.speed, api_key, [opts.api_model]).start()
        started.append(openai_up)
        runtime = DemoSageMaker(opts.speed, control, ep_cfg.endpoint_name, ep_cfg.max_tokens_per_second,
                                ep_cfg.prompt_token_weight, clock).start()
        started.append(runtime)
        cfg = demo_config(openai_up.base_url, api_key, runtime.base_url, opts.api_model, opts.speed, port)
        gw_log.addHandler(notes)
        gw_log.setLevel(logging.INFO)
        gw_log.propagate = False  # the view shows them; stderr would scribble over it
        with _demo_aws_environment(control.url, ep_cfg.region):
            app = create_app(cfg, clock=clock, access_log=AccessLog(enabled=False))
            gateway = _Gateway(app, port)
            url = gateway.start()
            console.print(f"gateway demo: status page {url}/  ·  OpenAI-compatible API {url}/v1  ·  "
                          f"Ctrl-C to stop", highlight=False)
            total_sim_s = opts.minutes * 60 * opts.speed
            driver = TrafficDriver(f"{url}/v1", "demo", opts.api_model, opts.speed,
                                   schedule(trace, opts.rate_per_hour, total_sim_s))
            header = (f"gateway demo · {trace_name(path) or path} × {opts.speed:g} · API priced as {opts.api_model} · "
                      f"{url}/")
            interrupted = False
            try:
                asyncio.run(_drive(driver, url, clock, total_sim_s, control, console, plain, opts, header))
            except KeyboardInterrupt:
                interrupted = True
            final = _fetch_status(url)
            gateway.stop()
            gateway = None
        summary = _summary(app, driver, control, clock, final, opts, path, interrupted)
        _print_summary(console, summary, notes)
        return summary
    finally:
        if gateway is not None:
            gateway.stop()
        for server in reversed(started):
            server.stop()
        gw_log.removeHandler(notes)
        gw_log.setLevel(old_level)
        gw_log.propagate = old_propagate


def _fetch_status(url: str) -> dict | None:
    try:
        return httpx.get(f"{url}/status.json", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None


def _changes(control, clock) -> list[dict]:
    return [{"at_s": c["at"] - clock.start_epoch, "from": c["from"], "to": c["to"]} for c in control.changes]


async def _drive(driver, url, clock, total_sim_s, control, console, plain, opts, header) -> None:
    stop = asyncio.Event()
    run = asyncio.ensure_future(driver.run(stop))
    deadline = time.monotonic() + opts.minutes * 60

    async with httpx.AsyncClient(timeout=5) as http:
        async def frame() -> Frame:
            try:
                doc = (await http.get(f"{url}/status.json")).json()
            except (httpx.HTTPError, ValueError):
                doc = None
            notes = [f"the driver runs {driver.behind_s:.1f} s behind the trace: this machine is busy"] \
                if driver.behind_s > 2 else []
            return Frame(doc, min(clock.elapsed_s(), total_sim_s), total_sim_s, driver.by_backend(),
                         list(driver.recent), _changes(control, clock), driver.behind_s, notes)

        try:
            if plain:
                next_line = 0.0
                while not run.done() and time.monotonic() < deadline:
                    if time.monotonic() >= next_line:
                        console.print(plain_line(await frame()), highlight=False, soft_wrap=True)
                        next_line = time.monotonic() + opts.plain_every_s
                    await asyncio.sleep(0.25)
            else:
                from rich.live import Live

                with Live(render(await frame(), header), console=console, refresh_per_second=4,
                          transient=False) as live:
                    while not run.done() and time.monotonic() < deadline:
                        await asyncio.sleep(0.25)
                        live.update(render(await frame(), header))
        finally:
            stop.set()
            await asyncio.shield(run) if not run.done() else None


def _summary(app, driver, control, clock, final, opts, path, interrupted) -> dict:
    totals = asyncio.run(app.store.spend_totals())  # the server has stopped: nothing else touches the store
    ledger: dict[str, Decimal] = {}
    for (backend, _model), usd in totals.items():
        ledger[backend] = ledger.get(backend, Decimal(0)) + usd
    api_only = ledger.pop(API_ONLY, Decimal(0))
    actual = sum(ledger.values(), Decimal(0))
    by_backend = driver.by_backend()
    backends = {}
    for name, cfg in app.config.backends.items():
        d = by_backend.get(name, {"requests": 0, "ok": 0, "cost_usd": Decimal(0), "reasons": {}})
        backends[name] = {"type": cfg.type, "requests": d["requests"], "ok": d["ok"],
                          "spend_usd": display_usd(ledger.get(name, Decimal(0))),
                          "sum_of_request_costs_usd": display_usd(d["cost_usd"]),
                          "reasons": dict(d["reasons"])}
    failures = Counter(f"HTTP {o.status or 'none'} from {o.backend or 'no backend'} ({o.reason})"
                       for o in driver.outcomes if not 200 <= o.status < 300)
    return {
        "trace": trace_name(path) or path,
        "trace_licence": "CC-BY-4.0, Azure Public Dataset (see "
                         f"{os.path.join(DATA_DIR, 'README.md')})" if trace_name(path) else None,
        "speed": opts.speed, "api_model": opts.api_model, "interrupted": interrupted,
        "simulated_s": round(clock.elapsed_s(), 1),
        "requests": len(driver.outcomes), "failed": sum(failures.values()), "failures": dict(failures),
        "backends": backends,
        "spend_usd": display_usd(actual), "api_only_usd": display_usd(api_only),
        "saved_usd": display_usd(api_only - actual),
        "capacity_changes": _changes(control, clock),
        "final_status": final,
    }


def _print_summary(console, s: dict, notes: _Notes) -> None:
    console.print()
    console.print(f"[bold]gateway demo: summary[/bold] ({'stopped by Ctrl-C' if s['interrupted'] else 'done'}; "
                  f"{s['simulated_s'] / 3600:.2f} simulated hours of {s['trace']} at ×{s['speed']:g})")
    for name, b in s["backends"].items():
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(b["reasons"].items(), key=lambda kv: -kv[1]))
        what = "tokens as billed" if b["type"] == "openai" else "instance time"
        console.print(f"  {name:<10} {b['requests']:>6} requests  spend ${float(b['spend_usd']):,.4f} ({what}; "
                      f"Σ x-gateway-cost-usd ${float(b['sum_of_request_costs_usd']):,.4f})  {reasons}")
    console.print(f"  total spend ${float(s['spend_usd']):,.4f}; the API alone ${float(s['api_only_usd']):,.4f}; "
                  f"saved ${float(s['saved_usd']):,.4f}")
    changes = ", ".join(f"{c['from']}→{c['to']} at {c['at_s'] / 60:.0f} min" for c in s["capacity_changes"]) or "none"
    console.print(f"  capacity changes applied: {changes}")
    if s["failed"]:
        console.print(f"  [yellow]{s['failed']} request(s) did not get a 2xx: "
                      f"{', '.join(f'{k}: {n}' for k, n in s['failures'].items())}[/yellow]")
    for line in [n for n in notes.lines if n.startswith(("warning", "error")) and "shutdown" not in n][-5:]:
        console.print(f"  gateway {line}", highlight=False)
    if s["trace_licence"]:
        console.print(f"  trace: {s['trace_licence']}", highlight=False)
